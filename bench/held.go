package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"
)

// holders are client processes (this binary's "idle-worker" command) that
// open connections to a server and hold them, answering pings, until
// closed: the live set a connect run's storm lands on (-held).
type holders struct {
	n       int
	cmds    []*exec.Cmd
	stdins  []io.WriteCloser
	mu      sync.Mutex
	reports []workerReport
	errc    chan error
}

// startHolders starts ceil(n/perProcess) holder processes, process i
// dialing from source+i, and waits until all n connections are open (or
// one fails, or timeout passes).
func startHolders(ctx context.Context, rawURL string, n, perProcess int, source net.IP, timeout time.Duration, pl progressLine) (*holders, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	procs := (n + perProcess - 1) / perProcess
	h := &holders{n: n, reports: make([]workerReport, procs), errc: make(chan error, procs)}
	for i := range procs {
		k := min(perProcess, n-i*perProcess)
		src := addIP(source, i)
		cmd := exec.CommandContext(ctx, self, "idle-worker", "-url", rawURL, "-n", strconv.Itoa(k),
			"-source", src.String(), "-concurrency", "32", "-loops", "1")
		cmd.Stderr = os.Stderr
		out, _ := cmd.StdoutPipe()
		in, _ := cmd.StdinPipe()
		if err := cmd.Start(); err != nil {
			h.close()
			return nil, fmt.Errorf("start holder process %d: %w", i, err)
		}
		h.cmds, h.stdins = append(h.cmds, cmd), append(h.stdins, in)
		go func(i int, r io.Reader) {
			sc := bufio.NewScanner(r)
			for sc.Scan() {
				var rep workerReport
				if json.Unmarshal(sc.Bytes(), &rep) != nil {
					continue
				}
				h.mu.Lock()
				h.reports[i] = rep
				h.mu.Unlock()
				if rep.Err != "" {
					h.errc <- fmt.Errorf("holder process %d (%s): %s", i, src, rep.Err)
				}
			}
		}(i, out)
	}
	start := time.Now()
	deadline := time.After(timeout)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		t, done := h.total()
		if done == procs {
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

func (h *holders) total() (w workerReport, done int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.reports {
		w.Connected += r.Connected
		w.Failed += r.Failed
		w.Dropped += r.Dropped
		if r.Done {
			done++
		}
	}
	return w, done
}

// dropped is how many held connections the server has closed so far.
func (h *holders) dropped() int64 {
	t, _ := h.total()
	return t.Dropped
}

// err reports a holder's failure since the start, if any.
func (h *holders) err() error {
	select {
	case err := <-h.errc:
		return err
	default:
		return nil
	}
}

// close ends the holder processes (they close their connections and exit
// when their stdin closes).
func (h *holders) close() {
	for _, in := range h.stdins {
		in.Close()
	}
	var errs []error
	for _, c := range h.cmds {
		done := make(chan struct{})
		go func() { _ = c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			errs = append(errs, c.Process.Kill())
		}
	}
	_ = errors.Join(errs...)
}
