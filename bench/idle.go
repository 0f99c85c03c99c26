package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// IdleOptions describe an idle run: open N connections, let them settle,
// hold them, check that every one still answers, and measure what they
// cost the servers and the kernel.
type IdleOptions struct {
	URL         string        // ws://host:port/path of the running wsd (one process or several sharing the port)
	Admins      []string      // http://host:port of each server process's admin listener; their figures are summed
	N           int           // connections to open
	PerProcess  int           // most connections one client process opens
	Source      net.IP        // first source address; process i dials from Source+i
	Concurrency int           // dials in flight per process
	Loops       int           // event loops per client process
	Settle      time.Duration // wait after the last connection before measuring memory (0: scaled with N, AutoSettle)
	Hold        time.Duration // then hold this long, measuring idle CPU (0: scaled with N, AutoHold)
	Timeout     time.Duration // give up if the connections are not all open by then (0: scaled with N, AutoTimeout)
	MaxFailed   int64         // dials or handshakes that may fail before the run gives up (default 0)
	Subscribe   string        // if set, each connection subscribes to this channel (JSON protocol) before it idles
	NoPingCheck bool          // skip the final check that every connection answers a ping
	Interval    time.Duration // sample period (0: 1 s, 2 s with more than 8 servers)
	Progress    io.Writer     // live progress (nil: none)
	Terminal    bool          // Progress is a terminal: one line rewritten in place; otherwise a line every 5 s
}

// AutoSettle is the settle wait for n connections: memory figures need
// the servers' last allocations to land, not a fixed 15 s.
func AutoSettle(n int) time.Duration {
	return min(2*time.Second+time.Duration(n)*time.Second/20000, 15*time.Second)
}

// AutoHold is the hold for n connections: long enough that the servers'
// pings run (a 30 s ping interval touches every connection within the
// hold once n passes 9,000), short for small runs.
func AutoHold(n int) time.Duration {
	return min(max(time.Duration(n)*time.Second/300, 5*time.Second), 60*time.Second)
}

// AutoTimeout bounds the ramp for n connections: 2 min plus 1 s per 2,000.
func AutoTimeout(n int) time.Duration {
	return 2*time.Minute + time.Duration(n)*time.Second/2000
}

// IdleResult is what an idle run measured. Per-connection figures divide a
// growth (after minus before) by the connections the servers count open.
type IdleResult struct {
	Connections int   `json:"connections"`
	Servers     int   `json:"server_processes"`
	Processes   int   `json:"client_processes"`
	Failed      int64 `json:"failed"`
	Retried     int64 `json:"retried"`
	Dropped     int64 `json:"dropped"`
	// FirstError is the first dial or handshake error a client process
	// gave up on; FirstRetryError what made the first retried dial fail.
	FirstError      string  `json:"first_error,omitempty"`
	FirstRetryError string  `json:"first_retry_error,omitempty"`
	RampSeconds     float64 `json:"ramp_seconds"`
	RampRate        float64 `json:"ramp_connections_per_second"`

	RSSBytesPerConn  float64 `json:"server_rss_bytes_per_conn"`
	AnonBytesPerConn float64 `json:"server_rss_anon_bytes_per_conn"`
	HeapInusePerConn float64 `json:"server_heap_inuse_bytes_per_conn"`
	HeapLivePerConn  float64 `json:"server_heap_live_bytes_per_conn"`
	// HeapForcedGC says whether both heap samples followed a forced GC
	// (the servers' /debug/pprof/heap?gc=1, served with wsd --pprof).
	// Without it "live" is as of each server's last GC, which after
	// earlier traffic may have been long before the baseline: the heap
	// figures are then unreliable (they can even come out negative).
	HeapForcedGC bool `json:"heap_after_forced_gc"`

	SlabPerConn         float64 `json:"kernel_slab_bytes_per_conn_both_ends"`
	SockBufPerConn      float64 `json:"kernel_tcp_buffer_bytes_per_conn_both_ends"`
	HostMemPerConn      float64 `json:"host_memory_bytes_per_conn_all_in"`
	ClientRSS           float64 `json:"client_rss_bytes"`
	ClientRSSPerConn    float64 `json:"client_rss_bytes_per_conn"`
	ServerRSSBefore     float64 `json:"server_rss_before_bytes"`
	ServerRSSAfter      float64 `json:"server_rss_after_bytes"`
	SettleSeconds       float64 `json:"settle_seconds"`
	HoldSeconds         float64 `json:"hold_seconds"`
	IdleCPUPercent      float64 `json:"server_idle_cpu_percent_of_one_core"`
	PingsDuringHold     float64 `json:"pings_during_hold"`
	Goroutines          float64 `json:"server_goroutines"`
	OpenAtEnd           float64 `json:"server_open_at_end"`
	PingCheck           bool    `json:"ping_check"`
	PingsSent           int64   `json:"ping_check_sent"`
	PongsReceived       int64   `json:"ping_check_pongs"`
	PingCheckSeconds    float64 `json:"ping_check_seconds"`
	Before              Sample  `json:"before"`
	Settled             Sample  `json:"settled"`
	After               Sample  `json:"after"`
	Samples             []IdleSample
	ProbeErr            string `json:"probe_error,omitempty"`
	ProbeRTTEndMillisec float64
}

