package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/wsdproject/wsd/frame"
)

// A storm run: storm clients connect (an untimed warm-up), then at one
// instant all of them drop their connection and reconnect, while resident
// clients, connected before and staying connected, send echoes and time the
// replies. It measures how long until every storm client is back, the
// handshake latency of each successful attempt, the refusals, the
// residents' echo latency before and during the storm, and the server's
// CPU time over it.

// TriggerClose is the one trigger: every storm client closes its own TCP
// connection at once, then reconnects.
const TriggerClose = "close"

// The reconnect policy's constants: after a refusal with Retry-After N, a
// client waits N s plus up to stormRetrySpread at random (the hint is in
// whole seconds); after a connection error, a random time up to
// stormBackoffBase × 2^(errors in a row − 1), at most stormBackoffCap (full
// jitter).
const (
	stormRetrySpread = time.Second
	stormBackoffBase = 100 * time.Millisecond
	stormBackoffCap  = 5 * time.Second
	stormCurveStep   = 100 * time.Millisecond // the curve's sample period
	stormCloseWait   = 10 * time.Second       // most the release of the old connections is waited for
	stormFDMargin    = 64                     // descriptors a storm client process keeps for itself
)

// StormOptions describe a storm run.
type StormOptions struct {
	URL          string        // ws://host:port/path of the JSON protocol endpoint (127.0.0.0/8 only)
	Admins       []string      // admin listeners whose /metrics are read before and after the storm (none: not read)
	N            int           // storm clients
	Resident     int           // resident clients (0: none; no echo figures)
	PerProcess   int           // most storm clients one client process holds
	Source       net.IP        // first source address (127.0.0.0/8); see RunStorm
	Concurrency  int           // warm-up dials in flight per client process
	WarmupRate   float64       // warm-up opens per second over all processes of a phase (0: as fast as Concurrency allows)
	Loops        int           // event loops per storm client process
	EchoInterval time.Duration // each resident sends an echo this often
	Baseline     time.Duration // residents' echoes measured this long before the trigger
	After        time.Duration // and this long after every storm client is back
	Split        time.Duration // the "during" window is also reported in two parts, before and after this (0: not)
	Trigger      string        // TriggerClose
	Jitter       time.Duration // each storm client waits a random 0..Jitter before its first attempt
	Timeout      time.Duration // bound on the warm-up, and on the storm (clients not back by then give up)
	ServerPIDs   []int         // the server's processes (nil: every process listening on URL's port; [-1]: not measured)
	Progress     io.Writer     // progress lines (nil: none)
	Terminal     bool          // Progress is a terminal
}

// StormResult is what a storm run measured. Times are seconds from the
// trigger unless said otherwise.
type StormResult struct {
	URL             string  `json:"url"`
	Clients         int     `json:"storm_clients"`
	Residents       int     `json:"residents"`
	Processes       int     `json:"storm_client_processes"`
	Trigger         string  `json:"trigger"`
	JitterSeconds   float64 `json:"jitter_seconds"`
	EchoIntervalMs  float64 `json:"echo_interval_ms"`
	ServerPIDs      []int   `json:"server_pids,omitempty"`
	HostCPUs        int     `json:"host_cpus"`
	WarmupSeconds   float64 `json:"warmup_seconds"`
	WarmupRefused   int64   `json:"warmup_refused"` // warm-up opens refused (and retried after their Retry-After)
	BaselineSeconds float64 `json:"baseline_seconds"`
	StoppedBy       string  `json:"stopped_by"` // "all back", "timeout", "interrupted"

	Complete       bool     `json:"complete"` // every storm client is back
	Back           int64    `json:"back"`
	GaveUp         int64    `json:"gave_up"`          // not back when the storm ended
	AllBackSeconds *float64 `json:"all_back_seconds"` // the last 101 (null: not all back)
	Back50Seconds  float64  `json:"back_50_seconds"`  // half were back by then
	Back90Seconds  float64  `json:"back_90_seconds"`
	Back99Seconds  float64  `json:"back_99_seconds"`
	FinSeconds     float64  `json:"fin_seconds"`    // every old connection had sent its FIN
	ClosedSeconds  float64  `json:"closed_seconds"` // and had its descriptor released (its client may reconnect then)

	Attempts         int64            `json:"attempts"` // = back + refused + errors (+ attempts cut short by the end)
	Refused          int64            `json:"refused"`  // answered with a status and Retry-After (503, 429): retried after it
	Errors           int64            `json:"errors"`   // anything else: retried with backoff
	RefusalsByStatus map[string]int64 `json:"refusals_by_status,omitempty"`
	RetryAfterHints  map[string]int64 `json:"retry_after_hints_seconds,omitempty"`
	ErrorsByKind     map[string]int64 `json:"errors_by_kind,omitempty"`
	FirstError       string           `json:"first_error,omitempty"`
	MaxAttempts      int              `json:"max_attempts_per_client"`
	Handshake        LatencyFigures   `json:"handshake_ms"` // successful attempts: dial to the 101's last byte
	Refusal          LatencyFigures   `json:"refusal_ms"`   // refused attempts: dial to the refusal's last byte
	StormDropped     int64            `json:"storm_dropped"`
	ResidentDropped  int64            `json:"resident_dropped"`

	Echo         []EchoWindow `json:"echo"`        // the residents' echoes: before, during, after (and during split in two)
	EchoErrors   int64        `json:"echo_errors"` // error answers to echoes (RATE_LIMIT_EXCEEDED, …)
	EchoFirstErr string       `json:"echo_first_error,omitempty"`
	EchoSeries   []EchoPoint  `json:"echo_series"`        // by send time, every StepSeconds
	StepSeconds  float64      `json:"print_step_seconds"` // the period of EchoSeries and of the printed curve
	Curve        []StormPoint `json:"curve"`              // every 100 ms from the trigger

	StormSeconds     float64  `json:"storm_seconds"`      // trigger to the sample that saw every client back (or to the end)
	ServerCPUSeconds *float64 `json:"server_cpu_seconds"` // over StormSeconds, all server pids
	// The server's CPU seconds per second over the baseline (the
	// residents' echoes, pings): what it would have used without a storm.
	ServerBaselineCPU *float64 `json:"server_baseline_cpu_per_second"`
	ClientCPUSeconds  float64  `json:"client_cpu_seconds"` // the client processes and this one, over StormSeconds
	HostBusyPercent   float64  `json:"host_busy_percent"`  // the host's CPUs, over StormSeconds (/proc/stat: tick-sampled, rough under a light load)

	// The host's TCP counters (/proc/net/netstat TcpExt) grown over the
	// storm: ListenOverflows (a SYN or handshake ACK dropped for a full
	// accept queue), TCPSynRetrans, SyncookiesSent, …; host-wide.
	Kernel map[string]float64 `json:"kernel_tcp_counters"`

	ServerBefore []ServerCounters `json:"server_before,omitempty"` // per admin listener, just before the trigger
	ServerAfter  []ServerCounters `json:"server_after,omitempty"`  // and after the after-window
	TotalSeconds float64          `json:"total_seconds"`
}

// LatencyFigures are percentiles of a set of latencies, in ms.
type LatencyFigures struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// EchoWindow is the residents' echoes sent in one window.
type EchoWindow struct {
	Name       string  `json:"name"`
	Seconds    float64 `json:"seconds"`
	Sent       int64   `json:"sent"`
	Answered   int64   `json:"answered"`
	Unanswered int64   `json:"unanswered"` // no answer when the run ended
	P50Ms      float64 `json:"p50_ms"`
	P99Ms      float64 `json:"p99_ms"`
	MaxMs      float64 `json:"max_ms"`
}

// EchoPoint is the residents' echoes sent in [T, T+step) (T from the
// trigger; negative: before it).
type EchoPoint struct {
	T        float64 `json:"t"`
	Sent     int64   `json:"sent"`
	Answered int64   `json:"answered"`
	P50Ms    float64 `json:"p50_ms"`
	P99Ms    float64 `json:"p99_ms"`
	MaxMs    float64 `json:"max_ms"`
}

