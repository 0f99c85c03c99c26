package bench

import (
	"bytes"
	"context"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// init lets this test binary serve as a storm run's client processes: the
// coordinator re-executes os.Executable() with "storm-worker" (before
// TestMain, so the idle test's dispatch is untouched).
func init() {
	if len(os.Args) > 1 && os.Args[1] == "storm-worker" {
		if err := RunStormWorkerArgs(os.Args[2:], os.Stdout, os.Stdin); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// TestStormRun runs a small storm end to end against two real wsd
// processes sharing one port (--reuse-port), each pacing handshakes: 300
// storm clients in two client processes and 20 residents. Every client
// must come back, the attempts must add up, the refusals the clients saw
// must be the ones the servers counted, and the residents' echoes must be
// answered before and during the storm.
func TestStormRun(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	listen := "127.0.0.1:" + strconv.Itoa(port)
	args := []string{"--listen", listen, "--reuse-port", "--loops", "1", "--max-handshakes-per-sec", "100", "--retry-after-max", "1s"}
	_, adminA, pidA := startWsd(t, args...)
	_, adminB, pidB := startWsd(t, args...)

	var progress bytes.Buffer
	r, err := RunStorm(context.Background(), StormOptions{
		URL: "ws://" + listen + "/ws", Admins: []string{"http://" + adminA, "http://" + adminB},
		N: 300, Resident: 20, PerProcess: 150, Source: net.ParseIP("127.0.0.2"), Concurrency: 8,
		WarmupRate: 150, Loops: 1, EchoInterval: 50 * time.Millisecond, Baseline: 500 * time.Millisecond,
		After: 300 * time.Millisecond, Split: 100 * time.Millisecond, Trigger: TriggerClose, Jitter: 200 * time.Millisecond, Timeout: 30 * time.Second,
		Progress: &progress,
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	var table bytes.Buffer
	r.Print(&table)
	t.Logf("\n%s%s", progress.String(), table.String())

	if len(r.ServerPIDs) != 2 || !(r.ServerPIDs[0] == min(pidA, pidB) && r.ServerPIDs[1] == max(pidA, pidB)) {
		t.Errorf("server pids %v, want both wsd processes (%d, %d)", r.ServerPIDs, pidA, pidB)
	}
	if !r.Complete || r.Back != 300 || r.GaveUp != 0 || r.AllBackSeconds == nil || r.StoppedBy != "all back" || r.Processes != 2 {
		t.Fatalf("complete %v: %d back, %d gave up, stopped by %q, %d processes", r.Complete, r.Back, r.GaveUp, r.StoppedBy, r.Processes)
	}
	if r.Attempts != r.Back+r.Refused+r.Errors || r.Handshake.N != 300 || r.Refusal.N != int(r.Refused) {
		t.Errorf("attempts %d, want back %d + refused %d + errors %d; %d handshake and %d refusal latencies",
			r.Attempts, r.Back, r.Refused, r.Errors, r.Handshake.N, r.Refusal.N)
	}
	// 300 clients against two buckets of 100 (refilled at 200/s over the
	// 200 ms jitter): some must be paced, each with a hint of 1 s.
	if r.Refused == 0 || r.RefusalsByStatus["503"] != r.Refused || r.RetryAfterHints["1"] != r.Refused {
		t.Errorf("refused %d, by status %v, hints %v: want some, all 503 with Retry-After: 1", r.Refused, r.RefusalsByStatus, r.RetryAfterHints)
	}
	if r.Errors != 0 {
		t.Errorf("%d errors %v (first: %s)", r.Errors, r.ErrorsByKind, r.FirstError)
	}
	var paced, open float64
	for i, a := range r.ServerAfter {
		b := r.ServerBefore[i]
		if a.Err != "" || a.Paced == nil || b.Paced == nil || a.Open == nil {
			t.Fatalf("admin %s: %+v before, %+v after", a.Admin, b, a)
		}
		paced += *a.Paced - *b.Paced
		open += *a.Open
	}
	if paced != float64(r.Refused) {
		t.Errorf("the servers counted %.0f paced refusals during the storm; the clients saw %d", paced, r.Refused)
	}
	if open != 320 {
		t.Errorf("the servers hold %.0f connections after the storm, want 320", open)
	}
	if len(r.Echo) != 5 || r.Echo[0].Name != "before" || r.Echo[1].Name != "during" || r.Echo[2].Name != "after" ||
		r.Echo[3].Sent+r.Echo[4].Sent != r.Echo[1].Sent || r.Echo[3].Answered+r.Echo[4].Answered != r.Echo[1].Answered {
		t.Fatalf("echo windows %+v: want before, during, after, and during split in two", r.Echo)
	}
	for _, e := range r.Echo[:2] {
		if e.Sent == 0 || e.Answered != e.Sent || e.P50Ms <= 0 || e.P50Ms > e.P99Ms || e.P99Ms > e.MaxMs {
			t.Errorf("echo %s: %+v", e.Name, e)
		}
	}
	if r.ResidentDropped != 0 || r.StormDropped != 0 || r.EchoErrors != 0 {
		t.Errorf("dropped: %d residents, %d storm clients; %d echo errors (%s)", r.ResidentDropped, r.StormDropped, r.EchoErrors, r.EchoFirstErr)
	}
	if len(r.Curve) == 0 || len(r.EchoSeries) == 0 || r.ServerCPUSeconds == nil {
		t.Fatalf("curve %d points, echo series %d, server CPU %v", len(r.Curve), len(r.EchoSeries), r.ServerCPUSeconds)
	}
	if last := r.Curve[len(r.Curve)-1]; last.Back != 300 || last.Attempts != r.Attempts {
		t.Errorf("the curve ends at %+v, want all 300 back after %d attempts", last, r.Attempts)
	}
	if !strings.Contains(table.String(), "all back after") {
		t.Errorf("the table has no 'all back after' line")
	}
}
