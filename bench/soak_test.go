package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/wsdproject/wsd/internal/wsdproc"
)

// startWsd runs the wsd binary on free loopback ports with args,
// returning its WebSocket and admin addresses and its process; it is
// killed (by its PID) when the test ends.
func startWsd(t *testing.T, args ...string) (ws, admin string, pid int) {
	t.Helper()
	p := wsdproc.Start(t, args...)
	return p.WS, p.Admin, p.PID()
}

// TestSoakRun runs a short soak end to end against a real wsd process (the
// binary, with the flags the soak needs): 50 clients on 5 channels for 4 s
// with 10% of them churned a second, echoes, client publishes and API
// publications. It checks that the summary is produced, that the traffic
// all happened and arrived, and that the verdict passes: the server's
// connections, goroutines and fds back to their baseline (memory by RSS
// here: the settle is too short to wait for the server's next GC).
func TestSoakRun(t *testing.T) {
	ws, admin, pid := startWsd(t, "--api-key", "k", "--allow-client-publish")
	var lines bytes.Buffer
	began := time.Now()
	r, err := RunSoak(context.Background(), SoakOptions{
		URL: "ws://" + ws + "/ws", Admin: "http://" + admin, APIKey: "k",
		N: 50, Channels: 5, Churn: 0.1, Vanish: 0.5, MsgRate: 50, PublishShare: 0.5, BroadcastRate: 20, Size: 100,
		Duration: 4 * time.Second, Interval: time.Second, Drain: 2 * time.Second, Settle: 3 * time.Second, Timeout: time.Minute,
		Concurrency: 8, Source: net.ParseIP("127.0.0.2"), ServerPID: pid,
		GoroutineTolerance: 5, FDTolerance: 5, RSSTolerance: 32 << 20, RSSGrowthShare: 0.1, HeapTolerance: 8 << 20, HeapPerConn: 1024,
		Out: &lines,
	})
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(began)
	var summary bytes.Buffer
	r.Print(&summary)
	t.Logf("\n%s%s", lines.String(), summary.String())
	if took > 30*time.Second {
		t.Errorf("the run took %v", took)
	}
	if !r.Verdict.Pass || !strings.Contains(summary.String(), "verdict           PASS") {
		t.Fatalf("verdict %+v", r.Verdict)
	}
	if r.StoppedBy != "duration" || r.Settled == "" || r.Final.Phase != "final" {
		t.Errorf("stopped by %q, settled %q, final phase %q", r.StoppedBy, r.Settled, r.Final.Phase)
	}
	// Churn: about 5 a second for 4 s, each reopened.
	if churned := r.ChurnedClean + r.ChurnedVanished; churned < 10 || r.ChurnedClean == 0 || r.ChurnedVanished == 0 || r.Connects < 50+churned-5 {
		t.Errorf("churned %d clean and %d vanished, %d connects", r.ChurnedClean, r.ChurnedVanished, r.Connects)
	}
	if r.ServerClosed != 0 || r.ConnLost != 0 || r.CloseUnanswered != 0 || r.Errors != 0 {
		t.Errorf("closed by the server %d, lost %d, close unanswered %d, errors %d %v", r.ServerClosed, r.ConnLost, r.CloseUnanswered, r.Errors, r.FirstErrors)
	}
	if r.EchoReplies == 0 || r.PublishAcked == 0 || r.APIPublished < 40 || r.APIDeliveries == 0 || r.ClientDeliveries == 0 {
		t.Errorf("echo replies %d, publish acks %d, API publications %d, deliveries API %d client %d",
			r.EchoReplies, r.PublishAcked, r.APIPublished, r.APIDeliveries, r.ClientDeliveries)
	}
	if r.LostGaps+r.LostAtEnd+r.EchoLost+r.PublishLost+r.Unexpected != 0 {
		t.Errorf("lost %d+%d+%d+%d, unexpected %d", r.LostGaps, r.LostAtEnd, r.EchoLost, r.PublishLost, r.Unexpected)
	}
	if r.Final.Open == nil || *r.Final.Open != 0 || r.End.Open == nil || *r.End.Open == 0 {
		t.Errorf("server connections open at the end of traffic %s, final %s", count(r.End.Open), count(r.Final.Open))
	}
	if r.RSSPeak == nil || r.Baseline.RSS == nil || r.Final.Goroutines == nil || r.Final.FDs == nil || r.BaselineHeap == nil {
		t.Errorf("missing figures: rss peak %v baseline %v, goroutines %v, fds %v, heap %v", r.RSSPeak, r.Baseline.RSS, r.Final.Goroutines, r.Final.FDs, r.BaselineHeap)
	}
	phases := map[string]int{}
	for _, s := range r.Samples {
		phases[s.Phase]++
	}
	if phases["baseline"] != 1 || phases["run"] < 3 || phases["end"] != 1 || phases["final"] != 1 {
		t.Errorf("samples by phase %v", phases)
	}
	// A line per sample, after a header.
	if n := strings.Count(lines.String(), "\n"); n != len(r.Samples)+1 {
		t.Errorf("%d lines for %d samples", n, len(r.Samples))
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back SoakResult
	if err := json.Unmarshal(b, &back); err != nil || len(back.Samples) != len(r.Samples) || !back.Verdict.Pass {
		t.Errorf("JSON round trip: %v, %d samples", err, len(back.Samples))
	}
}

// TestSoakForbidden: without --allow-client-publish the run stops before
// opening its clients, and says which flag (or -publish-share 0) it needs;
// a wrong API key likewise.
func TestSoakForbidden(t *testing.T) {
	ws, admin, pid := startWsd(t, "--api-key", "k")
	o := SoakOptions{
		URL: "ws://" + ws + "/ws", Admin: "http://" + admin, APIKey: "k",
		N: 10, Channels: 2, MsgRate: 10, PublishShare: 0.5, BroadcastRate: 1, Size: 100,
		Duration: time.Minute, Interval: time.Second, Settle: time.Second, Timeout: 20 * time.Second,
		Concurrency: 4, Source: net.ParseIP("127.0.0.2"), ServerPID: pid, Out: io.Discard,
	}
	_, err := RunSoak(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "--allow-client-publish") || !strings.Contains(err.Error(), "-publish-share 0") {
		t.Fatalf("RunSoak: %v; want FORBIDDEN with hints", err)
	}
	o.APIKey = "wrong"
	if _, err := RunSoak(context.Background(), o); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("RunSoak with a wrong key: %v; want 401", err)
	}
}