// StormPoint is one sample of the storm: the attempts that had ended by
// T (exact, from each attempt's end time) and the server's CPU time so far.
type StormPoint struct {
	T                float64 `json:"t"`
	Back             int64   `json:"back"`
	Attempts         int64   `json:"attempts"`
	Refused          int64   `json:"refused"`
	Errors           int64   `json:"errors"`
	ServerCPUSeconds float64 `json:"server_cpu_seconds"` // since the trigger
}

// ServerCounters are one admin listener's figures.
type ServerCounters struct {
	Admin      string   `json:"admin"`
	Open       *float64 `json:"connections_open"`
	Paced      *float64 `json:"rejected_paced"`       // wsd_admission_rejected_total{reason="paced"}
	Full       *float64 `json:"rejected_server_full"` // {reason="server_full"}
	CPUSeconds *float64 `json:"cpu_seconds"`
	Err        string   `json:"error,omitempty"`
}

// StormWorker is one client process of a storm run.
type StormWorker struct {
	Role         string        // "storm" or "resident"
	URL          string        //
	N            int           // clients
	Source       net.IP        // client k warms up from Source + k/10000 and reconnects from Source + SourcesFor(N) + k/10000
	Concurrency  int           // warm-up dials in flight
	WarmupRate   float64       // warm-up opens per second (0: no pacing)
	Loops        int           // storm: event loops holding the connections
	Jitter       time.Duration // storm: random wait before the first reconnect attempt
	EchoInterval time.Duration // resident: one echo per interval per client
}

// stormReport is a client process's line on its stdout: progress every
// 100 ms, and once, when asked, its final figures.
type stormReport struct {
	Connected     int64          `json:"connected"`
	WarmupRefused int64          `json:"warmup_refused,omitempty"`
	Ready         bool           `json:"ready"`
	Back          int64          `json:"back,omitempty"`
	Attempts      int64          `json:"attempts,omitempty"`
	Refused       int64          `json:"refused,omitempty"`
	Errors        int64          `json:"errors,omitempty"`
	Dropped       int64          `json:"dropped,omitempty"`
	EchoAnswered  int64          `json:"echo_answered,omitempty"`
	Err           string         `json:"err,omitempty"`
	Final         *stormFinal    `json:"final,omitempty"`
	Echo          *residentFinal `json:"echo,omitempty"`
}

// stormFinal is a storm client process's figures.
type stormFinal struct {
	BackUs      []int64          `json:"back_us"`       // per client back: µs from the trigger to its 101
	HandshakeUs []int64          `json:"handshake_us"`  // successful attempts
	RefusalUs   []int64          `json:"refusal_us"`    // refused attempts
	RefusedAtUs []int64          `json:"refused_at_us"` // µs from the trigger to each refusal
	ErrorAtUs   []int64          `json:"error_at_us"`   // and to each failed attempt's end
	Refusals    map[string]int64 `json:"refusals"`      // by status
	RetryAfter  map[string]int64 `json:"retry_after"`   // the hints, by seconds
	Errors      map[string]int64 `json:"errors"`        // by kind
	FirstError  string           `json:"first_error"`
	Attempts    int64            `json:"attempts"`
	MaxAttempts int              `json:"max_attempts"`
	GaveUp      int64            `json:"gave_up"`
	FinUs       int64            `json:"fin_us"`    // every old connection's FIN sent
	ClosedUs    int64            `json:"closed_us"` // every old connection's descriptor released
}

// residentFinal is the resident process's figures.
type residentFinal struct {
	Windows  []EchoWindow `json:"windows"`
	Series   []EchoPoint  `json:"series"`
	Errors   int64        `json:"errors"`
	FirstErr string       `json:"first_error,omitempty"`
}

// stormCommand is what the coordinator tells a client process.
type stormCommand struct {
	Trigger int64         `json:"trigger,omitempty"` // storm: drop and reconnect; the trigger's Unix ns
	Stop    bool          `json:"stop,omitempty"`    // storm: stop reconnecting and report
	Windows []stormWindow `json:"windows,omitempty"` // resident: report these windows and the series
	Series  *stormSeries  `json:"series,omitempty"`
}

type stormWindow struct {
	Name     string `json:"name"`
	From, To int64  // Unix ns
}

type stormSeries struct {
	T0, From, To, Step int64 // Unix ns: buckets [From + i·Step, +Step) up to To, labelled from T0
}

// SourcesFor is how many source addresses n connections need (10,000 to
// an address).
func SourcesFor(n int) int { return max(1, (n+connsPerSource-1)/connsPerSource) }

// stormProc is the coordinator's handle on one client process.
type stormProc struct {
	role   string
	n      int
	source net.IP
	pid    int
	stdin  io.WriteCloser
	final  chan stormReport // the report with Final or Echo
	exited chan struct{}

	mu   sync.Mutex
	last stormReport
	err  error
}

func (p *stormProc) report() (stormReport, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last, p.err
}

func (p *stormProc) send(c stormCommand) {
	b, _ := json.Marshal(c)
	_, _ = p.stdin.Write(append(b, '\n'))
}

func (p *stormProc) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 256<<20)
	for sc.Scan() {
		var rep stormReport
		if json.Unmarshal(sc.Bytes(), &rep) != nil {
			continue
		}
		if rep.Final != nil || rep.Echo != nil {
			select {
			case p.final <- rep:
			default:
			}
			continue
		}
		p.mu.Lock()
		p.last = rep
		if rep.Err != "" && p.err == nil {
			p.err = fmt.Errorf("%s client process (from %s): %s", p.role, p.source, rep.Err)
		}
		p.mu.Unlock()
	}
}

// stormRun is the coordinator's state.
type stormRun struct {
	o         StormOptions
	pids      []int
	self      string
	residents *stormProc
	storm     []*stormProc
	pl        progressLine
	r         *StormResult
}

