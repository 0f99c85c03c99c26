package bench

import (
	"context"
	"fmt"
	"net"
	"time"
)

// holders are client processes (this binary's "idle-worker" command) that
// open connections to a server and hold them, answering pings, until
// closed: the live set a connect run's storm lands on (-held).
type holders struct {
	*workerSet
}

// startHolders starts ceil(n/perProcess) holder processes, process i
// dialing from source+i, and waits until all n connections are open (or
// one fails, after its retries, or timeout passes).
func startHolders(ctx context.Context, rawURL string, n, perProcess int, source net.IP, timeout time.Duration, pl progressLine) (*holders, error) {
	w, err := startWorkers(ctx, workerSpec{url: rawURL, n: n, perProcess: perProcess, source: source,
		concurrency: 32, loops: 1, name: "holder process"})
	if err != nil {
		return nil, err
	}
	h := &holders{w}
	start := time.Now()
	deadline := time.After(timeout)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		t, done := h.total()
		if t.Failed > 0 {
			h.close()
			return nil, fmt.Errorf("holders: %d of %d connections failed; first: %s", t.Failed, n, t.FirstErr)
		}
		if done == h.procs() {
			pl.progress(fmt.Sprintf("held     %5.1fs  open %d/%d", time.Since(start).Seconds(), t.Connected, n))
			pl.endProgress()
			return h, nil
		}
		select {
		case err := <-h.errc:
			h.close()
			return nil, err
		case <-deadline:
			h.close()
			return nil, fmt.Errorf("holders: only %d of %d connections open after %v", t.Connected, n, timeout)
		case <-ctx.Done():
			h.close()
			return nil, ctx.Err()
		case <-tick.C:
			pl.progress(fmt.Sprintf("held     %5.1fs  open %d/%d  failed %d", time.Since(start).Seconds(), t.Connected, n, t.Failed))
		}
	}
}

// dropped is how many held connections the server has closed so far.
func (h *holders) dropped() int64 {
	t, _ := h.total()
	return t.Dropped
}

// close ends the holder processes (they close their connections and exit
// when their stdin closes).
func (h *holders) close() { h.workerSet.close(0) }
