package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// SmokeOptions describe a smoke run: idle, connect and echo at a small
// scale against a wsd and the baseline (gnetecho) it starts itself, in
// well under a minute: that the modes work end to end, and a first look
// at the figures.
type SmokeOptions struct {
	Wsd      string // the wsd binary
	Baseline string // the gnetecho binary ("": skip the baseline)
	Dir      string // logs and JSON results go here
	Idle     int    // idle connections (default 2,000)
	Connect  int    // handshakes (default 2,000)
	Echo     int    // echo connections (default 100)
	EchoTime time.Duration
	Source   net.IP // first source address; the modes use the ones after it
	Out      io.Writer
}

// SmokeResult is every mode's result.
type SmokeResult struct {
	Idle            *IdleResult    `json:"idle"`
	Connect         *ConnectResult `json:"connect_wsd"`
	ConnectBaseline *ConnectResult `json:"connect_baseline,omitempty"`
	Echo            *EchoResult    `json:"echo_wsd"`
	EchoBaseline    *EchoResult    `json:"echo_baseline,omitempty"`
	Seconds         float64        `json:"seconds"`
}

// RunSmoke runs the smoke: wsd (one process, rate limits off, --pprof for
// the forced GCs) for idle, connect and echo, then the baseline for
// connect and echo. Each server is stopped by its PID when its part ends.
func RunSmoke(ctx context.Context, o SmokeOptions) (*SmokeResult, error) {
	if o.Idle <= 0 {
		o.Idle = 2000
	}
	if o.Connect <= 0 {
		o.Connect = 2000
	}
	if o.Echo <= 0 {
		o.Echo = 100
	}
	if o.EchoTime <= 0 {
		o.EchoTime = 3 * time.Second
	}
	if o.Source == nil {
		o.Source = net.ParseIP("127.0.0.2")
	}
	start := time.Now()
	res := &SmokeResult{}
	say := func(f string, a ...any) {
		if o.Out != nil {
			fmt.Fprintf(o.Out, f+"\n", a...)
		}
	}

	listen, err := freeAddr()
	if err != nil {
		return nil, err
	}
	adminBase, err := freePorts(1)
	if err != nil {
		return nil, err
	}
	say("== wsd on %s (admin 127.0.0.1:%d; log in %s)", listen, adminBase, o.Dir)
	srv, err := StartServers(ctx, ServersOptions{
		Wsd: o.Wsd, K: 1, Listen: listen, AdminHost: "127.0.0.1", AdminBase: adminBase, LogDir: o.Dir, NodePrefix: "smoke",
		Args: []string{"--pprof", "--echo-path", "/echo", "--log-level", "warn",
			"--max-messages-per-sec", "0", "--max-inbound-bytes-per-sec", "0"},
	})
	if err != nil {
		return nil, err
	}
	wsdParts := func() error {
		say("== idle: %d connections", o.Idle)
		r, err := RunIdle(ctx, IdleOptions{URL: "ws://" + listen + "/ws", Admins: srv.Admins, N: o.Idle, PerProcess: o.Idle,
			Source: o.Source, Concurrency: 32, Loops: 1, Settle: time.Second, Hold: 2 * time.Second, Interval: 500 * time.Millisecond})
		if err != nil {
			return fmt.Errorf("idle: %w", err)
		}
		res.Idle = r
		say("== connect: %d handshakes (wsd)", o.Connect)
		if res.Connect, err = RunConnect(ctx, ConnectOptions{URL: "ws://" + listen + "/echo", N: o.Connect, Concurrency: 64, Rounds: 1, TokenIn: TokenInHeader,
			Source: addIP(o.Source, 1), PerSource: o.Connect, ServerPID: srv.PIDs[0], Timeout: time.Minute}); err != nil {
			return fmt.Errorf("connect: %w", err)
		}
		say("== echo: %d connections for %v (wsd)", o.Echo, o.EchoTime)
		if res.Echo, err = RunEcho(ctx, EchoOptions{URL: "ws://" + listen + "/echo", N: o.Echo, Size: 64, Window: 1,
			Warmup: 500 * time.Millisecond, Duration: o.EchoTime, Loops: 1, Concurrency: 32, Source: addIP(o.Source, 2),
			ServerPID: srv.PIDs[0], Timeout: time.Minute}); err != nil {
			return fmt.Errorf("echo: %w", err)
		}
		return nil
	}
	err = wsdParts()
	if serr := srv.Stop(); err == nil && serr != nil {
		err = serr
	}
	if err != nil {
		return nil, err
	}

	if o.Baseline != "" {
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		say("== gnetecho (the baseline) on %s", addr)
		cmd := exec.Command(o.Baseline, "-addr", addr)
		logf, err := os.Create(filepath.Join(o.Dir, "gnetecho.log"))
		if err != nil {
			return nil, err
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			logf.Close()
			return nil, fmt.Errorf("start %s: %w", o.Baseline, err)
		}
		logf.Close()
		stop := func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
		}
		if err := waitListening(ctx, addr, 10*time.Second); err != nil {
			stop()
			return nil, fmt.Errorf("gnetecho: %w", err)
		}
		baseParts := func() error {
			say("== connect: %d handshakes (gnetecho)", o.Connect)
			var err error
			if res.ConnectBaseline, err = RunConnect(ctx, ConnectOptions{URL: "ws://" + addr + "/echo", N: o.Connect, Concurrency: 64, Rounds: 1, TokenIn: TokenInHeader,
				Source: addIP(o.Source, 3), PerSource: o.Connect, ServerPID: cmd.Process.Pid, Timeout: time.Minute}); err != nil {
				return fmt.Errorf("connect (gnetecho): %w", err)
			}
			say("== echo: %d connections for %v (gnetecho)", o.Echo, o.EchoTime)
			if res.EchoBaseline, err = RunEcho(ctx, EchoOptions{URL: "ws://" + addr + "/echo", N: o.Echo, Size: 64, Window: 1,
				Warmup: 500 * time.Millisecond, Duration: o.EchoTime, Loops: 1, Concurrency: 32, Source: addIP(o.Source, 4),
				ServerPID: cmd.Process.Pid, Timeout: time.Minute}); err != nil {
				return fmt.Errorf("echo (gnetecho): %w", err)
			}
			return nil
		}
		err = baseParts()
		stop()
		if err != nil {
			return nil, err
		}
	}
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