// RunStorm runs the measurement against running servers. The resident
// process dials from Source (and the next addresses, 10,000 clients to
// each); storm process i from the addresses after those, 2 × SourcesFor(
// PerProcess) each: the first half for the warm-up, the second for the
// reconnects, so TIME_WAIT sockets of the warm-up never limit the ports.
func RunStorm(parent context.Context, o StormOptions) (*StormResult, error) {
	u, err := url.Parse(o.URL)
	if err != nil || u.Scheme != "ws" || u.Host == "" {
		return nil, fmt.Errorf("bad -url %q: want ws://host:port/path", o.URL)
	}
	switch {
	case o.N < 1 || o.Resident < 0 || o.PerProcess < 1 || o.Concurrency < 1 || o.Loops < 1:
		return nil, errors.New("-n, -per-process, -concurrency and -loops must be positive, -resident not negative")
	case o.PerProcess > 19000 || o.Resident > 19000:
		return nil, errors.New("-per-process and -resident: at most 19,000 (one client process holds them, one file descriptor each)")
	case o.Resident > 0 && o.EchoInterval <= 0:
		return nil, errors.New("-echo-interval must be positive")
	case o.Trigger != TriggerClose:
		return nil, fmt.Errorf("-trigger %q: only %q is supported", o.Trigger, TriggerClose)
	case o.Jitter < 0 || o.Baseline < 0 || o.After < 0 || o.WarmupRate < 0:
		return nil, errors.New("-jitter, -baseline, -after and -warmup-rate must not be negative")
	case o.Timeout <= 0:
		return nil, errors.New("-timeout must be positive")
	case !isLoopback(u.Hostname()):
		return nil, fmt.Errorf("-url %s: a storm run drives only a server on this host (127.0.0.0/8)", u.Host)
	case o.Source == nil || o.Source.To4() == nil || !o.Source.IsLoopback():
		return nil, errors.New("-source must be a 127.0.0.0/8 address")
	}
	for _, a := range o.Admins {
		au, err := url.Parse(a)
		if err != nil || au.Host == "" || !isLoopback(au.Hostname()) {
			return nil, fmt.Errorf("-admin %q: want http://127.x.x.x:port", a)
		}
	}
	pids, err := stormServerPIDs(o.ServerPIDs, u)
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	began := time.Now()
	ctx, cancel := context.WithCancel(context.Background()) // the workers outlive a Ctrl-C until they have reported
	defer cancel()
	s := &stormRun{o: o, pids: pids, self: self, pl: progressLine{o.Progress, o.Terminal}}
	s.r = &StormResult{URL: o.URL, Clients: o.N, Residents: o.Resident, Trigger: o.Trigger,
		JitterSeconds: o.Jitter.Seconds(), EchoIntervalMs: float64(o.EchoInterval) / 1e6, ServerPIDs: pids,
		HostCPUs: hostCPUs(), BaselineSeconds: o.Baseline.Seconds()}
	if len(pids) == 0 {
		s.r.ServerPIDs = nil
	}
	defer s.stopProcs()

	// Warm-up: the residents first, then the storm clients.
	if o.Resident > 0 {
		p, err := s.start(ctx, "resident", o.Resident, o.Source, o.WarmupRate)
		if err != nil {
			return nil, err
		}
		s.residents = p
		if err := s.warmup(parent, began, []*stormProc{p}, "residents"); err != nil {
			return nil, err
		}
	}
	procs := (o.N + o.PerProcess - 1) / o.PerProcess
	s.r.Processes = procs
	first := addIP(o.Source, SourcesFor(o.Resident))
	for i := range procs {
		n := min(o.PerProcess, o.N-i*o.PerProcess)
		p, err := s.start(ctx, "storm", n, addIP(first, i*2*SourcesFor(o.PerProcess)), o.WarmupRate/float64(procs))
		if err != nil {
			return nil, err
		}
		s.storm = append(s.storm, p)
	}
	if err := s.warmup(parent, began, s.storm, "storm clients"); err != nil {
		return nil, err
	}
	s.r.WarmupSeconds = time.Since(began).Seconds()
	for _, p := range s.storm {
		rep, _ := p.report()
		s.r.WarmupRefused += rep.WarmupRefused
	}
	if s.residents != nil {
		rep, _ := s.residents.report()
		s.r.WarmupRefused += rep.WarmupRefused
	}

	// Baseline: the residents echo; nothing else happens.
	b0 := time.Now()
	bcpu := sumCPU(pids)
	if err := s.wait(parent, o.Baseline, "baseline"); err != nil {
		return nil, err
	}
	if len(pids) > 0 && o.Baseline > 0 {
		v := (sumCPU(pids) - bcpu) / time.Since(b0).Seconds()
		s.r.ServerBaselineCPU = &v
	}
	s.r.ServerBefore = s.scrapeAdmins()

	t0, t1, err := s.stormPhase(parent)
	if err != nil {
		return s.r, err
	}
	if o.After > 0 && parent.Err() == nil {
		if err := s.wait(parent, o.After, "after"); err != nil && parent.Err() == nil {
			return s.r, err
		}
	}
	s.r.ServerAfter = s.scrapeAdmins()
	if err := s.collect(t0); err != nil {
		return s.r, err
	}
	if s.residents != nil {
		if err := s.collectEcho(b0, t0, t1); err != nil {
			return s.r, err
		}
	}
	s.r.TotalSeconds = time.Since(began).Seconds()
	return s.r, nil
}

// isLoopback reports whether host is a 127.0.0.0/8 address or localhost.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.To4() != nil && ip.IsLoopback()
}

// stormServerPIDs returns the processes to measure: as given ([-1]: none),
// or every process listening on u's port (several wsd processes may share
// it with SO_REUSEPORT).
func stormServerPIDs(given []int, u *url.URL) ([]int, error) {
	if len(given) == 1 && given[0] == -1 {
		return nil, nil
	}
	pids := given
	if len(pids) == 0 {
		port, _ := strconv.Atoi(u.Port())
		if port == 0 {
			return nil, fmt.Errorf("-url %q has no port: give -server-pids", u)
		}
		var err error
		if pids, err = ListenerPIDs(port); err != nil {
			return nil, fmt.Errorf("finding the server's processes: %w (give -server-pids)", err)
		}
	}
	for _, pid := range pids {
		if _, err := ProcCPUSeconds(pid); err != nil {
			return nil, fmt.Errorf("reading server process %d's CPU time: %w", pid, err)
		}
	}
	return pids, nil
}

// start starts one client process (this binary's "storm-worker" command).
func (s *stormRun) start(ctx context.Context, role string, n int, source net.IP, rate float64) (*stormProc, error) {
	o := s.o
	p := &stormProc{role: role, n: n, source: source, final: make(chan stormReport, 1), exited: make(chan struct{})}
	cmd := exec.CommandContext(ctx, s.self, "storm-worker",
		"-role", role, "-url", o.URL, "-n", strconv.Itoa(n), "-source", source.String(),
		"-concurrency", strconv.Itoa(o.Concurrency), "-warmup-rate", strconv.FormatFloat(rate, 'g', -1, 64),
		"-loops", strconv.Itoa(o.Loops), "-jitter", o.Jitter.String(), "-echo-interval", o.EchoInterval.String())
	cmd.Stderr = os.Stderr
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start a %s client process: %w", role, err)
	}
	p.pid = cmd.Process.Pid
	readDone := make(chan struct{})
	go func() { p.read(out); close(readDone) }()
	go func() {
		<-readDone
		err := cmd.Wait()
		if err == nil {
			err = errors.New("exit status 0")
		}
		p.mu.Lock()
		if p.err == nil {
			p.err = fmt.Errorf("%s client process (from %s) exited: %w", role, source, err)
		}
		p.mu.Unlock()
		close(p.exited)
	}()
	return p, nil
}

// stopProcs closes the client processes' stdin (they close their
// connections and exit) and waits for them, at most 15 s in all (then the
// run's context kills them).
func (s *stormRun) stopProcs() {
	all := s.storm
	if s.residents != nil {
		all = append([]*stormProc{s.residents}, all...)
	}
	for _, p := range all {
		p.stdin.Close()
	}
	deadline := time.After(15 * time.Second)
	for _, p := range all {
		select {
		case <-p.exited:
		case <-deadline:
			return
		}
	}
}

// procErr is the first failure of a client process.
func procErr(procs []*stormProc) error {
	for _, p := range procs {
		if _, err := p.report(); err != nil {
			return err
		}
	}
	return nil
}

func (s *stormRun) allProcs() []*stormProc {
	if s.residents == nil {
		return s.storm
	}
	return append([]*stormProc{s.residents}, s.storm...)
}

// progressEvery is how often a progress line is written: rewritten in
// place on a terminal, a line a second otherwise.
func (s *stormRun) progressEvery() time.Duration {
	if s.o.Terminal {
		return 100 * time.Millisecond
	}
	return time.Second
}

