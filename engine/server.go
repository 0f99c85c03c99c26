// Package engine is the WebSocket server core of wsd: a gnet event handler
// that accepts TCP connections, upgrades them from HTTP, decodes frames
// zero-copy and hands messages to the Handler of the matched route, with
// heartbeats and timeouts on a timing wheel per event loop.
//
// There is no goroutine per connection. Every connection belongs to the
// event loop that accepted it; its session, its timer and its writes are
// touched only from that loop. Handlers run on the loop and must not block.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/session"
)

// maxLoops bounds the number of event loops (a session stores its loop in
// a byte).
const maxLoops = 255

// Server is a WebSocket server on gnet.
type Server struct {
	cfg      Config
	log      *slog.Logger
	routes   []route
	timeouts session.Timeouts

	start   time.Time
	eng     gnet.Engine
	addr    net.Addr
	booted  chan struct{}
	stopped chan error
	running atomic.Bool

	loopsMu sync.Mutex
	loops   [maxLoops]atomic.Pointer[loop]
	nloops  atomic.Int32

	draining atomic.Bool

	refusedBacklog atomic.Uint64 // broadcasts refused with ErrBacklog

	sharedDeflaterMu sync.Mutex      // guards sharedDeflater and sharedZout
	sharedDeflater   *frame.Deflater // compresses broadcasts made outside the loops
	sharedZout       []byte
}

// New returns a server for cfg. Add routes with Handle, then Start it.
func New(cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("engine config: %w", err)
	}
	s := &Server{
		cfg:     cfg,
		log:     cfg.Logger,
		booted:  make(chan struct{}),
		stopped: make(chan error, 1),
	}
	s.timeouts = session.Timeouts{
		Handshake: cfg.ticks(cfg.HandshakeTimeout),
		Ping:      cfg.ticks(cfg.PingInterval),
		MaxMissed: uint8(cfg.MaxMissedPongs),
	}
	return s, nil
}

// Config returns the effective configuration (defaults filled in).
func (s *Server) Config() Config { return s.cfg }

// Handle serves WebSocket connections on path (exact match, query string
// ignored) with h. Call it before Start.
func (s *Server) Handle(path string, h Handler, opts RouteOptions) error {
	if s.running.Load() {
		return errors.New("engine: Handle after Start")
	}
	if !strings.HasPrefix(path, "/") {
		return fmt.Errorf("engine: route path %q must start with /", path)
	}
	for _, r := range s.routes {
		if r.path == path {
			return fmt.Errorf("engine: route %q registered twice", path)
		}
	}
	if len(s.routes) == 255 {
		return errors.New("engine: too many routes")
	}
	s.routes = append(s.routes, route{path: path, handler: h, protocols: opts.Subprotocols, auth: opts.Authenticate})
	return nil
}

// Start binds the listener and starts the event loops. It returns once the
// server accepts connections, or with the reason it cannot.
func (s *Server) Start() error {
	if len(s.routes) == 0 {
		return errors.New("engine: no routes")
	}
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("engine: already started")
	}
	s.start = time.Now()
	addr := "tcp://" + s.cfg.Addr
	go func() {
		s.stopped <- gnet.Run(s, addr,
			gnet.WithMulticore(true),
			gnet.WithNumEventLoop(s.cfg.Loops),
			gnet.WithLoadBalancing(gnet.LeastConnections),
			gnet.WithReuseAddr(true),
			gnet.WithTCPNoDelay(gnet.TCPNoDelay),
			gnet.WithTicker(true),
			gnet.WithLogger(gnetLogger{s.log}),
		)
	}()
	select {
	case <-s.booted:
		return nil
	case err := <-s.stopped:
		s.running.Store(false)
		if err == nil {
			err = errors.New("engine stopped during start")
		}
		return fmt.Errorf("listen on %s: %w", s.cfg.Addr, err)
	}
}

// Addr returns the address the server listens on (after Start).
func (s *Server) Addr() net.Addr { return s.addr }

// Draining reports whether Shutdown has begun.
func (s *Server) Draining() bool { return s.draining.Load() }

// Shutdown stops taking new connections, sends every open connection a
// close frame with 1001 (going away), waits until they are gone or ctx
// ends, then stops the event loops, closing whatever is left. Broadcasts
// fail with ErrServerClosed from the moment it is called.
func (s *Server) Shutdown(ctx context.Context) error {
	if !s.running.Load() {
		return nil
	}
	if s.draining.CompareAndSwap(false, true) {
		for _, l := range s.loopList() {
			_ = l.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
				l.enter()
				l.drain()
				l.leave()
				return nil
			}))
		}
	}
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	for s.OpenConnections() > 0 {
		select {
		case <-ctx.Done():
			s.log.Warn("drain deadline passed; closing remaining connections", "open", s.OpenConnections())
			goto stop
		case <-poll.C:
		}
	}
stop:
	stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.eng.Stop(stopCtx); err != nil {
		return fmt.Errorf("stop event loops: %w", err)
	}
	select {
	case err := <-s.stopped:
		s.running.Store(false)
		return err
	case <-stopCtx.Done():
		return errors.New("event loops did not stop in 10s")
	}
}

// loopList returns the loops that have had at least one connection.
func (s *Server) loopList() []*loop {
	n := int(s.nloops.Load())
	ls := make([]*loop, 0, n)
	for i := range n {
		if l := s.loops[i].Load(); l != nil {
			ls = append(ls, l)
		}
	}
	return ls
}