// MarshalJSON writes the probe's last round trip as null when the probe
// had failed (NaN, which encoding/json refuses: -json would fail).
func (r IdleResult) MarshalJSON() ([]byte, error) {
	type plain IdleResult
	p := struct {
		plain
		ProbeRTTEndMillisec *float64
	}{plain: plain(r)}
	if !math.IsNaN(r.ProbeRTTEndMillisec) {
		p.ProbeRTTEndMillisec = &r.ProbeRTTEndMillisec
	}
	return json.Marshal(p)
}

// IdleSample is one point of the run's curve: what the servers held and
// what it cost at that moment, and how long one live connection's ping
// took.
type IdleSample struct {
	Seconds        float64 `json:"seconds"`
	Phase          string  `json:"phase"`
	Connections    float64 `json:"connections"` // open on the servers, less those open before the run
	ServerRSS      float64 `json:"server_rss_bytes"`
	RSSPerConn     float64 `json:"server_rss_bytes_per_conn"`
	SlabPerConn    float64 `json:"kernel_slab_bytes_per_conn_both_ends"`
	ProbeRTTMillis float64 `json:"probe_ping_rtt_ms"` // NaN in memory, null in JSON, when the probe failed
}

// MarshalJSON writes a failed probe's NaN as null.
func (s IdleSample) MarshalJSON() ([]byte, error) {
	type plain IdleSample
	p := struct {
		plain
		ProbeRTTMillis *float64 `json:"probe_ping_rtt_ms"`
	}{plain: plain(s)}
	if !math.IsNaN(s.ProbeRTTMillis) {
		p.ProbeRTTMillis = &s.ProbeRTTMillis
	}
	return json.Marshal(p)
}

type workerReport struct {
	Connected int64  `json:"connected"`
	Failed    int64  `json:"failed"`
	Dropped   int64  `json:"dropped"`
	Pings     int64  `json:"pings"`      // server pings answered
	PingsSent int64  `json:"pings_sent"` // our check pings written
	Pongs     int64  `json:"pongs"`      // their answers
	Retried   int64  `json:"retried"`    // dials tried again after a failure
	RetryErr  string `json:"retry_err,omitempty"`
	Done      bool   `json:"done"` // every dial has returned
	FirstErr  string `json:"first_err,omitempty"`
	Err       string `json:"err,omitempty"` // the process cannot go on
}

// ScrapeAll reads every server's /metrics and sums their figures (the
// host's kernel counters are read once): K processes sharing a port are
// measured as one server.
func ScrapeAll(admins []string) (Sample, error) {
	samples := make([]Sample, len(admins))
	errs := make([]error, len(admins))
	eachAdmin(admins, func(i int, a string) { samples[i], errs[i] = Scrape(a) })
	if err := errors.Join(errs...); err != nil {
		return Sample{}, err
	}
	var s Sample
	for _, x := range samples {
		s.Open += x.Open
		s.RSS += x.RSS
		s.RSSAnon += x.RSSAnon
		s.HeapInuse += x.HeapInuse
		s.HeapLive += x.HeapLive
		s.CPUSeconds += x.CPUSeconds
		s.Pings += x.Pings
		s.Goroutines += x.Goroutines
	}
	s.At = time.Now()
	s.KernelSlab = meminfoBytes("Slab")
	s.MemFree = meminfoBytes("MemFree")
	s.SockInUse, s.KernelTCPMm = sockstatTCP()
	return s, nil
}

