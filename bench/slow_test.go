package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/wsdproject/wsd/hub"
	"github.com/wsdproject/wsd/internal/stack"
)

// slowServer starts an in-process wsd endpoint (engine, memory broker,
// hub, JSON protocol on /ws) with policy, and an admin server for its
// metrics.
func slowServer(t *testing.T, policy hub.Policy) (ws, admin string) {
	st := stack.Start(t, stack.Options{Policy: policy})
	a := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st.Srv.WriteMetrics(w)
		metrics.WritePrometheus(w, true)
	}))
	t.Cleanup(a.Close)
	return "ws://" + st.Addr + "/ws", a.URL
}

// TestSlowRun runs a small slow-consumer measurement end to end against an
// in-process server with the JSON protocol on /ws that lets clients
// publish: 50 subscribers that never read, 3 fast readers, 200
// publications of 16 KiB. It checks the result's shape and that the fast
// readers got every publication; it asserts nothing about memory or
// timing beyond the run's own bound.
func TestSlowRun(t *testing.T) {
	url, admin := slowServer(t, hub.Policy{ClientPublish: true})

	const timeout = 90 * time.Second
	var progress bytes.Buffer
	began := time.Now()
	r, err := RunSlow(context.Background(), SlowOptions{
		URL: url, Admin: admin,
		N: 50, Readers: 3, Size: 16 << 10, Rate: 0, Window: 16, Count: 200,
		Duration: 60 * time.Second, Interval: 100 * time.Millisecond, Timeout: timeout,
		Source: net.ParseIP("127.0.0.2"), Concurrency: 8, Progress: &progress,
	})
	if err != nil {
		t.Fatal(err)
	}
	var table bytes.Buffer
	r.Print(&table)
	t.Logf("\n%s%s", progress.String(), table.String())
	if took := time.Since(began); took > timeout+10*time.Second {
		t.Fatalf("the run took %v; its bound is %v", took, timeout)
	}
	if r.NonReaders != 50 || r.NonReadersFailed != 0 || r.Readers != 3 {
		t.Fatalf("opened %d non-readers (%d failed) and %d readers", r.NonReaders, r.NonReadersFailed, r.Readers)
	}
	if r.Sent != 200 || r.StoppedBy != "count" {
		t.Fatalf("sent %d broadcasts, stopped by %q; want 200, by count", r.Sent, r.StoppedBy)
	}
	if r.Acked != 200 || r.Refused != 0 || r.Channel != SlowChannel {
		t.Fatalf("%d publications acknowledged, %d refused, on channel %q; want 200, 0, %q", r.Acked, r.Refused, r.Channel, SlowChannel)
	}
	if !r.AllReadersComplete || len(r.ReaderReceived) != 3 || r.BroadcasterReceived != 200 {
		t.Fatalf("fast readers received %v (missing %v, out of order %v, closed %q), broadcaster %d; want all 200",
			r.ReaderReceived, r.ReaderMissing, r.ReaderOutOfOrder, r.ReaderClosed, r.BroadcasterReceived)
	}
	phases := map[string]int{}
	for _, s := range r.Samples {
		phases[s.Phase]++
		if s.Err != "" {
			t.Errorf("sample %s at %.1fs: %s", s.Phase, s.Elapsed, s.Err)
		}
		if s.RSS == nil || s.Open == nil || s.CPUSeconds == nil {
			t.Errorf("sample %s lacks RSS, open connections or CPU: %+v", s.Phase, s)
		}
	}
	for _, p := range []string{"baseline", "start", "end", "drained", "released"} {
		if phases[p] != 1 {
			t.Errorf("%d %q samples; want 1 (phases %v)", phases[p], p, phases)
		}
	}
	if r.RSSStart == nil || r.RSSPeak == nil || r.RSSGrowthMax == nil || r.CPUSeconds == nil {
		t.Errorf("summary lacks RSS or CPU figures: %+v", r)
	}
	if r.Probe.Probed != 50 {
		t.Errorf("probed %d non-readers; want 50", r.Probe.Probed)
	}
	if r.OpenReleased == nil || *r.OpenReleased != 0 {
		t.Errorf("the server has %s connections open after the run closed its own; want 0", count(r.OpenReleased))
	}
	// Metrics the server does not export are absent, not zero: in the
	// table and as null in JSON.
	if (r.DroppedFrames == nil) != strings.Contains(table.String(), "dropped frames (slow consumer) n/a") {
		t.Errorf("dropped frames %s, but the table says:\n%s", count(r.DroppedFrames), table.String())
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if v, ok := back["dropped_frames"]; !ok || (r.DroppedFrames == nil) != (v == nil) {
		t.Errorf("JSON dropped_frames = %v (present %v); the result has %s", v, ok, count(r.DroppedFrames))
	}
	if s, ok := back["samples"].([]any); !ok || len(s) != len(r.Samples) {
		t.Errorf("JSON samples: %T of %d", back["samples"], len(r.Samples))
	}
}

func TestParseMetrics(t *testing.T) {
	m, err := parseMetrics(strings.NewReader(`# HELP x
# TYPE wsd_slow_consumer_total counter
wsd_slow_consumer_total{action="close"} 7
wsd_slow_consumer_total{action="drop"} 0
odd{reason="a b} c"} 3 1700000000
process_resident_memory_bytes 1.5e+07
broken{x="1" 
`))
	if err != nil {
		t.Fatal(err)
	}
	for series, want := range map[string]float64{
		`wsd_slow_consumer_total{action="close"}`: 7,
		`wsd_slow_consumer_total{action="drop"}`:  0,
		`odd{reason="a b} c"}`:                    3,
		"process_resident_memory_bytes":           1.5e7,
	} {
		if v := m.Get(series); v == nil || *v != want {
			t.Errorf("%s = %v; want %v", series, v, want)
		}
	}
	if v := m.Get(`wsd_outbound_buffered_bytes`); v != nil {
		t.Errorf("absent series = %v; want nil", *v)
	}
	if len(m) != 4 {
		t.Errorf("%d series parsed: %v", len(m), m)
	}
}

// TestSlowForbidden: against a server that does not let clients publish,
// the run stops at the broadcaster's first publish, before it opens the
// non-readers, and says which flag is missing.
func TestSlowForbidden(t *testing.T) {
	url, admin := slowServer(t, hub.Policy{})
	began := time.Now()
	_, err := RunSlow(context.Background(), SlowOptions{
		URL: url, Admin: admin, N: 1000, Readers: 3, Size: 100, Window: 16, Count: 10,
		Duration: time.Minute, Interval: time.Second, Timeout: 30 * time.Second,
		Source: net.ParseIP("127.0.0.2"), Concurrency: 8,
	})
	if err == nil || !strings.Contains(err.Error(), "FORBIDDEN") || !strings.Contains(err.Error(), "--allow-client-publish") {
		t.Fatalf("RunSlow: %v; want FORBIDDEN and a hint about --allow-client-publish", err)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Fatalf("the refusal took %v to show", took)
	}
	t.Log(err)
}

func TestPublishMessage(t *testing.T) {
	for _, size := range []int{32, 100, 16 << 10} {
		m, at := publishMessage("a:b", "0123abcd", size)
		putSeq(m, at, 4321)
		var v struct {
			Type    string          `json:"type"`
			Channel string          `json:"channel"`
			ID      string          `json:"id"`
			Data    json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(m, &v); err != nil {
			t.Fatalf("size %d: %v: %s", size, err, m)
		}
		if v.Type != "publish" || v.Channel != "a:b" || v.ID != "p0000004321" || len(v.Data) != size {
			t.Fatalf("size %d: type %q, channel %q, id %q, %d data bytes", size, v.Type, v.Channel, v.ID, len(v.Data))
		}
		if seq, ok := parseSeq(m, []byte(`"0123abcd:`)); !ok || seq != 4321 {
			t.Fatalf("size %d: parsed %d, %v", size, seq, ok)
		}
	}
}

// TestPublishAnswers: the broadcaster counts acks and SERVER_BUSY answers
// to its publishes (ids "p…"), ignores other answers, and fails at any
// other error.
func TestPublishAnswers(t *testing.T) {
	var freed int
	a := &publishAcks{channel: "bench", onRefused: func() { freed++ }, failed: make(chan struct{})}
	for _, m := range []string{
		`{"type":"ack","id":"p0000000000","channel":"bench","offset":1,"epoch":"e"}`,
		`{"type":"ack","id":"sub","channel":"bench","offset":1,"epoch":"e"}`,
		`{"type":"error","id":"p0000000001","code":"SERVER_BUSY","message":"behind"}`,
		`{"type":"message","channel":"bench","offset":2,"epoch":"e","data":{}}`,
		`{"type":"ack","id":"p0000000002","channel":"bench","offset":2,"epoch":"e"}`,
	} {
		a.answer([]byte(m))
	}
	if a.acked.Load() != 2 || a.refused.Load() != 1 || freed != 1 {
		t.Fatalf("acked %d, refused %d, freed %d; want 2, 1, 1", a.acked.Load(), a.refused.Load(), freed)
	}
	select {
	case <-a.failed:
		t.Fatalf("failed: %v", a.failErr)
	default:
	}
	a.answer([]byte(`{"type":"error","id":"p0000000003","code":"FORBIDDEN","message":"no"}`))
	select {
	case <-a.failed:
		if !strings.Contains(a.failErr.Error(), "--allow-client-publish") {
			t.Fatalf("failErr %v", a.failErr)
		}
	default:
		t.Fatal("a FORBIDDEN answer did not fail the broadcaster")
	}
}
