package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"
)

// workerSet is a set of client processes (this binary's "idle-worker"
// command) that open connections and hold them, answering pings, until
// their stdin closes; each reports its running totals on stdout.
type workerSet struct {
	n      int // connections asked of them all
	cmds   []*exec.Cmd
	stdins []io.WriteCloser
	errc   chan error // a process that cannot go on

	mu      sync.Mutex
	reports []workerReport // the latest of each
}

// workerSpec says what the processes dial: n connections to url, at most
// perProcess each, process i from source+i.
type workerSpec struct {
	url         string
	n           int
	perProcess  int
	source      net.IP
	concurrency int
	loops       int
	subscribe   string
	name        string // in errors: "client process", "holder process"
}

// startWorkers starts ceil(n/perProcess) processes; they dial at once.
func startWorkers(ctx context.Context, sp workerSpec) (*workerSet, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	procs := (sp.n + sp.perProcess - 1) / sp.perProcess
	w := &workerSet{n: sp.n, reports: make([]workerReport, procs), errc: make(chan error, procs)}
	for i := range procs {
		k := min(sp.perProcess, sp.n-i*sp.perProcess)
		src := addIP(sp.source, i)
		cmd := exec.CommandContext(ctx, self, "idle-worker", "-url", sp.url, "-n", strconv.Itoa(k), "-source", src.String(),
			"-concurrency", strconv.Itoa(sp.concurrency), "-loops", strconv.Itoa(sp.loops), "-subscribe", sp.subscribe)
		cmd.Stderr = os.Stderr
		out, _ := cmd.StdoutPipe()
		in, _ := cmd.StdinPipe()
		if err := cmd.Start(); err != nil {
			w.close(0)
			return nil, fmt.Errorf("start %s %d: %w", sp.name, i, err)
		}
		w.cmds, w.stdins = append(w.cmds, cmd), append(w.stdins, in)
		go func(i int, r io.Reader) {
			sc := bufio.NewScanner(r)
			for sc.Scan() {
				var rep workerReport
				if json.Unmarshal(sc.Bytes(), &rep) != nil {
					continue
				}
				w.mu.Lock()
				w.reports[i] = rep
				w.mu.Unlock()
				if rep.Err != "" {
					w.errc <- fmt.Errorf("%s %d (%s): %s", sp.name, i, src, rep.Err)
				}
			}
		}(i, out)
	}
	return w, nil
}

// procs is how many processes there are.
func (w *workerSet) procs() int { return len(w.reports) }

// total adds up the latest reports; done counts the processes whose every
// dial has returned.
func (w *workerSet) total() (t workerReport, done int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, r := range w.reports {
		t.Connected += r.Connected
		t.Failed += r.Failed
		t.Dropped += r.Dropped
		t.Pings += r.Pings
		t.PingsSent += r.PingsSent
		t.Pongs += r.Pongs
		t.Retried += r.Retried
		if t.FirstErr == "" {
			t.FirstErr = r.FirstErr
		}
		if t.RetryErr == "" {
			t.RetryErr = r.RetryErr
		}
		if r.Done {
			done++
		}
	}
	return t, done
}

// send writes a command line ("ping") to every process.
func (w *workerSet) send(line string) {
	for _, in := range w.stdins {
		fmt.Fprintln(in, line)
	}
}

// rss is the processes' resident memory, in all.
func (w *workerSet) rss() float64 {
	var v float64
	for _, c := range w.cmds {
		v += procRSS(c.Process.Pid)
	}
	return v
}

// close ends the processes: they close their connections and exit when
// their stdin closes, all together, so they get one deadline (15 s plus
// 1 s per 20,000 connections held, or limit if positive); those still
// running then are killed.
func (w *workerSet) close(limit time.Duration) {
	for _, in := range w.stdins {
		in.Close()
	}
	if limit <= 0 {
		limit = 15*time.Second + time.Duration(w.n)*time.Second/20000
	}
	deadline := time.After(limit)
	expired := false
	for _, c := range w.cmds {
		done := make(chan struct{})
		go func() { _ = c.Wait(); close(done) }()
		if !expired {
			select {
			case <-done:
				continue
			case <-deadline:
				expired = true
			}
		}
		_ = c.Process.Kill()
		<-done
	}
}
