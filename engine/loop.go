package engine

import (
	"context"
	"log/slog"
	"net"
	"sync/atomic"

	"github.com/wsdproject/wsd/internal/gnet"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/session"
)

// maxIdleBuffer is the largest scratch buffer a loop keeps between uses.
const maxIdleBuffer = 1 << 20

// loop is the state of one gnet event loop. Everything in it, and every
// session in its slab, is owned by that loop's goroutine: it is touched
// only from gnet callbacks for its connections and from tasks run on it
// with EventLoop.Execute. Elsewhere only the metrics, slabCap and the
// inbox (under its mutex) are touched.
type loop struct {
	srv   *Server
	idx   uint8
	el    gnet.EventLoop
	log   *slog.Logger
	slab  *session.Slab
	wheel *session.Wheel
	hs    *handshaker
	proxy proxyParser

	// depth counts the entries from gnet into the loop in progress (a
	// callback for a connection, or a task). Connections that gnet closes
	// while depth > 0 (a failed write, our own Close) are queued in gone
	// and told to their handler when the outermost entry ends, so handler
	// callbacks never nest.
	depth int
	gone  []goneConn

	src countingSource   // the current connection, counting bytes consumed
	cur *session.Session // the connection whose callback is running
	out []byte           // frames for cur, written in one go when its callback ends
	tmp []byte           // a frame for another connection
	hdr []byte           // a frame header for writev
	iov [][]byte

	deflater *frame.Deflater
	inflater frame.Inflater
	zin      []byte // a decompressed inbound message
	zout     []byte // a compressed outbound message
	xcode    []byte // a message in a route's Alternate encoding
	xframe   []byte // a frame in an Alternate encoding not kept with its Frame

	members [][]int32        // per route: slab indices of its open sessions, for broadcasts
	clients [][][16]byte     // per slab slot, in pages of clientPage: the client address a trusted proxy gave
	values  [][]any          // per slab slot, in pages of valuesPage: the handler's value for the connection (Conn.SetValue)
	backlog []session.Handle // sessions that may have outbound bytes in user space
	inbox   inbox            // broadcasts posted by other goroutines

	tickTask, inboxTask gnet.Runnable
	fireFn              func(int32)

	metrics loopMetrics
	slabCap atomic.Int64 // for /metrics
}

// goneConn is a connection gnet has closed whose handler has not been told.
type goneConn struct {
	idx    int32
	opened bool // the handshake had completed: OnClose is due
	addr   net.Addr
	err    error
}

func newLoop(s *Server, idx uint8, el gnet.EventLoop) *loop {
	l := &loop{
		srv:     s,
		idx:     idx,
		el:      el,
		log:     s.log.With("loop", idx),
		slab:    session.NewSlab(),
		hdr:     make([]byte, 0, frame.MaxHeaderSize),
		iov:     make([][]byte, 0, 2),
		members: make([][]int32, len(s.routes)),
	}
	c := &s.cfg
	slots := max(c.ticks(c.PingInterval), c.ticks(c.HandshakeTimeout), c.ticks(c.CloseTimeout)) + 2
	l.wheel = session.NewWheel(l.slab, int(slots), s.now())
	l.hs = newHandshaker(s.routes, c.Compression, c.MaxHandshakeBytes, s.closing.Load)
	l.hs.wantOrigin = s.admit.checkOrigin
	if c.Compression {
		l.deflater = frame.NewDeflater(c.CompressionLevel)
	}
	l.tickTask = gnet.RunnableFunc(func(context.Context) error {
		// A connection the acceptor handed over is adopted when its first
		// bytes arrive; one that sends nothing is adopted here, so its
		// handshake timer starts at most a tick late.
		l.el.AdoptPending()
		l.enter()
		l.tick()
		l.leave()
		return nil
	})
	l.inboxTask = gnet.RunnableFunc(func(context.Context) error {
		l.enter()
		l.drainInbox()
		l.leave()
		return nil
	})
	l.fireFn = l.fire
	return l
}

// enter and leave bracket every entry from gnet into the loop. When the
// outermost entry leaves, the connections gnet closed meanwhile are
// settled: their handlers' OnClose runs (still inside the entry, so that
// closes those cause are queued too) and their slots are freed.
func (l *loop) enter() { l.depth++ }