// warmup waits until every client of procs is connected.
func (s *stormRun) warmup(parent context.Context, began time.Time, procs []*stormProc, what string) error {
	want := 0
	for _, p := range procs {
		want += p.n
	}
	deadline := time.Now().Add(s.o.Timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last time.Time
	for {
		var conn, refused int64
		ready := 0
		for _, p := range procs {
			rep, _ := p.report()
			conn += rep.Connected
			refused += rep.WarmupRefused
			if rep.Ready {
				ready++
			}
		}
		line := fmt.Sprintf("warm-up %6.1fs  %s %d/%d  refused %d", time.Since(began).Seconds(), what, conn, want, refused)
		if err := procErr(procs); err != nil {
			s.pl.endProgress()
			return err
		}
		if ready == len(procs) {
			s.pl.progress(line)
			s.pl.endProgress()
			return nil
		}
		if time.Since(last) >= s.progressEvery() {
			last = time.Now()
			s.pl.progress(line)
		}
		if time.Now().After(deadline) {
			s.pl.endProgress()
			return fmt.Errorf("warm-up: only %d of %d %s connected after %v", conn, want, what, s.o.Timeout)
		}
		select {
		case <-parent.Done():
			s.pl.endProgress()
			return fmt.Errorf("warm-up: %w", parent.Err())
		case <-tick.C:
		}
	}
}

// wait waits d, failing if a client process fails meanwhile.
func (s *stormRun) wait(parent context.Context, d time.Duration, phase string) error {
	start := time.Now()
	end := time.After(d)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last time.Time
	for {
		select {
		case <-end:
			s.pl.endProgress()
			return nil
		case <-parent.Done():
			s.pl.endProgress()
			return fmt.Errorf("%s: %w", phase, parent.Err())
		case <-tick.C:
			if err := procErr(s.allProcs()); err != nil {
				s.pl.endProgress()
				return err
			}
			if time.Since(last) >= s.progressEvery() {
				last = time.Now()
				line := fmt.Sprintf("%-8s %5.1fs", phase, time.Since(start).Seconds())
				if s.residents != nil {
					rep, _ := s.residents.report()
					line += fmt.Sprintf("  echoes answered %d  residents dropped %d", rep.EchoAnswered, rep.Dropped)
				}
				s.pl.progress(line)
			}
		}
	}
}

// scrapeAdmins reads each admin listener's counters.
func (s *stormRun) scrapeAdmins() []ServerCounters {
	var out []ServerCounters
	for _, a := range s.o.Admins {
		c := ServerCounters{Admin: a}
		m, err := ScrapeMetrics(context.Background(), a, 3*time.Second)
		if err != nil {
			c.Err = err.Error()
		} else {
			c.Open = m.Get("wsd_connections_open")
			c.Paced = m.Get(`wsd_admission_rejected_total{reason="paced"}`)
			c.Full = m.Get(`wsd_admission_rejected_total{reason="server_full"}`)
			c.CPUSeconds = m.Get("process_cpu_seconds_total")
		}
		out = append(out, c)
	}
	return out
}

// stormTotals sums the storm processes' progress.
func (s *stormRun) stormTotals() (t stormReport) {
	for _, p := range s.storm {
		rep, _ := p.report()
		t.Back += rep.Back
		t.Attempts += rep.Attempts
		t.Refused += rep.Refused
		t.Errors += rep.Errors
		t.Dropped += rep.Dropped
	}
	return t
}

func (s *stormRun) clientPIDs() []int {
	pids := []int{os.Getpid()}
	for _, p := range s.allProcs() {
		pids = append(pids, p.pid)
	}
	return pids
}

// stormPhase triggers the storm and samples it every 100 ms until every
// storm client is back, the timeout, or an interrupt. It returns the
// trigger's time and the end of the storm as measured (the last client
// back, or the end).
func (s *stormRun) stormPhase(parent context.Context) (t0, t1 time.Time, err error) {
	o := s.o
	kern0 := tcpExtCounters()
	cpu0 := sumCPU(s.pids)
	self0 := sumCPU(s.clientPIDs())
	host0 := readHostCPU()
	t0 = time.Now()
	for _, p := range s.storm {
		p.send(stormCommand{Trigger: t0.UnixNano()})
	}
	deadline := time.NewTimer(o.Timeout)
	defer deadline.Stop()
	tick := time.NewTicker(stormCurveStep)
	defer tick.Stop()
	var last time.Time
	end := func(stoppedBy string) {
		s.r.StoppedBy = stoppedBy
		t1 = time.Now()
		s.r.StormSeconds = t1.Sub(t0).Seconds()
		if len(s.pids) > 0 {
			v := sumCPU(s.pids) - cpu0
			s.r.ServerCPUSeconds = &v
		}
		s.r.ClientCPUSeconds = sumCPU(s.clientPIDs()) - self0
		s.r.Kernel = map[string]float64{}
		for k, v := range tcpExtCounters() {
			s.r.Kernel[k] = v - kern0[k]
		}
		h := readHostCPU()
		if h.total > host0.total {
			s.r.HostBusyPercent = 100 * (h.busy - host0.busy) / (h.total - host0.total)
		}
	}
	for {
		select {
		case <-parent.Done():
			end("interrupted")
			s.pl.endProgress()
			return t0, t1, nil
		case <-deadline.C:
			end("timeout")
			s.pl.endProgress()
			return t0, t1, nil
		case <-tick.C:
		}
		t := s.stormTotals()
		now := time.Now()
		pt := StormPoint{T: now.Sub(t0).Seconds(), Back: t.Back, Attempts: t.Attempts, Refused: t.Refused, Errors: t.Errors}
		if len(s.pids) > 0 {
			pt.ServerCPUSeconds = sumCPU(s.pids) - cpu0
		}
		s.r.Curve = append(s.r.Curve, pt)
		if err := procErr(s.allProcs()); err != nil {
			end("a client process failed")
			s.pl.endProgress()
			return t0, t1, err
		}
		if time.Since(last) >= s.progressEvery() || t.Back == int64(o.N) {
			last = now
			cpu := ""
			if len(s.curveCPU()) > 0 {
				cpu = fmt.Sprintf("  server CPU %.0f%%", s.curveCPU()[len(s.curveCPU())-1])
			}
			s.pl.progress(fmt.Sprintf("storm    %5.1fs  back %d/%d  attempts %d  refused %d  errors %d%s",
				pt.T, t.Back, o.N, t.Attempts, t.Refused, t.Errors, cpu))
		}
		if t.Back == int64(o.N) {
			end("all back")
			s.pl.endProgress()
			return t0, t1, nil
		}
	}
}

// tcpExtCounters reads the host's TCP counters that tell of a storm's
// dropped handshakes from /proc/net/netstat.
func tcpExtCounters() map[string]float64 {
	m := map[string]float64{}
	b, err := os.ReadFile("/proc/net/netstat")
	if err != nil {
		return m
	}
	lines := strings.Split(string(b), "\n")
	for i := 0; i+1 < len(lines); i++ {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) == 0 || names[0] != "TcpExt:" || len(values) != len(names) || values[0] != "TcpExt:" {
			continue
		}
		for j, n := range names[1:] {
			switch n {
			case "ListenOverflows", "ListenDrops", "TCPSynRetrans", "SyncookiesSent", "TCPReqQFullDrop", "TCPReqQFullDoCookies", "TCPTimeouts":
				m[n], _ = strconv.ParseFloat(values[j+1], 64)
			}
		}
		break
	}
	return m
}

// curveCPU is the server's CPU use between consecutive curve samples, in
// percent of one core.
func (s *stormRun) curveCPU() []float64 {
	if len(s.pids) == 0 {
		return nil
	}
	var out []float64
	prevT, prevC := 0.0, 0.0
	for _, p := range s.r.Curve {
		if p.T > prevT {
			out = append(out, 100*(p.ServerCPUSeconds-prevC)/(p.T-prevT))
		}
		prevT, prevC = p.T, p.ServerCPUSeconds
	}
	return out
}

// collect asks every storm process for its figures and merges them.
func (s *stormRun) collect(t0 time.Time) error {
	for _, p := range s.storm {
		p.send(stormCommand{Stop: true})
	}
	r := s.r
	r.RefusalsByStatus, r.RetryAfterHints, r.ErrorsByKind = map[string]int64{}, map[string]int64{}, map[string]int64{}
	var back, hs, ref, refAt, errAt []int64
	deadline := time.After(30 * time.Second)
	for _, p := range s.storm {
		var rep stormReport
		select {
		case rep = <-p.final:
		case <-p.exited:
			_, err := p.report()
			return err
		case <-deadline:
			return fmt.Errorf("a storm client process (from %s) did not report within 30 s", p.source)
		}
		f := rep.Final
		back = append(back, f.BackUs...)
		hs = append(hs, f.HandshakeUs...)
		ref = append(ref, f.RefusalUs...)
		refAt = append(refAt, f.RefusedAtUs...)
		errAt = append(errAt, f.ErrorAtUs...)
		for k, v := range f.Refusals {
			r.RefusalsByStatus[k] += v
			r.Refused += v
		}
		for k, v := range f.RetryAfter {
			r.RetryAfterHints[k] += v
		}
		for k, v := range f.Errors {
			r.ErrorsByKind[k] += v
			r.Errors += v
		}
		if r.FirstError == "" {
			r.FirstError = f.FirstError
		}
		r.Attempts += f.Attempts
		r.GaveUp += f.GaveUp
		r.MaxAttempts = max(r.MaxAttempts, f.MaxAttempts)
		r.ClosedSeconds = max(r.ClosedSeconds, float64(f.ClosedUs)/1e6)
		r.FinSeconds = max(r.FinSeconds, float64(f.FinUs)/1e6)
		r.StormDropped += rep.Dropped
	}
	if s.residents != nil {
		rep, _ := s.residents.report()
		r.ResidentDropped = rep.Dropped
	}
	slices.Sort(back)
	r.Back = int64(len(back))
	r.Complete = r.Back == int64(r.Clients)
	if len(back) > 0 {
		sec := func(p float64) float64 { return float64(percentileInt(back, p)) / 1e6 }
		r.Back50Seconds, r.Back90Seconds, r.Back99Seconds = sec(50), sec(90), sec(99)
		if r.Complete {
			v := float64(back[len(back)-1]) / 1e6
			r.AllBackSeconds = &v
		}
	}
	r.Handshake, r.Refusal = latencyFiguresUs(hs), latencyFiguresUs(ref)
	// The curve's counts are exact: attempts ended by each sample's time.
	slices.Sort(refAt)
	slices.Sort(errAt)
	upTo := func(sorted []int64, us int64) int64 {
		return int64(sort.Search(len(sorted), func(j int) bool { return sorted[j] > us }))
	}
	for i := range r.Curve {
		p := &r.Curve[i]
		us := int64(p.T * 1e6)
		p.Back, p.Refused, p.Errors = upTo(back, us), upTo(refAt, us), upTo(errAt, us)
		p.Attempts = p.Back + p.Refused + p.Errors
	}
	return nil
}

