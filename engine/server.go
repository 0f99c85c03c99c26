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
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wsdproject/wsd/internal/gnet"

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

	start    time.Time
	cli      *gnet.Client // gnet's event loops, without a gnet listener (see listen.go)
	ln       *listener
	acceptWG sync.WaitGroup
	addr     net.Addr
	running  atomic.Bool

	admit        *admission
	lim          connLimits
	acceptErrors atomic.Uint64
	logLimited   logLimiter
	janitorStop  chan struct{}

	loopsMu sync.Mutex
	loops   [maxLoops]atomic.Pointer[loop]
	nloops  atomic.Int32

	// Shutdown sets closing (no new connections, no new Hold), waits for
	// inflight to reach zero, then sets draining (no more fan-outs) and
	// sends the 1001s. inflight counts Holds and the Broadcast and Fanout
	// calls under way: what was accepted before the drain is in the loops'
	// inboxes before the 1001, and delivered before it.
	closing  atomic.Bool
	draining atomic.Bool
	inflight atomic.Int64

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
		cfg:         cfg,
		log:         cfg.Logger,
		admit:       newAdmission(&cfg),
		lim:         newConnLimits(&cfg),
		janitorStop: make(chan struct{}),
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
	r := route{path: path, handler: h, protocols: opts.Subprotocols, auth: opts.Authenticate}
	if a := opts.Alternate; a != nil {
		i := slices.Index(opts.Subprotocols, a.Subprotocol)
		switch {
		case a.Encode == nil:
			return errors.New("engine: an Alternate needs Encode")
		case a.Op != frame.OpText && a.Op != frame.OpBinary:
			return errors.New("engine: an Alternate's Op is text or binary")
		case i < 0 || i >= 255:
			return fmt.Errorf("engine: the Alternate's subprotocol %q is not among the route's", a.Subprotocol)
		}
		r.alt, r.altProto = a, uint8(i+1)
	}
	s.routes = append(s.routes, r)
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
	ln, err := s.listen()
	if err != nil {
		s.running.Store(false)
		return fmt.Errorf("listen on %s: %w", s.cfg.Addr, err)
	}
	cli, err := gnet.NewClient(s,
		gnet.WithMulticore(true),
		gnet.WithNumEventLoop(s.cfg.Loops),
		gnet.WithLoadBalancing(gnet.LeastConnections),
		// TCP_NODELAY is set on the listening socket and inherited (see
		// listen); gnet setting it again would cost a syscall a connection.
		gnet.WithTCPNoDelay(gnet.TCPDelay),
		gnet.WithTicker(true),
		gnet.WithLogger(gnetLogger{s.log}),
	)
	if err == nil {
		err = cli.Start()
	}
	if err != nil {
		_ = ln.Close()
		s.running.Store(false)
		return fmt.Errorf("start event loops: %w", err)
	}
	s.cli, s.ln, s.addr = cli, ln, ln.Addr()
	for _, el := range cli.EventLoops() {
		s.loopOf(el) // every loop from the start: ticks and the drain must reach loops whose connections are all pending
	}
	s.log.Info("listening", "addr", s.addr.String(), "loops", s.cfg.Loops, "max_conns", s.cfg.MaxConns)
	if s.admit.ips != nil {
		go s.janitor()
	}
	for range acceptors {
		s.acceptWG.Add(1)
		go s.acceptLoop(ln, &s.acceptWG)
	}
	return nil
}

// janitor forgets idle per-address entries and counts bans in force.
func (s *Server) janitor() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.janitorStop:
			return
		case <-t.C:
			s.admit.ips.sweep(monoNow())
		}
	}
}

// Addr returns the address the server listens on (after Start).
func (s *Server) Addr() net.Addr { return s.addr }

// Hold keeps a drain from starting while the caller accepts something it
// will fan out (a publication: Hold, store it, Fanout, Release), so that
// what it accepted reaches the connections before their 1001. It returns
// false, and holds nothing, once Shutdown has begun: the caller refuses.
// Every true is matched by one Release, soon (Shutdown waits for it).
func (s *Server) Hold() bool {
	s.inflight.Add(1)
	if s.closing.Load() {
		s.inflight.Add(-1)
		return false
	}
	return true
}

// Release ends a Hold.
func (s *Server) Release() { s.inflight.Add(-1) }

// waitInflight waits until no Hold, Broadcast or Fanout is under way, or
// ctx ends (a broker that hangs does not hang the drain past its deadline).
func (s *Server) waitInflight(ctx context.Context) {
	for s.inflight.Load() > 0 && ctx.Err() == nil {
		time.Sleep(50 * time.Microsecond)
	}
}

// Ready reports whether the server takes new connections, and if not why:
// it is draining, or at MaxConns.
func (s *Server) Ready() (bool, string) {
	switch {
	case s.closing.Load():
		return false, "draining"
	case s.admit.conns.Load() >= s.admit.maxConns:
		return false, "at --max-conns"
	}
	return true, ""
}

// Draining reports whether Shutdown has begun.
func (s *Server) Draining() bool { return s.closing.Load() }

// Shutdown closes the listener at once (new TCP connections are refused
// by the kernel from then on), sends every open connection a close frame
// with 1001 (going away) whose reason carries a retry hint, waits until
// they are gone or ctx ends, then stops the event loops, closing whatever
// is left. Broadcasts fail with ErrServerClosed from the moment it is
// called.
func (s *Server) Shutdown(ctx context.Context) error {
	if !s.running.Load() {
		return nil
	}
	if s.closing.CompareAndSwap(false, true) {
		_ = s.ln.Close()
		s.acceptWG.Wait() // a connection being handed over lands before the loops drain
		s.waitInflight(ctx)
		s.draining.Store(true)
		s.waitInflight(ctx) // fan-outs that began between the two
		for _, l := range s.loopList() {
			_ = l.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
				l.el.AdoptPending() // handed over before the listener closed, no bytes yet
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
	if !s.running.CompareAndSwap(true, false) {
		return nil
	}
	if s.admit.ips != nil {
		close(s.janitorStop)
	}
	done := make(chan error, 1)
	go func() { done <- s.cli.Stop() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("stop event loops: %w", err)
		}
		return nil
	case <-time.After(10 * time.Second):
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

// loopOf returns the state of event loop el, creating it on first use
// (Start creates every loop's).
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

// OnBoot runs when gnet starts its loops; Start has all it needs.
func (s *Server) OnBoot(gnet.Engine) gnet.Action { return gnet.None }

// OnShutdown runs after every loop has stopped.
func (s *Server) OnShutdown(gnet.Engine) {}

// OnOpen registers a new TCP connection as a handshaking session.
func (s *Server) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	l := s.loopOf(c.EventLoop())
	if s.closing.Load() {
		s.releaseAdmission(c.RemoteAddr())
		l.metrics.accepted.inc()
		l.metrics.handshakeFailures[failDraining].inc()
		l.metrics.bytesOut.add(uint64(len(respDraining)))
		return respDraining, gnet.Close
	}
	return l.open(c)
}

// releaseAdmission returns the places under the global and per-address
// caps that atAccept took for a connection that gets no session.
func (s *Server) releaseAdmission(peer net.Addr) {
	a := s.admit
	a.release()
	if a.ips != nil {
		if p := addrOf(peer); !a.trustedPeer(p) {
			a.ips.release(p)
		}
	}
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