// forceGC asks each server to collect garbage now, through the heap
// profile's gc=1 (wsd serves it with --pprof). It reports false if any
// server does not serve it.
func forceGC(admins []string) bool {
	ok := make([]bool, len(admins))
	c := &http.Client{Timeout: 30 * time.Second}
	eachAdmin(admins, func(i int, a string) {
		resp, err := c.Get(strings.TrimSuffix(a, "/") + "/debug/pprof/heap?gc=1")
		if err != nil {
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		// pprof answers with the profile as an attachment; anything
		// else (a 404, a page that answers every path) forced nothing.
		ok[i] = resp.StatusCode == http.StatusOK && strings.Contains(resp.Header.Get("Content-Disposition"), `filename="heap"`)
	})
	return !slices.Contains(ok, false)
}

// eachAdmin calls f for every admin URL, at most 8 at a time (a scrape
// costs each server a walk of its descriptors), and returns when all
// have returned.
func eachAdmin(admins []string, f func(i int, admin string)) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, a := range admins {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			f(i, a)
		}()
	}
	wg.Wait()
}

// RunIdle runs the coordinator: it starts client processes (this binary's
// "idle-worker" command), each from its own source address, and measures.
func RunIdle(ctx context.Context, o IdleOptions) (*IdleResult, error) {
	u, err := url.Parse(o.URL)
	if err != nil || u.Scheme != "ws" || u.Host == "" {
		return nil, fmt.Errorf("bad -url %q: want ws://host:port/path", o.URL)
	}
	if len(o.Admins) == 0 {
		return nil, errors.New("no admin URL: the run reads the servers' /metrics")
	}
	if o.Settle <= 0 {
		o.Settle = AutoSettle(o.N)
	}
	if o.Hold <= 0 {
		o.Hold = AutoHold(o.N)
	}
	if o.Timeout <= 0 {
		o.Timeout = AutoTimeout(o.N)
	}
	if o.Interval <= 0 {
		o.Interval = time.Second
		if len(o.Admins) > 8 {
			// A scrape costs each server a walk of its fd table: fewer
			// of them when there are many servers with many fds.
			o.Interval = 5 * time.Second
		}
	}
	// The probe opens before the baseline, so that it is not counted.
	probe := newProbe(ctx, u.Host, u.RequestURI())
	defer probe.close()
	gcBefore := forceGC(o.Admins)
	before, err := ScrapeAll(o.Admins)
	if err != nil {
		return nil, err
	}
	if others := before.Open - float64(probe.opened()); others > 0 {
		fmt.Fprintf(os.Stderr, "wsbench: note: the servers already have %.0f connections open; they are not counted\n", others)
	}
	workers, err := startWorkers(ctx, workerSpec{url: o.URL, n: o.N, perProcess: o.PerProcess, source: o.Source,
		concurrency: o.Concurrency, loops: o.Loops, subscribe: o.Subscribe, name: "client process"})
	if err != nil {
		return nil, err
	}
	defer workers.close(0)
	procs, total, errc := workers.procs(), workers.total, workers.errc
	res := &IdleResult{Servers: len(o.Admins), Processes: procs, HeapForcedGC: gcBefore}
	start := time.Now()
	pl := progressLine{w: o.Progress, terminal: o.Terminal}
	var lastLine time.Time
	var lastServers Sample
	sample := func(phase string) {
		s, err := ScrapeAll(o.Admins)
		if err != nil {
			return // a slow scrape under load is not a failed run; the next one counts
		}
		lastServers = s
		conns := s.Open - before.Open
		is := IdleSample{Seconds: time.Since(start).Seconds(), Phase: phase, Connections: conns, ServerRSS: s.RSS,
			ProbeRTTMillis: probe.rtt()}
		if conns > 0 {
			is.RSSPerConn = (s.RSS - before.RSS) / conns
			is.SlabPerConn = (s.KernelSlab - before.KernelSlab) / conns
		}
		res.Samples = append(res.Samples, is)
	}
	progress := func(phase string) {
		if o.Progress == nil || (!o.Terminal && time.Since(lastLine) < 5*time.Second) {
			return
		}
		lastLine = time.Now()
		t, _ := total()
		rtt := "n/a"
		if n := len(res.Samples); n > 0 && !math.IsNaN(res.Samples[n-1].ProbeRTTMillis) {
			rtt = fmt.Sprintf("%.1f ms", res.Samples[n-1].ProbeRTTMillis)
		}
		pl.progress(fmt.Sprintf("%-6s %6.1fs  connected %d/%d  failed %d  retried %d  dropped %d  servers hold %.0f  rss %.0f MiB  probe %s",
			phase, time.Since(start).Seconds(), t.Connected, o.N, t.Failed, t.Retried, t.Dropped,
			lastServers.Open-before.Open, lastServers.RSS/(1<<20), rtt))
	}
	deadline := time.After(o.Timeout)
	tick := time.NewTicker(o.Interval)
	defer tick.Stop()
	check := func() error {
		t, _ := total()
		if t.Failed > o.MaxFailed {
			return fmt.Errorf("%d connections failed (at most %d may); %d open; first error: %s (%d dials retried, the first after: %s)",
				t.Failed, o.MaxFailed, t.Connected, t.FirstErr, t.Retried, t.RetryErr)
		}
		return nil
	}
	for {
		if _, done := total(); done == procs {
			break
		}
		select {
		case err := <-errc:
			return nil, err
		case <-deadline:
			t, _ := total()
			return nil, fmt.Errorf("only %d of %d connections open after %v (first error: %s)", t.Connected, o.N, o.Timeout, t.FirstErr)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
			if err := check(); err != nil {
				return nil, err
			}
			sample("ramp")
			progress("ramp")
		}
	}
	if err := check(); err != nil {
		return nil, err
	}
	ramp := time.Since(start)
	pl.endProgress()
	lastLine = time.Time{}
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
				sample(phase)
				progress(phase)
			}
		}
	}
	if err := wait(o.Settle, "settle"); err != nil {
		return nil, err
	}
	res.HeapForcedGC = res.HeapForcedGC && forceGC(o.Admins)
	settled, err := ScrapeAll(o.Admins)
	if err != nil {
		return nil, err
	}
	clientRSS := workers.rss()
	if err := wait(o.Hold, "hold"); err != nil {
		return nil, err
	}
	after, err := ScrapeAll(o.Admins)
	if err != nil {
		return nil, err
	}
	pl.endProgress()

	if !o.NoPingCheck {
		res.PingCheck = true
		workers.send("ping")
		pingStart := time.Now()
		limit := time.After(10*time.Second + time.Duration(o.N)*time.Second/20000)
	waitPongs:
		for {
			t, _ := total()
			if t.Pongs >= t.Connected-t.Dropped {
				break
			}
			select {
			case <-limit:
				break waitPongs
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
		res.PingCheckSeconds = time.Since(pingStart).Seconds()
	}
	end, err := ScrapeAll(o.Admins)
	if err != nil {
		return nil, err
	}
	t, _ := total()
	conns := settled.Open - before.Open
	if conns <= 0 {
		return nil, errors.New("the servers report no new connections")
	}
	per := func(a, b float64) float64 { return (a - b) / conns }
	hold := after.At.Sub(settled.At).Seconds()
	res.Connections = int(conns)
	res.Failed, res.Retried, res.Dropped, res.FirstError, res.FirstRetryError = t.Failed, t.Retried, t.Dropped, t.FirstErr, t.RetryErr
	res.RampSeconds = ramp.Seconds()
	res.RampRate = float64(t.Connected) / ramp.Seconds()
	res.RSSBytesPerConn = per(settled.RSS, before.RSS)
	res.AnonBytesPerConn = per(settled.RSSAnon, before.RSSAnon)
	res.HeapInusePerConn = per(settled.HeapInuse, before.HeapInuse)
	res.HeapLivePerConn = per(settled.HeapLive, before.HeapLive)
	res.SlabPerConn = per(settled.KernelSlab, before.KernelSlab)
	res.SockBufPerConn = per(settled.KernelTCPMm, before.KernelTCPMm)
	res.HostMemPerConn = per(before.MemFree, settled.MemFree)
	res.ClientRSS = clientRSS
	res.ClientRSSPerConn = clientRSS / conns
	res.ServerRSSBefore, res.ServerRSSAfter = before.RSS, settled.RSS
	res.SettleSeconds = o.Settle.Seconds()
	res.HoldSeconds = hold
	res.IdleCPUPercent = 100 * (after.CPUSeconds - settled.CPUSeconds) / hold
	res.PingsDuringHold = after.Pings - settled.Pings
	res.Goroutines = settled.Goroutines
	res.OpenAtEnd = end.Open - before.Open
	res.PingsSent, res.PongsReceived = t.PingsSent, t.Pongs
	res.Before, res.Settled, res.After = before, settled, end
	res.ProbeRTTEndMillisec = probe.rtt()
	res.ProbeErr = probe.errText()
	return res, nil
}

// Verdict says what the run failed to show: connections that failed or
// were dropped, or that did not answer the final ping. Empty: every
// connection opened, stayed and answered.
func (r *IdleResult) Verdict() string {
	var bad []string
	if r.Failed > 0 {
		bad = append(bad, fmt.Sprintf("%d connections failed to open", r.Failed))
	}
	if r.Dropped > 0 {
		bad = append(bad, fmt.Sprintf("%d were dropped while held", r.Dropped))
	}
	if r.PingCheck && r.PongsReceived < int64(r.Connections) {
		bad = append(bad, fmt.Sprintf("only %d of %d answered the final ping", r.PongsReceived, r.Connections))
	}
	if r.OpenAtEnd < float64(r.Connections) {
		bad = append(bad, fmt.Sprintf("the servers held %.0f of %d at the end", r.OpenAtEnd, r.Connections))
	}
	return strings.Join(bad, "; ")
}

// Print writes the result as a table, with a projection to 1M connections.
func (r *IdleResult) Print(w io.Writer) {
	b := func(v float64) string { return fmt.Sprintf("%.0f B", v) }
	mib := func(v float64) string { return fmt.Sprintf("%.1f MiB", v/(1<<20)) }
	fmt.Fprintf(w, "idle connections                 %d on %d server process(es), from %d client processes (%d failed, %d dropped; %d dials retried)\n",
		r.Connections, r.Servers, r.Processes, r.Failed, r.Dropped, r.Retried)
	if r.FirstError != "" {
		fmt.Fprintf(w, "first failure                    %s\n", r.FirstError)
	}
	if r.FirstRetryError != "" {
		fmt.Fprintf(w, "first retried dial failed with   %s\n", r.FirstRetryError)
	}
	fmt.Fprintf(w, "ramp                             %.1f s (%.0f connections/s)\n", r.RampSeconds, r.RampRate)
	fmt.Fprintf(w, "server RSS                       %s -> %s\n", mib(r.ServerRSSBefore), mib(r.ServerRSSAfter))
	fmt.Fprintf(w, "server user space per conn       %s RSS growth   (anonymous memory: %s)\n", b(r.RSSBytesPerConn), b(r.AnonBytesPerConn))
	heapNote := "after a forced GC"
	if !r.HeapForcedGC {
		heapNote = "UNRELIABLE: no forced GC (start wsd with --pprof), live is as of each server's last GC"
	}
	fmt.Fprintf(w, "server Go heap per conn          %s live, %s in use (%s)\n", b(r.HeapLivePerConn), b(r.HeapInusePerConn), heapNote)
	fmt.Fprintf(w, "kernel per conn                  %s slab for both ends (client and server sockets are on this host; the server's share is about half), %s of TCP buffers\n",
		b(r.SlabPerConn), b(r.SockBufPerConn))
	fmt.Fprintf(w, "client user space per conn       %s RSS (%s over the client processes, their runtimes included)\n", b(r.ClientRSSPerConn), mib(r.ClientRSS))
	fmt.Fprintf(w, "host memory per conn, all in     %s (MemFree's fall: both ends, user and kernel, and whatever else the host did meanwhile)\n", b(r.HostMemPerConn))
	fmt.Fprintf(w, "server goroutines                %.0f\n", r.Goroutines)
	fmt.Fprintf(w, "server CPU while idle            %.2f%% of one core over %.0f s (utime+stime; %.0f pings sent)\n", r.IdleCPUPercent, r.HoldSeconds, r.PingsDuringHold)
	if r.PingCheck {
		fmt.Fprintf(w, "final ping check                 %d of %d answered in %.1f s\n", r.PongsReceived, r.Connections, r.PingCheckSeconds)
	}
	if !math.IsNaN(r.ProbeRTTEndMillisec) {
		fmt.Fprintf(w, "probe ping RTT at the end        %.2f ms\n", r.ProbeRTTEndMillisec)
	} else if r.ProbeErr != "" {
		fmt.Fprintf(w, "probe                            failed: %s\n", r.ProbeErr)
	}
	fmt.Fprintf(w, "projection for 1,000,000 conns   server user space %.2f GiB; kernel about %.2f GiB (half the slab growth per conn, server side)\n",
		r.RSSBytesPerConn*1e6/(1<<30), r.SlabPerConn/2*1e6/(1<<30))
	if v := r.Verdict(); v != "" {
		fmt.Fprintf(w, "verdict                          FAIL: %s\n", v)
	} else {
		fmt.Fprintf(w, "verdict                          PASS: every connection opened, stayed open and answered\n")
	}
}

// IdleWorkerMain is the "idle-worker" command: one client process that
// opens -n connections from -source and keeps them until its stdin
// closes, pinging every one when a "ping" line arrives there.
func IdleWorkerMain(ctx context.Context, args []string, out io.Writer, stdin io.Reader) error {
	var rawURL, source, subscribe string
	var n, concurrency, loops int
	for i := 0; i+1 < len(args); i += 2 {
		v := args[i+1]
		switch args[i] {
		case "-url":
			rawURL = v
		case "-source":
			source = v
		case "-subscribe":
			subscribe = v
		case "-n", "-concurrency", "-loops":
			x, err := strconv.Atoi(v)
			if err != nil || x < 0 {
				return fmt.Errorf("idle-worker: bad %s %q", args[i], v)
			}
			switch args[i] {
			case "-n":
				n = x
			case "-concurrency":
				concurrency = x
			default:
				loops = x
			}
		default:
			return fmt.Errorf("idle-worker: unknown flag %q", args[i])
		}
	}
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" {
		return fmt.Errorf("idle-worker: bad -url %q", rawURL)
	}
	return RunIdleWorker(ctx, u.Host, u.RequestURI(), n, net.ParseIP(source), max(concurrency, 1), max(loops, 1), subscribe, out, stdin)
}

