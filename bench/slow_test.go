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

	"github.com/wsdproject/wsd/engine"
	"github.com/wsdproject/wsd/internal/testserver"
	"github.com/wsdproject/wsd/protocol"
)

// TestSlowRun runs a small slow-consumer measurement end to end against an
// in-process server with the JSON protocol on /ws: 50 clients that never
// read, 3 fast readers, 200 broadcasts of 16 KiB. It checks the result's
// shape and that the fast readers got every broadcast; it asserts nothing
// about memory or timing beyond the run's own bound.
func TestSlowRun(t *testing.T) {
	srv := testserver.Start(t, engine.Config{}, testserver.Route{Path: "/ws", Handler: protocol.Handler{}})
	admin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		srv.WriteMetrics(w)
		metrics.WritePrometheus(w, true)
	}))
	defer admin.Close()

	const timeout = 90 * time.Second
	var progress bytes.Buffer
	began := time.Now()
	r, err := RunSlow(context.Background(), SlowOptions{
		URL: "ws://" + srv.Addr().String() + "/ws", Admin: admin.URL,
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
	if !r.AllReadersComplete || len(r.ReaderReceived) != 3 || r.BroadcasterReceived != 200 {
		t.Fatalf("fast readers received %v (missing %v, closed %q), broadcaster %d; want all 200",
			r.ReaderReceived, r.ReaderMissing, r.ReaderClosed, r.BroadcasterReceived)
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

func TestBroadcastMessage(t *testing.T) {
	for _, size := range []int{32, 100, 16 << 10} {
		m, at := broadcastMessage("0123abcd", size)
		putSeq(m, at, 4321)
		var v struct {
			Type string          `json:"type"`
			Data json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(m, &v); err != nil {
			t.Fatalf("size %d: %v: %s", size, err, m)
		}
		if v.Type != "broadcast" || len(v.Data) != size {
			t.Fatalf("size %d: type %q, %d data bytes", size, v.Type, len(v.Data))
		}
		if seq, ok := parseSeq(m, []byte(`"0123abcd:`)); !ok || seq != 4321 {
			t.Fatalf("size %d: parsed %d, %v", size, seq, ok)
		}
	}
}