func TestSoakOptions(t *testing.T) {
	base := SoakOptions{URL: "ws://127.0.0.1:1/ws", Admin: "http://127.0.0.1:2", N: 1, Channels: 1, Size: 100,
		Duration: time.Second, Interval: time.Second, Concurrency: 1, Source: net.ParseIP("127.0.0.2"), ServerPID: -1}
	for name, change := range map[string]func(*SoakOptions){
		"remote url":    func(o *SoakOptions) { o.URL = "ws://10.0.0.1:8080/ws" },
		"remote admin":  func(o *SoakOptions) { o.Admin = "http://192.168.1.1:9090" },
		"remote source": func(o *SoakOptions) { o.Source = net.ParseIP("10.0.0.2") },
		"no key":        func(o *SoakOptions) { o.BroadcastRate = 1 },
		"bad prefix":    func(o *SoakOptions) { o.ChannelPrefix = "$soak-" },
		"empty segment": func(o *SoakOptions) { o.ChannelPrefix = "soak::" },
		"too many":      func(o *SoakOptions) { o.N = 1 << 30 },
		"churn over 1":  func(o *SoakOptions) { o.Churn = 2 },
		"load test":     func(o *SoakOptions) { o.MsgRate = 1e6 },
		"small size":    func(o *SoakOptions) { o.Size = 10 },
		"no duration":   func(o *SoakOptions) { o.Duration = 0 },
	} {
		o := base
		change(&o)
		if _, err := RunSoak(context.Background(), o); err == nil {
			t.Errorf("%s: no error", name)
		} else if strings.Contains(err.Error(), "connection refused") || strings.Contains(err.Error(), "scrape") {
			t.Errorf("%s: got as far as the server: %v", name, err)
		}
	}
	for in, want := range map[string]float64{"1%/s": 0.01, "1%": 0.01, "0.01": 0.01, "0.5/s": 0.5, "0": 0, " 2.5%/s ": 0.025} {
		if got, err := ParseChurn(in); err != nil || got != want {
			t.Errorf("ParseChurn(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1%", "150%", "2"} {
		if _, err := ParseChurn(in); err == nil {
			t.Errorf("ParseChurn(%q): no error", in)
		}
	}
	for name, want := range map[string]bool{"soak-0": true, "a:b.c/d-1": true, "$x": false, "#x": false, "a b": false, ":a": false, "a:": false, "": false} {
		if got := validSoakChannel(name); got != want {
			t.Errorf("validSoakChannel(%q) = %v", name, got)
		}
	}
}
