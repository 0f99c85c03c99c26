package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/wsdproject/wsd/frame"
)

// EchoOptions describe an echo run: N connections, each keeping Window
// binary messages of Size bytes on their way to the server's echo endpoint and
// back, for Duration after Warmup.
type EchoOptions struct {
	URL         string        // ws://host:port/path of an echo endpoint (wsd's --echo-path, gnetecho)
	N           int           // connections
	Size        int           // bytes a message (at least 8: the send time travels in it)
	Window      int           // messages in flight per connection
	Warmup      time.Duration // echoing before the measurement starts
	Duration    time.Duration // the measurement
	Loops       int           // the client's event loops
	Concurrency int           // dials in flight while opening
	Source      net.IP        // first source address (nil: any); every 10,000 connections the next
	ServerPID   int           // 0: every process listening on URL's port, summed; -1: not measured
	Timeout     time.Duration // bound on opening the connections
	Progress    io.Writer
	Terminal    bool
}

// EchoResult is what an echo run measured over its measurement window:
// messages whose send time fell in it and whose echo came back.
type EchoResult struct {
	URL               string  `json:"url"`
	N                 int     `json:"connections"`
	Size              int     `json:"message_bytes"`
	Window            int     `json:"window"`
	ServerPIDs        []int   `json:"server_pids"`
	HostCPUs          int     `json:"host_cpus"`
	Seconds           float64 `json:"seconds"`
	Sent              int64   `json:"sent"`
	Echoed            int64   `json:"echoed"`
	PerSecond         float64 `json:"messages_per_second"`
	ServerCPUSeconds  float64 `json:"server_cpu_seconds"`
	PerServerCPUSec   float64 `json:"messages_per_server_cpu_second"`
	ServerCPUMeasured bool    `json:"server_cpu_measured"`
	ClientCPUSeconds  float64 `json:"client_cpu_seconds"`
	RTTP50Micros      float64 `json:"rtt_p50_us"`
	RTTP99Micros      float64 `json:"rtt_p99_us"`
	RTTP999Micros     float64 `json:"rtt_p999_us"`
	RTTMaxMicros      float64 `json:"rtt_max_us"`
	Dropped           int64   `json:"dropped"`  // connections the server closed during the run
	Mismatch          int64   `json:"mismatch"` // echoes that were not what was sent (size or opcode)
}

// echoConn is one connection's state, touched only on its event loop.
type echoConn struct {
	out  []byte
	rtts []int64 // round trips (ns) of messages sent within the window
}

type echoHandler struct {
	gnet.BuiltinEventEngine
	op       frame.OpCode
	size     int
	zeros    []byte // size zero bytes
	window   int
	from, to atomic.Int64 // the measurement window, ns since base (to 0: open)
	base     time.Time
	stopping atomic.Bool
	closing  atomic.Bool

	sent, echoed, dropped, mismatch atomic.Int64
}

func (h *echoHandler) now() int64 { return int64(time.Since(h.base)) }

// appendMessage appends a masked message carrying its send time.
func (h *echoHandler) appendMessage(b []byte, now int64) []byte {
	b = frame.AppendMaskedFrame(b, true, h.op, 0, clientMask, h.zeros) // header + masked zeros
	// The send time goes in the payload's first 8 bytes, masked the same
	// way (the mask's index starts at 0 at the payload).
	var ts [8]byte
	binary.LittleEndian.PutUint64(ts[:], uint64(now))
	p := b[len(b)-h.size:]
	for i := range 8 {
		p[i] = ts[i] ^ clientMask[i%4]
	}
	return b
}

func (h *echoHandler) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	st := &echoConn{}
	c.SetContext(st)
	now := h.now()
	for range h.window {
		st.out = h.appendMessage(st.out, now)
	}
	h.sent.Add(int64(h.window))
	out := st.out
	st.out = nil
	return out, gnet.None
}

