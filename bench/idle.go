package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"
)

// IdleOptions describe an idle run: open N connections, let them settle,
// hold them, and measure what they cost the server and the kernel.
type IdleOptions struct {
	URL         string        // ws://host:port/path of a running wsd
	Admin       string        // http://host:port of its admin listener
	N           int           // connections to open
	PerProcess  int           // most connections one client process opens
	Source      net.IP        // first source address; process i dials from Source+i
	Concurrency int           // dials in flight per process
	Loops       int           // event loops per client process
	Settle      time.Duration // wait after the last connection before measuring memory
	Hold        time.Duration // then hold this long, measuring idle CPU
	Timeout     time.Duration // give up if the connections are not all open by then
	Subscribe   string        // if set, each connection subscribes to this channel (JSON protocol) before it idles
	Progress    io.Writer     // live progress line (nil: none)
}

// IdleResult is what an idle run measured. Per-connection figures divide a
// growth (after minus before) by the connections open.
type IdleResult struct {
	Connections      int     `json:"connections"`
	Processes        int     `json:"client_processes"`
	Failed           int64   `json:"failed"`
	Dropped          int64   `json:"dropped"`
	RampSeconds      float64 `json:"ramp_seconds"`
	RSSBytesPerConn  float64 `json:"server_rss_bytes_per_conn"`
	AnonBytesPerConn float64 `json:"server_rss_anon_bytes_per_conn"`
	HeapInusePerConn float64 `json:"server_heap_inuse_bytes_per_conn"`
	HeapLivePerConn  float64 `json:"server_heap_live_bytes_per_conn"`
	SlabPerConn      float64 `json:"kernel_slab_bytes_per_conn_both_ends"`
	ServerRSSBefore  float64 `json:"server_rss_before_bytes"`
	ServerRSSAfter   float64 `json:"server_rss_after_bytes"`
	HoldSeconds      float64 `json:"hold_seconds"`
	IdleCPUPercent   float64 `json:"server_idle_cpu_percent_of_one_core"`
	PingsDuringHold  float64 `json:"pings_during_hold"`
	Goroutines       float64 `json:"server_goroutines"`
	Before           Sample  `json:"before"`
	Settled          Sample  `json:"settled"`
	After            Sample  `json:"after"`
}

type workerReport struct {
	Connected int64  `json:"connected"`
	Failed    int64  `json:"failed"`
	Dropped   int64  `json:"dropped"`
	Pings     int64  `json:"pings"`
	Done      bool   `json:"done"`
	Err       string `json:"err,omitempty"`
}