// loopOf returns the state of event loop el, creating it on first use.
// gnet does not enumerate its loops, so each is registered when its first
// connection opens.
func (s *Server) loopOf(el gnet.EventLoop) *loop {
	n := int(s.nloops.Load())
	for i := range n {
		if l := s.loops[i].Load(); l != nil && l.el == el {
			return l
		}
	}
	s.loopsMu.Lock()
	defer s.loopsMu.Unlock()
	n = int(s.nloops.Load())
	for i := range n {
		if l := s.loops[i].Load(); l.el == el {
			return l
		}
	}
	if n == maxLoops {
		panic("engine: more event loops than sessions can address")
	}
	l := newLoop(s, uint8(n), el)
	s.loops[n].Store(l)
	s.nloops.Store(int32(n + 1))
	return l
}

// The gnet.EventHandler methods.

// OnBoot records the engine and the bound address.
func (s *Server) OnBoot(eng gnet.Engine) gnet.Action {
	s.eng = eng
	if fd, err := eng.Dup(); err == nil {
		if sa, err := unix.Getsockname(fd); err == nil {
			switch a := sa.(type) {
			case *unix.SockaddrInet4:
				s.addr = &net.TCPAddr{IP: net.IP(a.Addr[:]).To16(), Port: a.Port}
			case *unix.SockaddrInet6:
				s.addr = &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
			}
		}
		_ = unix.Close(fd)
	}
	if s.addr == nil { // Dup failed: report what was configured
		s.addr = &net.TCPAddr{}
		if a, err := net.ResolveTCPAddr("tcp", s.cfg.Addr); err == nil {
			s.addr = a
		}
	}
	s.log.Info("listening", "addr", s.addr.String(), "loops", s.cfg.Loops)
	close(s.booted)
	return gnet.None
}

// OnShutdown runs after every loop has stopped.
func (s *Server) OnShutdown(gnet.Engine) {}

// OnOpen registers a new TCP connection as a handshaking session.
func (s *Server) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	l := s.loopOf(c.EventLoop())
	if s.draining.Load() {
		l.metrics.accepted.inc()
		l.metrics.handshakeFailures[failDraining].inc()
		l.metrics.bytesOut.add(uint64(len(respDraining)))
		return respDraining, gnet.Close
	}
	return l.open(c)
}

// OnTraffic runs when a connection has new bytes.
func (s *Server) OnTraffic(c gnet.Conn) gnet.Action {
	ss, _ := c.Context().(*session.Session)
	if ss == nil {
		return gnet.Close
	}
	l := s.loops[ss.Loop].Load()
	l.enter()
	act := l.traffic(c, ss)
	l.leave()
	return act
}

// OnClose marks a connection's session gone; its handler hears of it when
// the loop's current callback, if any, has returned.
func (s *Server) OnClose(c gnet.Conn, err error) gnet.Action {
	ss, _ := c.Context().(*session.Session)
	if ss == nil {
		return gnet.None
	}
	c.SetContext(nil)
	s.loops[ss.Loop].Load().connGone(c, ss, err)
	return gnet.None
}

// OnTick advances every loop's timing wheel, on the loop itself.
func (s *Server) OnTick() (time.Duration, gnet.Action) {
	for i := range int(s.nloops.Load()) {
		l := s.loops[i].Load()
		_ = l.el.Execute(context.Background(), l.tickTask)
	}
	return s.cfg.Tick, gnet.None
}

// tickOf returns the first wheel tick that begins at or after t (at least
// 1): a timer due then never fires before t.
func (s *Server) tickOf(t time.Time) uint32 {
	d := t.Sub(s.start)
	if d <= 0 {
		return 1
	}
	n := (d + s.cfg.Tick - 1) / s.cfg.Tick
	if n > 1<<31 {
		n = 1 << 31 // far away: the wheel's tick arithmetic wraps at 2^32
	}
	return max(uint32(n), 1)
}

// Loops returns how many event loops have started (a loop starts with its
// first connection); loop indexes are 0 to Loops()-1.
func (s *Server) Loops() int { return int(s.nloops.Load()) }

// Execute runs fn on event loop `loop`'s goroutine, as a task between
// its callbacks, where fn may use that loop's Conns. It returns at once;
// fn runs later (never if the server stops first, which is reported as
// ErrServerClosed when known now).
func (s *Server) Execute(loop int, fn func()) error {
	if loop < 0 || loop >= s.Loops() {
		return fmt.Errorf("engine: no event loop %d", loop)
	}
	l := s.loops[loop].Load()
	err := l.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
		l.enter()
		defer l.leave()
		defer l.survivePanic("task panicked", "")
		fn()
		return nil
	}))
	if err != nil {
		return fmt.Errorf("%w (event loop %d: %v)", ErrServerClosed, loop, err)
	}
	return nil
}

// now returns the current wheel tick.
func (s *Server) now() uint32 {
	return uint32(time.Since(s.start) / s.cfg.Tick)
}

// gnetLogger routes gnet's own logs into slog.
type gnetLogger struct{ l *slog.Logger }

func (g gnetLogger) Debugf(f string, a ...any) {
	if g.l.Enabled(context.Background(), slog.LevelDebug) {
		g.l.Debug(fmt.Sprintf(f, a...), "component", "gnet")
	}
}
func (g gnetLogger) Infof(f string, a ...any)  { g.l.Info(fmt.Sprintf(f, a...), "component", "gnet") }
func (g gnetLogger) Warnf(f string, a ...any)  { g.l.Warn(fmt.Sprintf(f, a...), "component", "gnet") }
func (g gnetLogger) Errorf(f string, a ...any) { g.l.Error(fmt.Sprintf(f, a...), "component", "gnet") }
func (g gnetLogger) Fatalf(f string, a ...any) { g.l.Error(fmt.Sprintf(f, a...), "component", "gnet") }