// Print writes one table of the smoke's figures.
func (r *SmokeResult) Print(w io.Writer) {
	fmt.Fprintf(w, "%-8s %-9s %s\n", "mode", "server", "figures")
	if i := r.Idle; i != nil {
		fmt.Fprintf(w, "%-8s %-9s %d conns: %.0f B server RSS and %.0f B Go heap per conn, %.0f B kernel slab per conn (both ends); ping check %d/%d; %s\n",
			"idle", "wsd", i.Connections, i.RSSBytesPerConn, i.HeapLivePerConn, i.SlabPerConn, i.PongsReceived, i.Connections, verdictWord(i.Verdict()))
	}
	connect := func(name string, c *ConnectResult) {
		if c == nil || len(c.Rounds) == 0 {
			return
		}
		x := c.Rounds[0]
		fmt.Fprintf(w, "%-8s %-9s %d handshakes (%d failed): %.0f/s, %.0f per server CPU-second, p50 %.1f ms, p99 %.1f ms\n",
			"connect", name, x.Completed, x.Failed, x.PerSecond, x.PerServerCPUSec, x.LatencyP50Millis, x.LatencyP99Millis)
	}
	echo := func(name string, e *EchoResult) {
		if e == nil {
			return
		}
		fmt.Fprintf(w, "%-8s %-9s %d conns, %d B: %.0f messages/s, %.0f per server CPU-second, RTT p50 %.2f ms, p99 %.2f ms, p999 %.2f ms\n",
			"echo", name, e.N, e.Size, e.PerSecond, e.PerServerCPUSec, e.RTTP50Micros/1000, e.RTTP99Micros/1000, e.RTTP999Micros/1000)
	}
	connect("wsd", r.Connect)
	connect("gnetecho", r.ConnectBaseline)
	echo("wsd", r.Echo)
	echo("gnetecho", r.EchoBaseline)
	fmt.Fprintf(w, "(%.0f s in all; small runs on a shared host: a smoke test, not a measurement; see bench/README.md for those)\n", r.Seconds)
}

func verdictWord(v string) string {
	if v == "" {
		return "PASS"
	}
	return "FAIL: " + v
}

// freeAddr returns a loopback address nothing listens on now.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// freePorts returns the first of n consecutive free loopback ports.
func freePorts(n int) (int, error) {
	for range 50 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		base := ln.Addr().(*net.TCPAddr).Port
		ok := true
		var held []net.Listener
		for i := 1; i < n; i++ {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(base+i))
			if err != nil {
				ok = false
				break
			}
			held = append(held, l)
		}
		ln.Close()
		for _, l := range held {
			l.Close()
		}
		if ok {
			return base, nil
		}
	}
	return 0, fmt.Errorf("no %d consecutive free ports", n)
}

// waitListening waits until addr accepts a TCP connection.
func waitListening(ctx context.Context, addr string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listens on %s after %v: %w", addr, limit, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