// RunIdle runs the coordinator: it starts client processes (this binary's
// "idle-worker" command), each from its own source address, and measures.
func RunIdle(ctx context.Context, o IdleOptions) (*IdleResult, error) {
	u, err := url.Parse(o.URL)
	if err != nil || u.Scheme != "ws" || u.Host == "" {
		return nil, fmt.Errorf("bad -url %q: want ws://host:port/path", o.URL)
	}
	before, err := Scrape(o.Admin)
	if err != nil {
		return nil, err
	}
	if before.Open > 0 {
		fmt.Fprintf(os.Stderr, "wsbench: note: the server already has %.0f connections open; they are not counted\n", before.Open)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}

	procs := (o.N + o.PerProcess - 1) / o.PerProcess
	reports := make([]workerReport, procs)
	var mu sync.Mutex
	var workers []*exec.Cmd
	var stdins []io.WriteCloser
	errc := make(chan error, procs)
	defer func() {
		for _, in := range stdins {
			in.Close() // workers exit when their stdin closes
		}
		for _, w := range workers {
			done := make(chan struct{})
			go func() { w.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				w.Process.Kill()
			}
		}
	}()
	start := time.Now()
	for i := range procs {
		n := o.PerProcess
		if rest := o.N - i*o.PerProcess; rest < n {
			n = rest
		}
		src := addIP(o.Source, i)
		cmd := exec.CommandContext(ctx, self, "idle-worker",
			"-url", o.URL, "-n", strconv.Itoa(n), "-source", src.String(),
			"-concurrency", strconv.Itoa(o.Concurrency), "-loops", strconv.Itoa(o.Loops), "-subscribe", o.Subscribe)
		cmd.Stderr = os.Stderr
		out, _ := cmd.StdoutPipe()
		in, _ := cmd.StdinPipe()
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("start client process %d: %w", i, err)
		}
		workers = append(workers, cmd)
		stdins = append(stdins, in)
		go func(i int, r io.Reader) {
			sc := bufio.NewScanner(r)
			for sc.Scan() {
				var rep workerReport
				if json.Unmarshal(sc.Bytes(), &rep) != nil {
					continue
				}
				mu.Lock()
				reports[i] = rep
				mu.Unlock()
				if rep.Err != "" {
					errc <- fmt.Errorf("client process %d (%s): %s", i, src, rep.Err)
				}
			}
		}(i, out)
	}
	total := func() (w workerReport, done int) {
		mu.Lock()
		defer mu.Unlock()
		for _, r := range reports {
			w.Connected += r.Connected
			w.Failed += r.Failed
			w.Dropped += r.Dropped
			w.Pings += r.Pings
			if r.Done {
				done++
			}
		}
		return w, done
	}
	progress := func(phase string) {
		if o.Progress != nil {
			t, _ := total()
			fmt.Fprintf(o.Progress, "\r%-8s %6.1fs  connected %d/%d  failed %d  dropped %d   ", phase,
				time.Since(start).Seconds(), t.Connected, o.N, t.Failed, t.Dropped)
		}
	}
	deadline := time.After(o.Timeout)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		_, done := total()
		if done == procs {
			break
		}
		select {
		case err := <-errc:
			return nil, err
		case <-deadline:
			t, _ := total()
			return nil, fmt.Errorf("only %d of %d connections open after %v", t.Connected, o.N, o.Timeout)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
			progress("ramp")
		}
	}
	ramp := time.Since(start)
	wait := func(d time.Duration, phase string) error {
		end := time.After(d)
		for {
			select {
			case <-end:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			case err := <-errc:
				return err
			case <-tick.C:
				progress(phase)
			}
		}
	}
	if err := wait(o.Settle, "settle"); err != nil {
		return nil, err
	}
	settled, err := Scrape(o.Admin)
	if err != nil {
		return nil, err
	}
	if err := wait(o.Hold, "hold"); err != nil {
		return nil, err
	}
	after, err := Scrape(o.Admin)
	if err != nil {
		return nil, err
	}
	if o.Progress != nil {
		fmt.Fprintln(o.Progress)
	}
	t, _ := total()
	conns := settled.Open - before.Open
	if conns <= 0 {
		return nil, errors.New("the server reports no new connections")
	}
	per := func(a, b float64) float64 { return (a - b) / conns }
	hold := after.At.Sub(settled.At).Seconds()
	return &IdleResult{
		Connections:      int(conns),
		Processes:        procs,
		Failed:           t.Failed,
		Dropped:          t.Dropped,
		RampSeconds:      ramp.Seconds(),
		RSSBytesPerConn:  per(settled.RSS, before.RSS),
		AnonBytesPerConn: per(settled.RSSAnon, before.RSSAnon),
		HeapInusePerConn: per(settled.HeapInuse, before.HeapInuse),
		HeapLivePerConn:  per(settled.HeapLive, before.HeapLive),
		SlabPerConn:      per(settled.KernelSlab, before.KernelSlab),
		ServerRSSBefore:  before.RSS,
		ServerRSSAfter:   settled.RSS,
		HoldSeconds:      hold,
		IdleCPUPercent:   100 * (after.CPUSeconds - settled.CPUSeconds) / hold,
		PingsDuringHold:  after.Pings - settled.Pings,
		Goroutines:       settled.Goroutines,
		Before:           before,
		Settled:          settled,
		After:            after,
	}, nil
}

