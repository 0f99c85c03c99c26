package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ServersOptions describe K wsd processes sharing one listen port
// (--reuse-port: the kernel spreads new connections over them), each with
// its own admin listener: one host's way past one process's file limit,
// and the layout bench/run-1m.sh uses.
type ServersOptions struct {
	Wsd    string // the wsd binary
	K      int    // processes
	Listen string // the shared WebSocket address, host:port
	// PortPerProcess: process i listens on Listen's port + i instead, with
	// no --reuse-port (separate nodes, as behind a load balancer).
	PortPerProcess bool
	AdminHost      string        // host of every admin listener
	AdminBase      int           // process i's admin port is AdminBase+i
	Aggregate      string        // if set, serve the processes' summed /metrics (and /readyz) here
	NodePrefix     string        // process i runs with --node-id NodePrefix-i: client ids stay unique across processes
	LogDir         string        // process i's output goes to LogDir/wsd-i.log
	Args           []string      // more wsd flags, after the ones above (a later flag wins)
	Ready          time.Duration // how long the processes may take to become ready
	Stop           time.Duration // after SIGTERM, how long to wait for each drain before SIGKILL
}

// Servers is a running set of wsd processes.
type Servers struct {
	Admins []string // http://host:port of each process's admin listener
	PIDs   []int

	o     ServersOptions
	cmds  []*exec.Cmd
	done  []chan struct{} // closed when process i has exited
	exits chan procExit   // every exit, for Wait and for StartServers
	agg   *http.Server

	mu       sync.Mutex
	stopping bool
}

type procExit struct {
	i   int
	err error
}