// percentileInt is the nearest-rank p-th percentile of sorted values.
func percentileInt(sorted []int64, p float64) int64 {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[ceilRank(p, len(sorted))-1]
}

// latencyFiguresUs sorts µs values and returns their percentiles in ms.
func latencyFiguresUs(us []int64) LatencyFigures {
	slices.Sort(us)
	if len(us) == 0 {
		return LatencyFigures{}
	}
	ms := func(v int64) float64 { return float64(v) / 1e3 }
	return LatencyFigures{N: len(us), P50: ms(percentileInt(us, 50)), P99: ms(percentileInt(us, 99)), Max: ms(us[len(us)-1])}
}

// printStep picks the period of the printed curve: at most about 12 lines
// over span seconds.
func printStep(span float64) time.Duration {
	for _, s := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 250 * time.Millisecond,
		500 * time.Millisecond, time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 15 * time.Second, 30 * time.Second} {
		if span/s.Seconds() <= 12 {
			return s
		}
	}
	return time.Minute
}

// collectEcho asks the resident process for its echo figures: before the
// trigger (from b0), during the storm (to the last client back, t1), and
// after it; and a series over all of it.
func (s *stormRun) collectEcho(b0, t0, t1 time.Time) error {
	o := s.o
	span := t1.Sub(t0)
	if s.r.AllBackSeconds != nil {
		span = time.Duration(*s.r.AllBackSeconds * float64(time.Second))
		t1 = t0.Add(span)
	}
	step := printStep(span.Seconds())
	s.r.StepSeconds = step.Seconds()
	windows := []stormWindow{{"before", b0.UnixNano(), t0.UnixNano()}, {"during", t0.UnixNano(), t1.UnixNano()}}
	if o.After > 0 {
		windows = append(windows, stormWindow{"after", t1.UnixNano(), t1.Add(o.After).UnixNano()})
	}
	if o.Split > 0 && o.Split < span {
		ts := t0.Add(o.Split)
		windows = append(windows, stormWindow{"during, to " + o.Split.String(), t0.UnixNano(), ts.UnixNano()},
			stormWindow{"during, from " + o.Split.String(), ts.UnixNano(), t1.UnixNano()})
	}
	nb := int64(t0.Sub(b0) / step)
	ser := &stormSeries{T0: t0.UnixNano(), From: t0.UnixNano() - nb*int64(step), To: t1.Add(o.After).UnixNano(), Step: int64(step)}
	s.residents.send(stormCommand{Windows: windows, Series: ser})
	select {
	case rep := <-s.residents.final:
		s.r.Echo, s.r.EchoSeries = rep.Echo.Windows, rep.Echo.Series
		s.r.EchoErrors, s.r.EchoFirstErr = rep.Echo.Errors, rep.Echo.FirstErr
		return nil
	case <-s.residents.exited:
		_, err := s.residents.report()
		return err
	case <-time.After(30 * time.Second):
		return errors.New("the resident client process did not report within 30 s")
	}
}

// Print writes the result: the set-up, the storm's figures, the residents'
// echoes, the server's, and the curve.
func (r *StormResult) Print(w io.Writer) {
	pids := "not measured"
	if len(r.ServerPIDs) > 0 {
		var ps []string
		for _, p := range r.ServerPIDs {
			ps = append(ps, strconv.Itoa(p))
		}
		pids = strings.Join(ps, ",")
	}
	fmt.Fprintf(w, "storm  %d clients (%d processes) + %d residents to %s; trigger %s; jitter %v; server pids %s; %d CPUs (clients and server share them)\n",
		r.Clients, r.Processes, r.Residents, r.URL, r.Trigger, time.Duration(r.JitterSeconds*1e9), pids, r.HostCPUs)
	fmt.Fprintf(w, "%-24s %.1f s (%d refused and retried)\n", "warm-up", r.WarmupSeconds, r.WarmupRefused)
	all := "NOT ALL BACK"
	if r.AllBackSeconds != nil {
		all = fmt.Sprintf("%.2f s", *r.AllBackSeconds)
	}
	fmt.Fprintf(w, "%-24s %s: %d/%d back (50%% by %.2f s, 90%% by %.2f s, 99%% by %.2f s); %d gave up; ended by %s\n",
		"all back after", all, r.Back, r.Clients, r.Back50Seconds, r.Back90Seconds, r.Back99Seconds, r.GaveUp, r.StoppedBy)
	fmt.Fprintf(w, "%-24s FIN sent on all by %.3f s, all released by %.3f s after the trigger\n", "old connections", r.FinSeconds, r.ClosedSeconds)
	fmt.Fprintf(w, "%-24s %d: %d succeeded, %d refused (%s), %d errors (%s); at most %d by one client\n", "attempts",
		r.Attempts, r.Back, r.Refused, sortedCounts(r.RefusalsByStatus), r.Errors, sortedCounts(r.ErrorsByKind), r.MaxAttempts)
	if len(r.RetryAfterHints) > 0 {
		fmt.Fprintf(w, "%-24s %s\n", "Retry-After hints (s)", sortedCounts(r.RetryAfterHints))
	}
	if r.FirstError != "" {
		fmt.Fprintf(w, "%-24s %s\n", "first error", r.FirstError)
	}
	lat := func(name string, l LatencyFigures) {
		if l.N == 0 {
			fmt.Fprintf(w, "%-24s none\n", name)
			return
		}
		fmt.Fprintf(w, "%-24s p50 %.2f ms  p99 %.2f ms  max %.2f ms  (%d)\n", name, l.P50, l.P99, l.Max, l.N)
	}
	lat("handshake (succeeded)", r.Handshake)
	lat("refused (to answer)", r.Refusal)
	for _, e := range r.Echo {
		fmt.Fprintf(w, "%-24s p50 %.2f ms  p99 %.2f ms  max %.2f ms  (%d sent over %.2f s, %d answered, %d unanswered)\n",
			"echo "+e.Name, e.P50Ms, e.P99Ms, e.MaxMs, e.Sent, e.Seconds, e.Answered, e.Unanswered)
	}
	if r.Residents > 0 {
		fmt.Fprintf(w, "%-24s residents %d, storm clients after reconnecting %d; echo error answers %d %s\n", "dropped by the server",
			r.ResidentDropped, r.StormDropped, r.EchoErrors, r.EchoFirstErr)
	}
	if r.ServerCPUSeconds != nil {
		base := ""
		if b := r.ServerBaselineCPU; b != nil {
			base = fmt.Sprintf("; %.0f%% before the storm, so the storm's own: about %.2f s", 100**b, *r.ServerCPUSeconds-*b*r.StormSeconds)
		}
		fmt.Fprintf(w, "%-24s %.2f s over the storm's %.2f s (%.0f%% of one core%s)\n", "server CPU",
			*r.ServerCPUSeconds, r.StormSeconds, 100**r.ServerCPUSeconds/max(r.StormSeconds, 1e-9), base)
	}
	fmt.Fprintf(w, "%-24s client processes %.2f s; the host's CPUs %.0f%% busy over the storm (/proc/stat)\n", "",
		r.ClientCPUSeconds, r.HostBusyPercent)
	if len(r.Kernel) > 0 {
		fmt.Fprintf(w, "%-24s accept queue overflows %.0f, SYNs retransmitted %.0f, SYN cookies sent %.0f, retransmit timeouts %.0f\n",
			"kernel (host-wide)", r.Kernel["ListenOverflows"], r.Kernel["TCPSynRetrans"], r.Kernel["SyncookiesSent"], r.Kernel["TCPTimeouts"])
	}
	for i, a := range r.ServerAfter {
		if a.Err != "" {
			fmt.Fprintf(w, "%-24s %s: %s\n", "server", a.Admin, a.Err)
			continue
		}
		var b ServerCounters
		if i < len(r.ServerBefore) {
			b = r.ServerBefore[i]
		}
		fmt.Fprintf(w, "%-24s %s: open %s -> %s; paced refusals +%s; full refusals +%s\n", "server", a.Admin,
			fmtOpt(b.Open), fmtOpt(a.Open), diffOpt(a.Paced, b.Paced), diffOpt(a.Full, b.Full))
	}
	if len(r.Curve) == 0 {
		return
	}
	fmt.Fprintf(w, "%7s %8s %9s %8s %7s %11s %13s\n", "t s", "back", "attempts", "refused", "errors", "server CPU%", "echo p99 ms")
	step := r.StepSeconds
	if step <= 0 {
		step = 1
	}
	cpu := 0.0
	prevT := 0.0
	next := step
	for i, p := range r.Curve {
		last := i == len(r.Curve)-1
		if p.T+1e-9 < next && !last {
			continue
		}
		cpuPct := "-"
		if r.ServerCPUSeconds != nil && p.T > prevT {
			cpuPct = fmt.Sprintf("%.0f", 100*(p.ServerCPUSeconds-cpu)/(p.T-prevT))
		}
		echo := "-"
		for _, e := range r.EchoSeries {
			if e.T <= p.T-step/2 && p.T-step/2 < e.T+step && e.Answered > 0 {
				echo = fmt.Sprintf("%.1f", e.P99Ms)
			}
		}
		fmt.Fprintf(w, "%7.2f %8d %9d %8d %7d %11s %13s\n", p.T, p.Back, p.Attempts, p.Refused, p.Errors, cpuPct, echo)
		cpu, prevT = p.ServerCPUSeconds, p.T
		for next <= p.T+1e-9 {
			next += step
		}
	}
}