// RunIdleWorker is one client process: it opens n connections from source
// and keeps them until its stdin closes, reporting on stdout. A failed
// dial is counted and reported, not fatal: the coordinator decides.
func RunIdleWorker(ctx context.Context, target, path string, n int, source net.IP, concurrency, loops int, subscribe string, out io.Writer, stdin io.Reader) error {
	var c Counters
	d := &Dialer{Target: target, Path: path, Source: source, Counters: &c, Subscribe: subscribe}
	if err := d.Start(loops); err != nil {
		return err
	}
	defer d.Stop()
	// A dial that fails is tried twice more (after 0.5 s, then 2 s), as a
	// client would reconnect: on a saturated host a handshake can miss its
	// deadline. Retries are counted and reported; only a third failure
	// counts as failed.
	var retried atomic.Int64
	var retryErr atomic.Pointer[string] // why the first retried dial failed
	pool := startOpenPool(ctx, n, concurrency, func(int) error {
		var err error
		for try, pause := range []time.Duration{0, 500 * time.Millisecond, 2 * time.Second} {
			if try > 0 {
				if retried.Add(1) == 1 {
					e := err.Error()
					retryErr.Store(&e)
				}
				select {
				case <-time.After(pause):
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			if err = d.Open(ctx); err == nil {
				return nil
			}
		}
		return err
	})
	var outMu sync.Mutex
	report := func(fatal error) {
		outMu.Lock()
		defer outMu.Unlock()
		r := workerReport{Connected: pool.opened.Load(), Failed: pool.failed.Load(), Dropped: c.Dropped.Load(), Pings: c.Pings.Load(),
			PingsSent: c.PingsSent.Load(), Pongs: c.Pongs.Load(), Retried: retried.Load()}
		if err := pool.firstErr(); err != nil {
			r.FirstErr = err.Error()
		}
		if e := retryErr.Load(); e != nil {
			r.RetryErr = *e
		}
		select {
		case <-pool.done:
			r.Done = true
		default:
		}
		if fatal != nil {
			r.Err = fatal.Error()
		}
		b, _ := json.Marshal(r)
		fmt.Fprintf(out, "%s\n", b)
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				report(nil)
			}
		}
	}()
	<-pool.done
	// What the dials left behind is garbage now: give it back, so that
	// the process's RSS is what holding the connections costs.
	debug.FreeOSMemory()
	report(nil)
	// Hold until the coordinator closes stdin; ping every connection when
	// it asks.
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdin)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				return nil
			}
			if line == "ping" {
				d.PingAll()
				report(nil)
			}
		case <-ctx.Done():
			return nil
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