// StartServers starts the processes and waits until every one says it is
// ready (/readyz). On an error, the ones started are stopped.
func StartServers(ctx context.Context, o ServersOptions) (*Servers, error) {
	if o.K < 1 {
		return nil, errors.New("servers: need at least one process")
	}
	if o.Ready <= 0 {
		o.Ready = 30*time.Second + time.Duration(o.K)*time.Second
	}
	if o.Stop <= 0 {
		o.Stop = 30 * time.Second
	}
	if o.NodePrefix == "" {
		o.NodePrefix = "wsd"
	}
	if err := os.MkdirAll(o.LogDir, 0o755); err != nil {
		return nil, err
	}
	// A taken admin port would surface as one process failing among
	// many; say which port and why up front.
	for i := range o.K {
		addr := net.JoinHostPort(o.AdminHost, strconv.Itoa(o.AdminBase+i))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("servers: admin port for process %d: %w", i, err)
		}
		ln.Close()
	}
	s := &Servers{o: o, exits: make(chan procExit, o.K)}
	for i := range o.K {
		admin := net.JoinHostPort(o.AdminHost, strconv.Itoa(o.AdminBase+i))
		listen := []string{"--listen", o.Listen, "--reuse-port"}
		if o.PortPerProcess {
			host, port, err := net.SplitHostPort(o.Listen)
			p, perr := strconv.Atoi(port)
			if err != nil || perr != nil {
				s.stopAll()
				return nil, fmt.Errorf("servers: bad listen address %q", o.Listen)
			}
			listen = []string{"--listen", net.JoinHostPort(host, strconv.Itoa(p+i))}
		}
		args := append(append(listen, "--admin", admin,
			"--node-id", fmt.Sprintf("%s-%d", o.NodePrefix, i)), o.Args...)
		logf, err := os.Create(filepath.Join(o.LogDir, fmt.Sprintf("wsd-%d.log", i)))
		if err != nil {
			s.stopAll()
			return nil, err
		}
		cmd := exec.Command(o.Wsd, args...)
		cmd.Stdout, cmd.Stderr = logf, logf
		// The processes die with this one, even on SIGKILL: a bench
		// never leaves servers behind.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			logf.Close()
			s.stopAll()
			return nil, fmt.Errorf("servers: start process %d: %w", i, err)
		}
		logf.Close() // the child has its own copy
		s.cmds = append(s.cmds, cmd)
		s.PIDs = append(s.PIDs, cmd.Process.Pid)
		s.Admins = append(s.Admins, "http://"+admin)
		done := make(chan struct{})
		s.done = append(s.done, done)
		go func() {
			err := cmd.Wait()
			close(done)
			s.exits <- procExit{i, err}
		}()
	}
	deadline := time.Now().Add(o.Ready)
	c := &http.Client{Timeout: 2 * time.Second}
	for i, a := range s.Admins {
		for {
			resp, err := c.Get(a + "/readyz")
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			select {
			case e := <-s.exits:
				s.stopAll()
				return nil, fmt.Errorf("servers: process %d exited before it was ready (%v); see %s", e.i, e.err, s.logName(e.i))
			case <-ctx.Done():
				s.stopAll()
				return nil, ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				s.stopAll()
				return nil, fmt.Errorf("servers: process %d not ready after %v; see %s", i, o.Ready, s.logName(i))
			}
		}
	}
	if o.Aggregate != "" {
		ln, err := net.Listen("tcp", o.Aggregate)
		if err != nil {
			s.stopAll()
			return nil, fmt.Errorf("servers: aggregate listener: %w", err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/metrics", s.serveMetrics)
		mux.HandleFunc("/readyz", s.serveReady)
		s.agg = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go s.agg.Serve(ln)
	}
	return s, nil
}

func (s *Servers) logName(i int) string {
	return filepath.Join(s.o.LogDir, fmt.Sprintf("wsd-%d.log", i))
}

// Wait returns when a process exits that was not asked to: an error
// naming it and its log. It returns nil once Stop has been called.
func (s *Servers) Wait(ctx context.Context) error {
	select {
	case e := <-s.exits:
		s.mu.Lock()
		stopping := s.stopping
		s.mu.Unlock()
		if stopping {
			return nil
		}
		return fmt.Errorf("servers: process %d (pid %d) exited: %v; see %s", e.i, s.PIDs[e.i], e.err, s.logName(e.i))
	case <-ctx.Done():
		return nil
	}
}

// Stop drains every process (SIGTERM: each closes its listener and sends
// its clients 1001) and waits for them, killing any that outlive o.Stop.
func (s *Servers) Stop() error {
	if s.agg != nil {
		s.agg.Close()
	}
	return s.stopAll()
}

func (s *Servers) stopAll() error {
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	for _, c := range s.cmds {
		_ = c.Process.Signal(syscall.SIGTERM)
	}
	var killed []string
	deadline := time.Now().Add(s.o.Stop)
	for i, done := range s.done {
		select {
		case <-done:
			continue
		case <-time.After(time.Until(deadline)): // at once when already past
		}
		_ = s.cmds[i].Process.Kill()
		killed = append(killed, strconv.Itoa(i))
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
	}
	if len(killed) > 0 {
		return fmt.Errorf("servers: processes %s did not stop within %v and were killed", strings.Join(killed, ","), s.o.Stop)
	}
	return nil
}

// SumMetrics scrapes every admin URL and adds the series up, name and
// labels alike: counters and gauges sum to the whole host's (connections
// open, RSS, CPU seconds), histogram buckets to the merged histogram.
// Gauges such as wsd_ready sum to the number of processes saying so.
func SumMetrics(ctx context.Context, admins []string) (Metrics, error) {
	sum := Metrics{}
	var mu sync.Mutex
	errs := make([]error, len(admins))
	eachAdmin(admins, func(i int, a string) {
		m, err := ScrapeMetrics(ctx, a, 10*time.Second)
		if err != nil {
			errs[i] = err
			return
		}
		mu.Lock()
		for k, v := range m {
			sum[k] += v
		}
		mu.Unlock()
	})
	return sum, errors.Join(errs...)
}

func (s *Servers) serveMetrics(w http.ResponseWriter, r *http.Request) {
	m, err := SumMetrics(r.Context(), s.Admins)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	fmt.Fprintf(w, "# the sum of %d wsd processes' series (wsbench servers)\n", len(s.Admins))
	for _, k := range keys {
		fmt.Fprintf(w, "%s %s\n", k, strconv.FormatFloat(m[k], 'g', -1, 64))
	}
}

func (s *Servers) serveReady(w http.ResponseWriter, r *http.Request) {
	c := &http.Client{Timeout: 2 * time.Second}
	for i, a := range s.Admins {
		resp, err := c.Get(a + "/readyz")
		if err != nil {
			http.Error(w, fmt.Sprintf("process %d: %v", i, err), http.StatusServiceUnavailable)
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			http.Error(w, fmt.Sprintf("process %d: %s", i, resp.Status), http.StatusServiceUnavailable)
			return
		}
	}
	fmt.Fprintf(w, "ready: %d processes\n", len(s.Admins))
}