// Print writes the result as a table, with a projection to 1M connections.
func (r *IdleResult) Print(w io.Writer) {
	kib := func(b float64) string { return fmt.Sprintf("%.0f B", b) }
	mib := func(b float64) string { return fmt.Sprintf("%.1f MiB", b/(1<<20)) }
	fmt.Fprintf(w, "idle connections                 %d (from %d client processes; %d failed, %d dropped)\n", r.Connections, r.Processes, r.Failed, r.Dropped)
	fmt.Fprintf(w, "ramp                             %.1f s\n", r.RampSeconds)
	fmt.Fprintf(w, "server RSS                       %s -> %s\n", mib(r.ServerRSSBefore), mib(r.ServerRSSAfter))
	fmt.Fprintf(w, "server RSS growth per conn       %s   (anonymous memory: %s)\n", kib(r.RSSBytesPerConn), kib(r.AnonBytesPerConn))
	fmt.Fprintf(w, "server Go heap per conn          %s live at last GC, %s in use\n", kib(r.HeapLivePerConn), kib(r.HeapInusePerConn))
	fmt.Fprintf(w, "kernel slab growth per conn      %s for both ends (client and server sockets are on this host)\n", kib(r.SlabPerConn))
	fmt.Fprintf(w, "server goroutines                %.0f\n", r.Goroutines)
	fmt.Fprintf(w, "server CPU while idle            %.2f%% of one core over %.0f s (utime+stime; %.0f pings sent)\n", r.IdleCPUPercent, r.HoldSeconds, r.PingsDuringHold)
	fmt.Fprintf(w, "projection for 1,000,000 conns   server user space %.2f GiB; kernel about %.2f GiB (half the slab growth per conn, server side)\n",
		r.RSSBytesPerConn*1e6/(1<<30), r.SlabPerConn/2*1e6/(1<<30))
}

// RunIdleWorker is one client process: it opens n connections from source
// and keeps them until its stdin closes, reporting on stdout.
func RunIdleWorker(ctx context.Context, target, path string, n int, source net.IP, concurrency, loops int, subscribe string, out io.Writer, stdin io.Reader) error {
	var c Counters
	d := &Dialer{Target: target, Path: path, Source: source, Counters: &c, Subscribe: subscribe}
	if err := d.Start(loops); err != nil {
		return err
	}
	defer d.Stop()
	report := func(done bool, err error) {
		r := workerReport{Connected: c.Connected.Load(), Failed: c.Failed.Load(), Dropped: c.Dropped.Load(), Pings: c.Pings.Load(), Done: done}
		if err != nil {
			r.Err = err.Error()
		}
		b, _ := json.Marshal(r)
		fmt.Fprintf(out, "%s\n", b)
	}
	jobs := make(chan struct{})
	var wg sync.WaitGroup
	var firstErr error
	var errOnce sync.Once
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				if err := d.Open(ctx); err != nil {
					c.Failed.Add(1)
					errOnce.Do(func() { firstErr = err })
					continue
				}
				c.Connected.Add(1)
			}
		}()
	}
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				report(false, nil)
			}
		}
	}()
	for range n {
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	close(stop)
	if c.Failed.Load() > 0 {
		report(false, fmt.Errorf("%d of %d connections failed; first: %v", c.Failed.Load(), n, firstErr))
	} else {
		report(true, nil)
	}
	// Hold until the coordinator closes stdin, reporting now and then.
	eof := make(chan struct{})
	go func() { io.Copy(io.Discard, stdin); close(eof) }()
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-eof:
			return nil
		case <-ctx.Done():
			return nil
		case <-t.C:
			report(c.Failed.Load() == 0, nil)
		}
	}
}

func addIP(ip net.IP, n int) net.IP {
	v4 := ip.To4()
	if v4 == nil {
		return ip
	}
	x := uint32(v4[0])<<24 | uint32(v4[1])<<16 | uint32(v4[2])<<8 | uint32(v4[3])
	x += uint32(n)
	return net.IPv4(byte(x>>24), byte(x>>16), byte(x>>8), byte(x))
}