func (h *echoHandler) OnTraffic(c gnet.Conn) gnet.Action {
	st, _ := c.Context().(*echoConn)
	if st == nil {
		return gnet.Close
	}
	st.out = st.out[:0]
	var now int64
	for {
		hd, payload, size, err := peekFrame(c)
		if err != nil {
			return gnet.Close
		}
		if size == 0 {
			break
		}
		switch hd.OpCode {
		case frame.OpText, frame.OpBinary:
			if now == 0 {
				now = h.now()
			}
			if hd.OpCode != h.op || len(payload) != h.size {
				h.mismatch.Add(1)
			} else {
				t := int64(binary.LittleEndian.Uint64(payload))
				if from := h.from.Load(); from > 0 && t >= from && (h.to.Load() == 0 || t < h.to.Load()) {
					st.rtts = append(st.rtts, now-t)
				}
			}
			h.echoed.Add(1)
			if !h.stopping.Load() {
				st.out = h.appendMessage(st.out, now)
				h.sent.Add(1)
			}
		default:
			if answerControl(c, hd.OpCode, payload) {
				_, _ = c.Discard(size)
				return gnet.Close
			}
		}
		_, _ = c.Discard(size)
	}
	if len(st.out) > 0 {
		_, _ = c.Write(st.out)
	}
	return gnet.None
}

func (h *echoHandler) OnClose(c gnet.Conn, err error) gnet.Action {
	if !h.closing.Load() {
		h.dropped.Add(1)
	}
	return gnet.None
}

// RunEcho runs an echo measurement against a running server.
func RunEcho(ctx context.Context, o EchoOptions) (*EchoResult, error) {
	u, err := url.Parse(o.URL)
	if err != nil || u.Scheme != "ws" || u.Host == "" {
		return nil, fmt.Errorf("bad -url %q: want ws://host:port/path", o.URL)
	}
	var lim unix.Rlimit
	_ = unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
	switch {
	case o.N < 1 || o.Window < 1 || o.Loops < 1 || o.Concurrency < 1:
		return nil, errors.New("-n, -window, -loops and -concurrency must be positive")
	case o.Size < 8:
		return nil, errors.New("-size must be at least 8 (the send time travels in the message)")
	case o.Duration <= 0:
		return nil, errors.New("-duration must be positive")
	case lim.Cur > 0 && uint64(o.N)+200 > lim.Cur:
		return nil, fmt.Errorf("-n %d: this process may open %d files and holds one per connection (leave 200 spare)", o.N, lim.Cur)
	}
	var pids []int
	if o.ServerPID != -1 {
		var given []int
		if o.ServerPID > 0 {
			given = []int{o.ServerPID}
		}
		if pids, err = stormServerPIDs(given, u); err != nil {
			return nil, err
		}
	}
	h := &echoHandler{op: frame.OpBinary, size: o.Size, zeros: make([]byte, o.Size), window: o.Window, base: time.Now()}
	cli, err := gnet.NewClient(h, gnet.WithMulticore(true), gnet.WithNumEventLoop(o.Loops),
		gnet.WithTCPNoDelay(gnet.TCPNoDelay), gnet.WithLogger(quietLogger{}))
	if err != nil {
		return nil, err
	}
	if err := cli.Start(); err != nil {
		return nil, err
	}
	var conns []gnet.Conn
	var connsMu sync.Mutex
	defer func() {
		h.closing.Store(true)
		_ = cli.Stop()
	}()
	pl := progressLine{o.Progress, o.Terminal}

	// Open: dial and upgrade on blocking sockets, then hand each to the
	// event loops, which start echoing at once.
	octx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	start := time.Now()
	pool := startOpenPool(octx, o.N, o.Concurrency, func(k int) error {
		var src net.IP
		if o.Source != nil {
			src = addIP(o.Source, k/connsPerSource)
		}
		conn, err := dialUpgraded(octx, u.Host, u.RequestURI(), src)
		if err != nil {
			return err
		}
		gc, err := cli.Enroll(conn)
		if err != nil {
			return err
		}
		connsMu.Lock()
		conns = append(conns, gc)
		connsMu.Unlock()
		return nil
	})
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
open:
	for {
		select {
		case <-pool.done:
			break open
		case <-tick.C:
			pl.progress(fmt.Sprintf("open   %5.1fs  %d/%d  failed %d", time.Since(start).Seconds(), pool.opened.Load(), o.N, pool.failed.Load()))
		}
	}
	if err := pool.firstErr(); err != nil {
		pl.endProgress()
		return nil, fmt.Errorf("%d of %d connections failed; first: %w", pool.failed.Load(), o.N, err)
	}

	// Warm up, then measure.
	phase := func(name string, d time.Duration, from time.Time) error {
		end := time.After(d)
		last := h.echoed.Load()
		for {
			select {
			case <-end:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			case <-tick.C:
				e := h.echoed.Load()
				pl.progress(fmt.Sprintf("%-6s %5.1fs  echoes/s %8d  dropped %d", name, time.Since(from).Seconds(), e-last, h.dropped.Load()))
				last = e
			}
		}
	}
	if err := phase("warmup", o.Warmup, time.Now()); err != nil {
		pl.endProgress()
		return nil, err
	}
	cpu0, self0 := sumCPU(pids), sumCPU([]int{os.Getpid()})
	t0 := time.Now()
	h.from.Store(max(h.now(), 1))
	err = phase("echo", o.Duration, t0)
	h.to.Store(h.now())
	cpu1, self1 := sumCPU(pids), sumCPU([]int{os.Getpid()})
	t1 := time.Now()
	h.stopping.Store(true)
	pl.endProgress()
	if err != nil {
		return nil, err
	}
	// Let the window's last messages come back, then collect on the loops.
	time.Sleep(500 * time.Millisecond)
	var rtts []int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		if err := c.EventLoop().Execute(ctx, gnet.RunnableFunc(func(context.Context) error {
			defer wg.Done()
			if st, _ := c.Context().(*echoConn); st != nil {
				mu.Lock()
				rtts = append(rtts, st.rtts...)
				mu.Unlock()
			}
			return nil
		})); err != nil {
			wg.Done()
		}
	}
	wg.Wait()
	slices.Sort(rtts)
	secs := t1.Sub(t0).Seconds()
	r := &EchoResult{
		URL: o.URL, N: o.N, Size: o.Size, Window: o.Window, ServerPIDs: pids, HostCPUs: runtime.NumCPU(),
		Seconds: secs, Echoed: int64(len(rtts)), ServerCPUMeasured: len(pids) > 0, ClientCPUSeconds: self1 - self0,
		Dropped: h.dropped.Load(), Mismatch: h.mismatch.Load(), Sent: h.sent.Load(),
	}
	r.PerSecond = float64(r.Echoed) / secs
	if len(pids) > 0 {
		r.ServerCPUSeconds = cpu1 - cpu0
		if r.ServerCPUSeconds > 0 {
			r.PerServerCPUSec = float64(r.Echoed) / r.ServerCPUSeconds
		}
	}
	if n := len(rtts); n > 0 {
		us := func(p float64) float64 { return float64(rtts[ceilRank(p, n)-1]) / 1e3 }
		r.RTTP50Micros, r.RTTP99Micros, r.RTTP999Micros = us(50), us(99), us(99.9)
		r.RTTMaxMicros = float64(rtts[n-1]) / 1e3
	}
	if r.Dropped > 0 || r.Mismatch > 0 {
		return r, fmt.Errorf("%d connections dropped by the server, %d echoes not as sent", r.Dropped, r.Mismatch)
	}
	return r, nil
}