func sortedCounts(m map[string]int64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		x, errx := strconv.Atoi(a)
		y, erry := strconv.Atoi(b)
		if errx != nil || erry != nil {
			return strings.Compare(a, b)
		}
		return x - y
	})
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s: %d", k, m[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func fmtOpt(v *float64) string {
	if v == nil {
		return "n/a"
	}
	return strconv.FormatFloat(*v, 'f', 0, 64)
}

func diffOpt(a, b *float64) string {
	if a == nil || b == nil {
		return "n/a"
	}
	return strconv.FormatFloat(*a-*b, 'f', 0, 64)
}

// ---- the client processes ----

// RunStormWorkerArgs parses a storm-worker command line and runs it; it
// ends when in closes (not on a signal: the coordinator asks for the
// figures first).
func RunStormWorkerArgs(args []string, out io.Writer, in io.Reader) error {
	fs := flag.NewFlagSet("wsbench storm-worker", flag.ContinueOnError)
	var w StormWorker
	var source string
	fs.StringVar(&w.Role, "role", "", "")
	fs.StringVar(&w.URL, "url", "", "")
	fs.IntVar(&w.N, "n", 0, "")
	fs.StringVar(&source, "source", "", "")
	fs.IntVar(&w.Concurrency, "concurrency", 64, "")
	fs.Float64Var(&w.WarmupRate, "warmup-rate", 0, "")
	fs.IntVar(&w.Loops, "loops", 1, "")
	fs.DurationVar(&w.Jitter, "jitter", 0, "")
	fs.DurationVar(&w.EchoInterval, "echo-interval", 100*time.Millisecond, "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	w.Source = net.ParseIP(source)
	return RunStormWorker(w, out, in)
}

// stormOut writes a process's reports, one JSON line each.
type stormOut struct {
	mu sync.Mutex
	w  io.Writer
}

func (o *stormOut) write(r stormReport) {
	b, _ := json.Marshal(r)
	o.mu.Lock()
	defer o.mu.Unlock()
	_, _ = o.w.Write(append(b, '\n'))
}

// RunStormWorker is one client process of a storm run: it connects N
// clients, reports every 100 ms on out, and acts on the commands on in;
// it returns when in closes.
func RunStormWorker(w StormWorker, out io.Writer, in io.Reader) error {
	u, err := url.Parse(w.URL)
	if err != nil || u.Host == "" || w.N < 1 || w.Concurrency < 1 || w.Source.To4() == nil {
		return errors.New("bad storm-worker parameters")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	t := &connectTarget{host: u.Host, path: u.RequestURI()}
	so := &stormOut{w: out}
	cmds := make(chan stormCommand, 4)
	eof := make(chan struct{})
	go func() {
		defer close(eof)
		sc := bufio.NewScanner(in)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			var c stormCommand
			if json.Unmarshal(sc.Bytes(), &c) == nil {
				cmds <- c
			}
		}
	}()
	switch w.Role {
	case "storm":
		return runStormClients(ctx, w, t, so, cmds, eof)
	case "resident":
		return runResidents(ctx, w, t, so, cmds, eof)
	}
	return fmt.Errorf("storm-worker: unknown role %q", w.Role)
}

// warmupOpen opens client k of a warm-up, no sooner than its turn at
// rate, retrying after a refusal's Retry-After.
func warmupOpen(ctx context.Context, t *connectTarget, src net.IP, k int, start time.Time, rate float64, refused *atomic.Int64) (*net.TCPConn, error) {
	if rate > 0 {
		if !sleepCtx(ctx, time.Until(start.Add(time.Duration(float64(k)/rate*float64(time.Second))))) {
			return nil, ctx.Err()
		}
	}
	for {
		c, err := t.open(ctx, src, k)
		if re, ok := errors.AsType[*RefusedError](err); ok && re.RetryAfter > 0 {
			refused.Add(1)
			if !sleepCtx(ctx, re.RetryAfter+rand.N(stormRetrySpread)) {
				return nil, ctx.Err()
			}
			continue
		}
		return c, err
	}
}

// sleepCtx sleeps d; false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// stormConn is a storm client's connection as its event loop knows it.
type stormConn struct {
	ours   atomic.Bool   // we close it: not a drop
	closed chan struct{} // closed by OnClose
	gc     gnet.Conn
}

// stormHandler keeps the storm clients' connections alive (idleHandler's
// traffic handling) and tells each client when its connection has closed.
type stormHandler struct {
	idleHandler
	dropped  atomic.Int64
	stopping atomic.Bool
	fds      fdBudget
}

func (h *stormHandler) OnClose(c gnet.Conn, err error) gnet.Action {
	if sc, ok := c.Context().(*stormConn); ok {
		if !sc.ours.Load() && !h.stopping.Load() {
			h.dropped.Add(1)
		}
		close(sc.closed)
		h.fds.give()
	}
	return gnet.None
}

// fdBudget hands out a process's file descriptors to its reconnects, so
// that they may start while the old connections are still being released
// without running out: a client takes one before it dials (and one more
// while it enrolls the connection: gnet duplicates the socket) and gives
// it back when the socket closes; each enrolled connection gives its own
// back when the event loop releases it.
type fdBudget chan struct{}

// newFDBudget is a budget of limit descriptors, held descriptors of which
// are in use.
func newFDBudget(limit, held int) fdBudget {
	b := make(fdBudget, limit)
	for range limit - held {
		b <- struct{}{}
	}
	return b
}

func (b fdBudget) take(ctx context.Context) bool {
	select {
	case <-b:
		return true
	case <-ctx.Done():
		return false
	}
}

func (b fdBudget) give() {
	select {
	case b <- struct{}{}:
	default:
	}
}

// stormClient is one storm client's record; only its own goroutine writes
// it until done is set.
type stormClient struct {
	conn      *stormConn
	backUs    int64 // 0: not back
	hsUs      int64
	refusalUs []int64
	refusedAt []int64 // µs from the trigger
	errorAt   []int64
	attempts  int
	done      atomic.Bool
}

// stormTally is a storm process's shared counters.
type stormTally struct {
	back, attempts, refused, errors atomic.Int64
	mu                              sync.Mutex
	refusals, retryAfter, kinds     map[string]int64
	firstErr                        string
	finUs, closedUs                 atomic.Int64
}

func (st *stormTally) count(m map[string]int64, k string, err error) {
	st.mu.Lock()
	m[k]++
	if err != nil && st.firstErr == "" {
		st.firstErr = err.Error()
	}
	st.mu.Unlock()
}

// errorKind names a failed attempt's error for the counts.
func errorKind(err error) string {
	if re, ok := errors.AsType[*RefusedError](err); ok {
		return "http " + strconv.Itoa(re.Status)
	}
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.EPIPE):
		return "broken pipe"
	case errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE):
		return "out of file descriptors"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "no source port"
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return "closed before the response"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return "other"
}