func (l *loop) leave() {
	if l.depth == 1 {
		if len(l.gone) > 0 {
			l.settle()
		}
		// Frames this entry fanned out to its own loop go out now rather
		// than in a task of their own (a loop posts to itself too, so that
		// a fan-out never delivers inside the callback that made it).
		if l.inbox.bytes.Load() > 0 {
			l.drainInbox()
			if len(l.gone) > 0 {
				l.settle()
			}
		}
	}
	l.depth--
}

// countingSource is the frame.Source of the connection being served; it
// counts the bytes consumed for the bytes-in metric.
type countingSource struct {
	c gnet.Conn
	n uint64
}

func (s *countingSource) Peek(n int) ([]byte, error) { return s.c.Peek(n) }
func (s *countingSource) InboundBuffered() int       { return s.c.InboundBuffered() }
func (s *countingSource) Discard(n int) (int, error) {
	m, err := s.c.Discard(n)
	s.n += uint64(m)
	return m, err
}

func (l *loop) connID(ss *session.Session) uint64 {
	return makeConnID(l.idx, l.slab.HandleOf(ss.Self))
}

func (l *loop) debug(msg string, ss *session.Session, args ...any) {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.log.Debug(msg, append([]any{"conn", l.connID(ss), "client", l.clientAddr(ss, ss.Conn)}, args...)...)
	}
}

// deadline returns the tick at which a timer of n ticks started now
// fires: n whole ticks after the current real tick has ended, so it never
// fires early, even if the wheel lags behind the clock.
func (l *loop) deadline(n uint32) uint32 { return l.srv.now() + n + 1 }

// open registers a new TCP connection as a handshaking session.
func (l *loop) open(c gnet.Conn) ([]byte, gnet.Action) {
	l.metrics.accepted.inc()
	h, ss := l.slab.Alloc()
	if h.Index >= 1<<24 { // a connection id holds 24 bits of slot index
		l.slab.Free(h.Index)
		l.srv.releaseAdmission(c.RemoteAddr())
		l.metrics.handshakeFailures[failFull].inc()
		l.metrics.bytesOut.add(uint64(len(respFull)))
		return respFull, gnet.Close
	}
	ss.Conn = c
	ss.Loop = l.idx
	if a := l.srv.admit; len(a.trusted) > 0 || a.ips != nil {
		// The same rule atAccept applied: a connection from a trusted
		// proxy waits for its client's address; any other counted under
		// its peer's address when per-address rules are on.
		if a.trustedPeer(addrOf(c.RemoteAddr())) {
			ss.Flags |= session.FlagProxied
		} else if a.ips != nil {
			ss.Flags |= session.FlagPeerTracked
		}
	}
	c.SetContext(ss)
	l.wheel.Schedule(h.Index, l.deadline(l.srv.timeouts.Handshake))
	ss.MsgTAT = msgNow() // the accept time, for the handshake latency
	l.metrics.open.inc()
	l.slabCap.Store(int64(l.slab.Cap()))
	return nil, gnet.None
}

// traffic handles new bytes on a connection. The caller brackets it with
// enter and leave.
func (l *loop) traffic(c gnet.Conn, ss *session.Session) gnet.Action {
	l.src.c, l.src.n = c, 0
	defer func() { l.metrics.bytesIn.add(l.src.n) }()

	if ss.Has(session.FlagDiscard) {
		_, _ = l.src.Discard(c.InboundBuffered())
		return gnet.None
	}
	if ss.State == session.Handshaking {
		if act := l.handshake(c, ss); act != gnet.None {
			return act // rejected: the HTTP error is written
		}
		switch ss.State {
		case session.Handshaking:
			return gnet.None // the request is not all here yet
		case session.Gone:
			return l.flush(c, ss) // it died writing the 101 or in OnOpen
		}
		// Upgraded: OnOpen has run and may have written (or closed); what
		// it wrote is in l.out, and the frames that came with the request
		// follow.
	}
	session.Touch(ss, l.wheel.Now())
	start := l.src.n
	l.readFrames(ss)
	l.chargeBytes(ss, l.src.n-start)
	return l.flush(c, ss)
}

// flush writes the frames batched for ss during its callback and, when ss
// is closing, takes the next step of the close.
func (l *loop) flush(c gnet.Conn, ss *session.Session) gnet.Action {
	l.cur = nil
	if len(l.out) > 0 && ss.State != session.Gone {
		l.flushOut(ss)
	}
	if cap(l.out) > maxIdleBuffer {
		l.out = nil
	}
	l.out = l.out[:0]
	if ss.State == session.Closing {
		return l.finish(c, ss)
	}
	return gnet.None
}