// Print writes the result.
func (r *EchoResult) Print(w io.Writer) {
	pid := "not measured"
	if len(r.ServerPIDs) > 0 {
		pid = strings.Trim(fmt.Sprint(r.ServerPIDs), "[]")
	}
	fmt.Fprintf(w, "echo  %d connections to %s, %d-byte binary messages, %d in flight each; server pid %s; %d CPUs on this host (clients and server share them)\n",
		r.N, r.URL, r.Size, r.Window, pid, r.HostCPUs)
	fmt.Fprintf(w, "%-8s %12s %12s %12s %17s %9s %9s %9s %9s %12s\n",
		"seconds", "echoes", "messages/s", "server CPU s", "per server CPU-s", "p50 µs", "p99 µs", "p999 µs", "max µs", "client CPU s")
	scpu, per := "-", "-"
	if r.ServerCPUMeasured {
		scpu, per = fmt.Sprintf("%.2f", r.ServerCPUSeconds), fmt.Sprintf("%.0f", r.PerServerCPUSec)
	}
	fmt.Fprintf(w, "%-8.2f %12d %12.0f %12s %17s %9.0f %9.0f %9.0f %9.0f %12.2f\n",
		r.Seconds, r.Echoed, r.PerSecond, scpu, per, r.RTTP50Micros, r.RTTP99Micros, r.RTTP999Micros, r.RTTMaxMicros, r.ClientCPUSeconds)
}