func runStormClients(ctx context.Context, w StormWorker, t *connectTarget, so *stormOut, cmds <-chan stormCommand, eof <-chan struct{}) error {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	limit := int(min(lim.Cur, 1<<24)) - stormFDMargin
	if w.N > limit {
		return fmt.Errorf("%d clients: this process may open %d files and holds one per client (%d spare)", w.N, lim.Cur, stormFDMargin)
	}
	h := &stormHandler{idleHandler: idleHandler{counters: &Counters{}}, fds: newFDBudget(limit, w.N)}
	cli, err := gnet.NewClient(h, gnet.WithMulticore(true), gnet.WithNumEventLoop(max(w.Loops, 1)),
		gnet.WithReadBufferCap(4096), gnet.WithWriteBufferCap(4096), gnet.WithLogger(quietLogger{}))
	if err != nil {
		return err
	}
	if err := cli.Start(); err != nil {
		return err
	}
	defer func() {
		h.stopping.Store(true)
		_ = cli.Stop()
	}()
	enroll := func(c *net.TCPConn) (*stormConn, error) {
		sc := &stormConn{closed: make(chan struct{})}
		gc, err := cli.EnrollContext(c, sc) // closes c after taking a dup of it
		if err != nil {
			return nil, err
		}
		sc.gc = gc
		return sc, nil
	}

	// The warm-up.
	clients := make([]*stormClient, w.N)
	var warmRefused atomic.Int64
	start := time.Now()
	warmCtx, endWarmup := context.WithCancel(ctx)
	pool := startOpenPool(warmCtx, w.N, w.Concurrency, func(k int) error {
		c, err := warmupOpen(warmCtx, t, addIP(w.Source, k/connsPerSource), k, start, w.WarmupRate, &warmRefused)
		if err != nil {
			return err
		}
		sc, err := enroll(c)
		if err != nil {
			return err
		}
		clients[k] = &stormClient{conn: sc}
		return nil
	})
	defer func() { // before the event loops stop: no enroll is left half done
		endWarmup()
		waitClosed(pool.done, 12*time.Second)
	}()
	st := &stormTally{refusals: map[string]int64{}, retryAfter: map[string]int64{}, kinds: map[string]int64{}}
	var ready atomic.Bool
	progress := func() stormReport {
		r := stormReport{Connected: pool.opened.Load(), WarmupRefused: warmRefused.Load(), Ready: ready.Load(),
			Back: st.back.Load(), Attempts: st.attempts.Load(), Refused: st.refused.Load(), Errors: st.errors.Load(),
			Dropped: h.dropped.Load()}
		if n := pool.failed.Load(); n > 0 {
			r.Err = fmt.Sprintf("warm-up: %d of %d clients failed; first: %v", n, w.N, pool.firstErr())
		}
		return r
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	poolDone := pool.done
	stormCtx, stopStorm := context.WithCancel(ctx)
	defer stopStorm()
	var wg sync.WaitGroup
	var t0 time.Time
	reconnectFrom := addIP(w.Source, SourcesFor(w.N))
	for {
		select {
		case <-poolDone:
			poolDone = nil
			ready.Store(pool.failed.Load() == 0)
			so.write(progress())
		case <-tick.C:
			so.write(progress())
		case c := <-cmds:
			switch {
			case c.Trigger != 0 && t0.IsZero() && ready.Load():
				t0 = time.Unix(0, c.Trigger)
				// Every connection drops at once: a FIN on each, here, in a
				// tight loop (the event loop releases the descriptors after,
				// and each client reconnects once its own is released).
				for _, sc := range clients {
					sc.conn.ours.Store(true)
					select {
					case <-sc.conn.closed: // the server closed it already
					default:
						_ = syscall.Shutdown(sc.conn.gc.Fd(), syscall.SHUT_WR)
					}
				}
				st.finUs.Store(int64(time.Since(t0) / time.Microsecond))
				olds := make([]*stormConn, len(clients))
				for k, sc := range clients {
					olds[k] = sc.conn
					_ = sc.conn.gc.Close() // releases the descriptor (if the server's FIN has not already)
				}
				go func() {
					end := time.After(stormCloseWait)
					for _, o := range olds {
						select {
						case <-o.closed:
						case <-end:
							return
						}
					}
					st.closedUs.Store(int64(time.Since(t0) / time.Microsecond))
				}()
				for k, sc := range clients {
					wg.Go(func() {
						stormReconnect(stormCtx, w, t, st, sc, addIP(reconnectFrom, k/connsPerSource), k, t0, h.fds, enroll)
					})
				}
			case c.Stop:
				stopStorm()
				waitTimeout(&wg, 12*time.Second)
				so.write(progress())
				f := &stormFinal{Refusals: map[string]int64{}, RetryAfter: map[string]int64{}, Errors: map[string]int64{}}
				for _, sc := range clients {
					if sc == nil || !sc.done.Load() {
						f.GaveUp++
						continue
					}
					if sc.backUs > 0 {
						f.BackUs = append(f.BackUs, sc.backUs)
						f.HandshakeUs = append(f.HandshakeUs, sc.hsUs)
					} else {
						f.GaveUp++
					}
					f.RefusalUs = append(f.RefusalUs, sc.refusalUs...)
					f.RefusedAtUs = append(f.RefusedAtUs, sc.refusedAt...)
					f.ErrorAtUs = append(f.ErrorAtUs, sc.errorAt...)
					f.MaxAttempts = max(f.MaxAttempts, sc.attempts)
				}
				st.mu.Lock()
				maps.Copy(f.Refusals, st.refusals)
				maps.Copy(f.RetryAfter, st.retryAfter)
				maps.Copy(f.Errors, st.kinds)
				f.FirstError = st.firstErr
				st.mu.Unlock()
				f.Attempts = st.attempts.Load()
				f.ClosedUs = st.closedUs.Load()
				f.FinUs = st.finUs.Load()
				rep := progress()
				rep.Final = f
				so.write(rep)
			}
		case <-eof:
			stopStorm()
			waitTimeout(&wg, 12*time.Second)
			return nil
		}
	}
}

// waitClosed waits until c is closed, at most d; false if it was not.
func waitClosed(c <-chan struct{}, d time.Duration) bool {
	select {
	case <-c:
		return true
	case <-time.After(d):
		return false
	}
}

// waitTimeout waits for wg, at most d.
func waitTimeout(wg *sync.WaitGroup, d time.Duration) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
	}
}

