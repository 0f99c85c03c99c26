package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/wsdproject/wsd/engine"
	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/internal/testserver"
	"github.com/wsdproject/wsd/internal/wsdproc"
)

// TestMain lets this test binary serve as its own client processes: the
// coordinator re-executes os.Executable() with "idle-worker".
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "idle-worker" {
		if err := IdleWorkerMain(context.Background(), os.Args[2:], os.Stdout, os.Stdin); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	code := m.Run()
	wsdproc.Cleanup() // the binary startWsd built
	os.Exit(code)
}

// TestIdleRun runs a small idle measurement end to end: two client
// processes from two source addresses, pings answered, figures reported.
func TestIdleRun(t *testing.T) {
	srv := testserver.Start(t, engine.Config{PingInterval: 300 * time.Millisecond}, testserver.Route{Path: "/echo", Handler: engine.Echo{}})
	admin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		srv.WriteMetrics(w)
		metrics.WritePrometheus(w, true)
	}))
	defer admin.Close()

	r, err := RunIdle(context.Background(), IdleOptions{
		URL: "ws://" + srv.Addr().String() + "/echo", Admins: []string{admin.URL},
		N: 300, PerProcess: 150, Source: net.ParseIP("127.0.0.2"), Concurrency: 8, Loops: 1,
		Settle: 300 * time.Millisecond, Hold: 1500 * time.Millisecond, Timeout: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	r.Print(io.Discard)
	if r.Connections != 300 || r.Processes != 2 || r.Failed != 0 || r.Dropped != 0 {
		t.Fatalf("result %+v", r)
	}
	if r.PingsDuringHold < 300 {
		t.Fatalf("%.0f pings during a 1.5 s hold with a 300 ms ping interval", r.PingsDuringHold)
	}
	if r.OpenAtEnd != 300 {
		t.Fatalf("the server had %.0f run connections at the end; the clients' pongs should have kept all 300", r.OpenAtEnd)
	}
	if !r.PingCheck || r.PingsSent != 300 || r.PongsReceived != 300 || r.Verdict() != "" {
		t.Fatalf("final ping check: %d sent, %d answered; verdict %q", r.PingsSent, r.PongsReceived, r.Verdict())
	}
	// A failed probe (NaN) still writes as JSON, as null; a working one
	// as its figure, under the same name.
	for rtt, want := range map[float64]any{math.NaN(): nil, 1.5: 1.5} {
		c := *r
		c.ProbeRTTEndMillisec = rtt
		c.Samples = append([]IdleSample{{ProbeRTTMillis: math.NaN()}}, c.Samples...)
		b, err := json.Marshal(&c)
		if err != nil {
			t.Fatalf("JSON of a result with probe RTT %v: %v", rtt, err)
		}
		var back map[string]any
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if got := back["ProbeRTTEndMillisec"]; got != want {
			t.Fatalf("probe RTT %v: %v in JSON, want %v", rtt, got, want)
		}
	}
	if r.HeapForcedGC {
		t.Fatal("this server serves no /debug/pprof, yet the run says it forced a GC")
	}
	if len(r.Samples) == 0 || math.IsNaN(r.ProbeRTTEndMillisec) {
		t.Fatalf("%d samples, probe RTT %v (%s)", len(r.Samples), r.ProbeRTTEndMillisec, r.ProbeErr)
	}
}

// TestIdleAcrossServers runs two wsd processes on one port through
// StartServers (the layout of bench/run-1m.sh), serves traffic first, then
// measures an idle run over both with forced GCs: the heap per connection
// must come out positive (before the forced GC, the garbage of earlier
// traffic made it negative), the figures are the sum of both processes,
// each process holds some of the connections, and the plot is drawn.
func TestIdleAcrossServers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen := ln.Addr().String()
	ln.Close()
	base := freePortPair(t)
	dir := t.TempDir()
	srv, err := StartServers(context.Background(), ServersOptions{
		Wsd: wsdproc.Binary(t), K: 2, Listen: listen, AdminHost: "127.0.0.1", AdminBase: base,
		LogDir: dir, Args: []string{"--loops", "1", "--pprof", "--echo-path", "/echo", "--history-size", "1000", "--allow-client-publish",
			"--max-messages-per-sec", "0", "--max-inbound-bytes-per-sec", "0"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := srv.Stop(); err != nil {
			t.Error(err)
		}
	}()
	// Traffic first: clients that publish 1 KiB messages into history
	// and go, leaving garbage (and history) behind in both processes.
	for i := range 40 {
		conn, err := dialUpgraded(context.Background(), listen, "/ws", nil)
		if err != nil {
			t.Fatal(err)
		}
		c := newWSClient(conn)
		for j := range 50 {
			msg := fmt.Sprintf(`{"type":"publish","channel":"c%d","data":"%s"}`, j, strings.Repeat("x", 1024))
			if err := c.write(frame.OpText, []byte(msg), 5*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		_ = i
		c.close()
	}
	plot := filepath.Join(dir, "idle.png")
	r, err := RunIdle(context.Background(), IdleOptions{
		URL: "ws://" + listen + "/echo", Admins: srv.Admins,
		N: 1000, PerProcess: 500, Source: net.ParseIP("127.0.0.2"), Concurrency: 8, Loops: 1,
		Settle: 300 * time.Millisecond, Hold: 500 * time.Millisecond, Interval: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	r.Print(&out)
	t.Logf("\n%s", out.String())
	if r.Connections != 1000 || r.Servers != 2 || r.Verdict() != "" {
		t.Fatalf("connections %d, servers %d, verdict %q", r.Connections, r.Servers, r.Verdict())
	}
	if !r.HeapForcedGC || r.HeapLivePerConn <= 0 {
		t.Fatalf("heap per connection %.0f B (forced GC: %v)", r.HeapLivePerConn, r.HeapForcedGC)
	}
	sum, err := SumMetrics(context.Background(), srv.Admins)
	if err != nil {
		t.Fatal(err)
	}
	a, err := ScrapeMetrics(context.Background(), srv.Admins[0], 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// The run has ended: its connections are closing. Every process got
	// some of them (SO_REUSEPORT spread them), and the sum counts both.
	if got := sum["wsd_ready"]; got != 2 {
		t.Errorf("wsd_ready summed over 2 ready processes: %v", got)
	}
	if a["wsd_connections_accepted_total"] == 0 || a["wsd_connections_accepted_total"] >= sum["wsd_connections_accepted_total"] {
		t.Errorf("process 0 opened %v connections of %v in all: the port should spread them over both",
			a["wsd_connections_accepted_total"], sum["wsd_connections_accepted_total"])
	}
	if err := WriteIdlePlot(plot, r); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(plot)
	if err != nil || !bytes.HasPrefix(b, []byte("\x89PNG")) {
		t.Fatalf("plot: %v, %d bytes", err, len(b))
	}
}

// freePortPair finds two consecutive free loopback ports (AdminBase, +1).
func freePortPair(t *testing.T) int {
	for range 50 {
		a, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := a.Addr().(*net.TCPAddr).Port
		b, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+1))
		a.Close()
		if err == nil {
			b.Close()
			return port
		}
	}
	t.Fatal("no two consecutive free ports")
	return 0
}