// stormReconnect is one storm client after its connection dropped: it
// waits its jitter and reconnects until it succeeds or ctx ends.
func stormReconnect(ctx context.Context, w StormWorker, t *connectTarget, st *stormTally, sc *stormClient, src net.IP, k int,
	t0 time.Time, fds fdBudget, enroll func(*net.TCPConn) (*stormConn, error)) {
	defer sc.done.Store(true)
	if w.Jitter > 0 && !sleepCtx(ctx, rand.N(w.Jitter)) {
		return
	}
	inARow := 0
	for ctx.Err() == nil {
		if !fds.take(ctx) {
			return
		}
		a0 := time.Now()
		c, err := t.open(ctx, src, k)
		end := time.Now()
		took := end.Sub(a0)
		if err != nil {
			fds.give() // the socket is closed
		}
		if ctx.Err() != nil {
			if c != nil {
				c.Close()
				fds.give()
			}
			return // cut short by the end: not counted
		}
		sc.attempts++
		st.attempts.Add(1)
		if err == nil {
			if !fds.take(ctx) { // the duplicate enrolling makes
				c.Close()
				fds.give()
				return
			}
			nc, err := enroll(c) // closes c: the connection keeps one descriptor
			fds.give()
			if err == nil {
				sc.conn = nc
				sc.hsUs = max(1, int64(took/time.Microsecond))
				sc.backUs = max(1, int64(end.Sub(t0)/time.Microsecond))
				st.back.Add(1)
				return
			}
			fds.give()
			st.count(st.kinds, "enroll", err)
			sc.errorAt = append(sc.errorAt, int64(time.Since(t0)/time.Microsecond))
		} else if re, ok := errors.AsType[*RefusedError](err); ok && re.RetryAfter > 0 {
			st.refused.Add(1)
			st.count(st.refusals, strconv.Itoa(re.Status), nil)
			st.count(st.retryAfter, strconv.Itoa(int(re.RetryAfter/time.Second)), nil)
			sc.refusalUs = append(sc.refusalUs, max(1, int64(took/time.Microsecond)))
			sc.refusedAt = append(sc.refusedAt, int64(time.Since(t0)/time.Microsecond))
			inARow = 0
			if !sleepCtx(ctx, re.RetryAfter+rand.N(stormRetrySpread)) {
				return
			}
			continue
		} else {
			st.errors.Add(1)
			st.count(st.kinds, errorKind(err), err)
			sc.errorAt = append(sc.errorAt, int64(time.Since(t0)/time.Microsecond))
		}
		inARow++
		backoff := min(stormBackoffCap, stormBackoffBase<<min(inARow-1, 20))
		if !sleepCtx(ctx, rand.N(backoff)+1) {
			return
		}
	}
}

// resident is one resident client: it sends an echo every interval and
// times the replies (which come in order).
type resident struct {
	c     *wsClient
	mu    sync.Mutex
	sends []int64 // send times, ns since the process's base
	lats  []int64 // lats[i]: the reply time of sends[i], ns
}

func runResidents(ctx context.Context, w StormWorker, t *connectTarget, so *stormOut, cmds <-chan stormCommand, eof <-chan struct{}) error {
	res := make([]*resident, w.N)
	var warmRefused atomic.Int64
	start := time.Now()
	warmCtx, endWarmup := context.WithCancel(ctx)
	defer endWarmup()
	pool := startOpenPool(warmCtx, w.N, w.Concurrency, func(k int) error {
		c, err := warmupOpen(warmCtx, t, addIP(w.Source, k/connsPerSource), k, start, w.WarmupRate, &warmRefused)
		if err != nil {
			return err
		}
		res[k] = &resident{c: &wsClient{conn: c, br: bufio.NewReaderSize(c, 4096)}}
		return nil
	})
	base := time.Now()
	var stopping atomic.Bool
	var dropped, answered, echoErrs atomic.Int64
	var errMu sync.Mutex
	var firstErr string
	var ready atomic.Bool
	var wg sync.WaitGroup
	defer func() {
		stopping.Store(true)
		endWarmup()
		if !waitClosed(pool.done, 12*time.Second) {
			return // the process is about to exit: what the warm-up still holds goes with it
		}
		for _, r := range res {
			if r != nil {
				r.c.conn.Close()
			}
		}
		waitTimeout(&wg, 5*time.Second)
	}()
	startEchoes := func() {
		for _, r := range res {
			wg.Add(2)
			go func() { // the reader
				defer wg.Done()
				for {
					_, msg, err := r.c.readMessage()
					if err != nil {
						if !stopping.Load() {
							dropped.Add(1)
						}
						return
					}
					now := int64(time.Since(base))
					if id, ok := echoReplyID(msg); ok {
						r.mu.Lock()
						if i := len(r.lats); id == int64(i+1) && i < len(r.sends) {
							r.lats = append(r.lats, now-r.sends[i])
							answered.Add(1)
						} else {
							echoErrs.Add(1)
						}
						r.mu.Unlock()
						continue
					}
					echoErrs.Add(1)
					errMu.Lock()
					if firstErr == "" {
						firstErr = truncate(msg, 200)
					}
					errMu.Unlock()
				}
			}()
			go func() { // the writer
				defer wg.Done()
				if !sleepCtx(ctx, rand.N(w.EchoInterval)) {
					return
				}
				tk := time.NewTicker(w.EchoInterval)
				defer tk.Stop()
				var buf []byte
				for seq := int64(1); ; seq++ {
					r.mu.Lock()
					r.sends = append(r.sends, int64(time.Since(base)))
					r.mu.Unlock()
					buf = fmt.Appendf(buf[:0], `{"type":"echo","id":%d,"data":"x"}`, seq)
					if err := r.c.write(frame.OpText, buf, 5*time.Second); err != nil {
						return
					}
					select {
					case <-tk.C:
					case <-ctx.Done():
						return
					}
				}
			}()
		}
	}
	progress := func() stormReport {
		r := stormReport{Connected: pool.opened.Load(), WarmupRefused: warmRefused.Load(), Ready: ready.Load(),
			Dropped: dropped.Load(), EchoAnswered: answered.Load()}
		if n := pool.failed.Load(); n > 0 {
			r.Err = fmt.Sprintf("warm-up: %d of %d residents failed; first: %v", n, w.N, pool.firstErr())
		}
		return r
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	poolDone := pool.done
	for {
		select {
		case <-poolDone:
			poolDone = nil
			if pool.failed.Load() == 0 {
				base = time.Now()
				startEchoes()
				ready.Store(true)
			}
			so.write(progress())
		case <-tick.C:
			so.write(progress())
		case c := <-cmds:
			if len(c.Windows) == 0 {
				continue
			}
			errMu.Lock()
			fe := firstErr
			errMu.Unlock()
			rep := progress()
			rep.Echo = &residentFinal{Windows: echoWindows(res, base, c.Windows), Series: echoSeries(res, base, c.Series),
				Errors: echoErrs.Load(), FirstErr: fe}
			so.write(rep)
		case <-eof:
			return nil
		}
	}
}

// echoReplyID returns the id of an echo_reply.
func echoReplyID(msg []byte) (int64, bool) {
	rest, ok := bytes.CutPrefix(msg, []byte(`{"type":"echo_reply","id":`))
	if !ok {
		return 0, false
	}
	v, n := parseDigits(rest)
	return v, n > 0
}

// echoSpan gathers the echoes sent in [from, to) (ns since base): sent,
// answered, and the answered ones' latencies.
func echoSpan(res []*resident, from, to int64) (sent, answered int64, lats []int64) {
	for _, r := range res {
		if r == nil {
			continue
		}
		r.mu.Lock()
		i, _ := slices.BinarySearch(r.sends, from)
		j, _ := slices.BinarySearch(r.sends, to)
		sent += int64(j - i)
		if a := min(j, len(r.lats)); a > i {
			answered += int64(a - i)
			lats = append(lats, r.lats[i:a]...)
		}
		r.mu.Unlock()
	}
	slices.Sort(lats)
	return sent, answered, lats
}

func echoWindows(res []*resident, base time.Time, ws []stormWindow) []EchoWindow {
	b := base.UnixNano()
	var out []EchoWindow
	for _, w := range ws {
		sent, answered, lats := echoSpan(res, w.From-b, w.To-b)
		e := EchoWindow{Name: w.Name, Seconds: float64(w.To-w.From) / 1e9, Sent: sent, Answered: answered, Unanswered: sent - answered}
		e.P50Ms, e.P99Ms, e.MaxMs = nsFigures(lats)
		out = append(out, e)
	}
	return out
}

func echoSeries(res []*resident, base time.Time, s *stormSeries) []EchoPoint {
	if s == nil || s.Step <= 0 {
		return nil
	}
	b := base.UnixNano()
	var out []EchoPoint
	for from := s.From; from < s.To; from += s.Step {
		sent, answered, lats := echoSpan(res, from-b, from+s.Step-b)
		p := EchoPoint{T: math.Round(float64(from-s.T0)/1e6) / 1e3, Sent: sent, Answered: answered}
		p.P50Ms, p.P99Ms, p.MaxMs = nsFigures(lats)
		out = append(out, p)
	}
	return out
}

// nsFigures returns p50, p99 and max of sorted ns values, in ms.
func nsFigures(sorted []int64) (p50, p99, mx float64) {
	if len(sorted) == 0 {
		return 0, 0, 0
	}
	return float64(percentileInt(sorted, 50)) / 1e6, float64(percentileInt(sorted, 99)) / 1e6, float64(sorted[len(sorted)-1]) / 1e6
}
