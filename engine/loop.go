package engine

import (
	"context"
	"log/slog"
	"sync/atomic"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/session"
)

// Frames sent as they are.
var (
	pingFrame        = frame.AppendFrame(nil, frame.OpPing, 0, nil)
	pingTimeoutClose = frame.AppendClose(nil, frame.CloseGoingAway, "ping timeout")
)

// bigWrite is the payload size from which a frame is written with writev
// (header and payload as they are) instead of being copied into a batch.
const bigWrite = 16 << 10

// maxIdleBuffer is the largest scratch buffer a loop keeps between uses.
const maxIdleBuffer = 1 << 20

// loop is the state of one gnet event loop. Everything in it, and every
// session in its slab, is owned by that loop's goroutine: it is touched
// only from gnet callbacks for its connections and from tasks run on it
// with EventLoop.Execute. Only metrics and slabCap are read elsewhere.
type loop struct {
	srv   *Server
	idx   uint8
	el    gnet.EventLoop
	log   *slog.Logger
	slab  *session.Slab
	wheel *session.Wheel
	hs    *handshaker

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

	tickTask gnet.Runnable
	fireFn   func(int32)

	metrics loopMetrics
	slabCap atomic.Int64 // for /metrics
}

func newLoop(s *Server, idx uint8, el gnet.EventLoop) *loop {
	l := &loop{
		srv:  s,
		idx:  idx,
		el:   el,
		log:  s.log.With("loop", idx),
		slab: session.NewSlab(),
		hdr:  make([]byte, 0, frame.MaxHeaderSize),
		iov:  make([][]byte, 0, 2),
	}
	c := &s.cfg
	slots := max(c.ticks(c.PingInterval), c.ticks(c.HandshakeTimeout), c.ticks(c.CloseTimeout)) + 1
	l.wheel = session.NewWheel(l.slab, int(slots), s.now())
	l.hs = newHandshaker(s.routes, c.Compression, c.MaxHandshakeBytes, s.draining.Load)
	if c.Compression {
		l.deflater = frame.NewDeflater(c.CompressionLevel)
	}
	l.tickTask = gnet.RunnableFunc(func(context.Context) error {
		l.tick()
		return nil
	})
	l.fireFn = l.fire
	return l
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
		l.log.Debug(msg, append([]any{"conn", l.connID(ss)}, args...)...)
	}
}

// open registers a new TCP connection as a handshaking session.
func (l *loop) open(c gnet.Conn) ([]byte, gnet.Action) {
	l.metrics.accepted.inc()
	h, ss := l.slab.Alloc()
	if h.Index >= 1<<24 { // a connection id holds 24 bits of slot index
		l.slab.Free(h.Index)
		l.metrics.handshakeFailures[failFull].inc()
		return respFull, gnet.Close
	}
	ss.Conn = c
	ss.Loop = l.idx
	c.SetContext(ss)
	l.wheel.Schedule(h.Index, l.wheel.Now()+l.srv.timeouts.Handshake)
	l.metrics.open.inc()
	l.slabCap.Store(int64(l.slab.Cap()))
	return nil, gnet.None
}

// traffic handles new bytes on a connection.
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
		case session.Free:
			return gnet.None // the connection died writing the 101
		}
		// Upgraded: OnOpen has run and may have written (or closed); what
		// it wrote is in l.out, and the frames that came with the request
		// follow.
	}
	session.Touch(ss, l.wheel.Now())
	l.readFrames(ss)
	return l.flush(c, ss)
}

// flush writes the frames batched for ss during its callback and, when ss
// is closing, takes the next step of the close.
func (l *loop) flush(c gnet.Conn, ss *session.Session) gnet.Action {
	l.cur = nil
	if len(l.out) > 0 && ss.State != session.Free {
		_, _ = c.Write(l.out)
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

// handshake reads the upgrade request once it is all buffered and answers it.
func (l *loop) handshake(c gnet.Conn, ss *session.Session) gnet.Action {
	limit := l.srv.cfg.MaxHandshakeBytes
	n := c.InboundBuffered()
	if n == 0 {
		return gnet.None
	}
	buf, err := c.Peek(min(n, limit))
	if err != nil {
		return gnet.None
	}
	if buf[0] < 'A' || buf[0] > 'Z' { // not an HTTP method: TLS, garbage
		return l.reject(c, ss, failBadRequest, respBadRequest)
	}
	end := endOfRequest(buf)
	if end == 0 {
		if n >= limit {
			return l.reject(c, ss, failTooLarge, respTooLarge)
		}
		return gnet.None
	}
	res := l.hs.upgrade(buf[:end])
	_, _ = l.src.Discard(end)
	if !res.ok {
		return l.reject(c, ss, res.reason, res.response)
	}
	ss.Endpoint = uint8(res.route)
	ss.Proto = uint8(res.proto)
	if res.deflate {
		ss.Flags |= session.FlagDeflate
		ss.Window = res.window
	}
	_, _ = c.Write(res.response)
	if ss.State == session.Free {
		return gnet.None
	}
	l.srv.timeouts.Opened(l.wheel, ss.Self)
	l.metrics.handshakes.inc()
	l.debug("connection opened", ss, "remote", c.RemoteAddr(), "path", l.srv.routes[ss.Endpoint].path,
		"deflate", ss.Has(session.FlagDeflate))
	l.cur = ss
	l.srv.routes[ss.Endpoint].handler.OnOpen(Conn{l, ss})
	return gnet.None
}

// reject answers a failed handshake with an HTTP error and closes.
func (l *loop) reject(c gnet.Conn, ss *session.Session, reason failReason, resp []byte) gnet.Action {
	l.metrics.handshakeFailures[reason].inc()
	ss.Flags |= session.FlagCloseSent
	l.debug("handshake rejected", ss, "remote", c.RemoteAddr(), "reason", reason.String())
	_, _ = c.Discard(c.InboundBuffered())
	_, _ = c.Write(resp)
	return gnet.Close
}

// readFrames decodes and dispatches every complete frame buffered for ss.
// Writes to ss meanwhile are batched in l.out: the caller must flush.
func (l *loop) readFrames(ss *session.Session) {
	l.cur = ss
	lim := frame.Limits{MaxMessage: l.srv.cfg.MaxMessageBytes, Compression: ss.Has(session.FlagDeflate)}
	for ss.State != session.Free {
		if ss.Has(session.FlagDiscard) {
			_, _ = l.src.Discard(l.src.InboundBuffered())
			return
		}
		ev, err := ss.Decoder.Next(&l.src, lim)
		if err != nil {
			l.fail(ss, err)
			continue
		}
		switch ev.Kind {
		case frame.KindNone:
			return
		case frame.KindControl:
			l.control(ss, ev)
		case frame.KindMessage:
			if ss.State == session.Open {
				l.message(ss, ev)
			}
		}
	}
}

func (l *loop) control(ss *session.Session, ev frame.Event) {
	switch ev.Op {
	case frame.OpPing:
		if !ss.Has(session.FlagCloseSent) {
			l.writeFrame(ss, frame.OpPong, 0, ev.Payload)
		}
	case frame.OpClose:
		code, _, err := frame.ParseClose(ev.Payload)
		if err != nil {
			l.fail(ss, err)
			return
		}
		ss.Flags |= session.FlagCloseReceived | session.FlagDiscard
		if !ss.Has(session.FlagCloseSent) {
			// Echo the peer's code (RFC 6455 section 5.5.1).
			l.sendClose(ss, code, "")
			ss.CloseCode = code
		}
	}
}

func (l *loop) message(ss *session.Session, ev frame.Event) {
	payload := ev.Payload
	if ev.Compressed {
		out, err := l.inflater.Inflate(l.zin[:0], payload, l.srv.cfg.MaxMessageBytes)
		l.zin = out
		if err == nil && ev.Op == frame.OpText && !frame.ValidUTF8(out) {
			err = frame.ErrInvalidUTF8
		}
		if err != nil {
			l.fail(ss, err)
			return
		}
		payload = out
	}
	l.metrics.messagesIn.inc()
	l.srv.routes[ss.Endpoint].handler.OnMessage(Conn{l, ss}, ev.Op, payload)
	if cap(l.zin) > maxIdleBuffer {
		l.zin = nil
	}
}

// fail ends a connection after a protocol violation: it sends a close frame
// with the violation's code, stops decoding, and closes once that frame is
// out.
func (l *loop) fail(ss *session.Session, err error) {
	fe, ok := err.(*frame.Error)
	if !ok {
		fe = &frame.Error{Code: frame.CloseInternalError, Reason: "internal error"}
	}
	l.debug("protocol error", ss, "code", int(fe.Code), "reason", fe.Reason)
	if !ss.Has(session.FlagCloseSent) {
		l.sendClose(ss, fe.Code, fe.Reason)
	}
	ss.CloseCode = fe.Code
	ss.Flags |= session.FlagDiscard
}

// sendClose starts the close handshake from our side.
func (l *loop) sendClose(ss *session.Session, code frame.CloseCode, reason string) {
	if ss.Has(session.FlagCloseSent) {
		return
	}
	ss.Flags |= session.FlagCloseSent
	ss.State = session.Closing
	if ss.CloseCode == 0 {
		ss.CloseCode = code
	}
	l.writeRaw(ss, frame.AppendClose(l.tmp[:0], code, reason))
	if ss.State == session.Free {
		return
	}
	ss.Deadline = l.wheel.Now() + l.srv.cfg.ticks(l.srv.cfg.CloseTimeout)
	l.wheel.Schedule(ss.Self, ss.Deadline)
}

// finish takes a Closing session as far as it can go now: once the close
// handshake is done (or failed) and our bytes are out, the TCP connection
// is closed. After a clean handshake the peer has nothing more to send, so
// it is closed at once; after a failure it is half-closed first and the
// peer's remaining bytes are drained, so that our close frame is not lost
// to a reset. The wheel enforces the close deadline.
func (l *loop) finish(c gnet.Conn, ss *session.Session) gnet.Action {
	if !ss.Has(session.FlagCloseReceived) && !ss.Has(session.FlagDiscard) {
		return gnet.None // waiting for the peer's close frame
	}
	if c.OutboundBuffered() > 0 {
		l.wheel.Schedule(ss.Self, l.wheel.Now()+1) // check again next tick
		return gnet.None
	}
	if ss.Has(session.FlagCloseReceived) {
		return gnet.Close
	}
	if !ss.Has(session.FlagShutdown) {
		ss.Flags |= session.FlagShutdown
		if err := unix.Shutdown(c.Fd(), unix.SHUT_WR); err != nil {
			return gnet.Close
		}
	}
	l.wheel.Schedule(ss.Self, ss.Deadline)
	return gnet.None
}

// closed runs when gnet has closed a connection: it tells the handler and
// frees the session.
func (l *loop) closed(ss *session.Session, err error) {
	opened := ss.State == session.Open || ss.State == session.Closing
	code := ss.CloseCode
	if code == 0 {
		code = frame.CloseAbnormal
	}
	if ss.State == session.Handshaking && !ss.Has(session.FlagCloseSent) {
		l.metrics.handshakeFailures[failAborted].inc()
	}
	if opened {
		ss.State = session.Closing // no more writes
		ss.Flags |= session.FlagCloseSent
		l.srv.routes[ss.Endpoint].handler.OnClose(Conn{l, ss}, code)
		l.metrics.closed.inc()
		l.metrics.closedByCode[closeBucket(code)].inc()
		l.debug("connection closed", ss, "code", int(code), "err", err)
	}
	l.metrics.open.dec()
	if l.cur == ss {
		l.cur = nil
	}
	l.wheel.Cancel(ss.Self)
	ss.Decoder.Reset()
	l.slab.Free(ss.Self)
}

// tick advances the timing wheel to the current time.
func (l *loop) tick() {
	l.wheel.Advance(l.srv.now(), l.fireFn)
	l.slabCap.Store(int64(l.slab.Cap()))
}

// fire acts on a session whose timer came due.
func (l *loop) fire(idx int32) {
	ss := l.slab.At(idx)
	c := ss.Conn
	switch l.srv.timeouts.Expire(l.wheel, idx) {
	case session.Rescheduled:
	case session.SendPing:
		l.metrics.pings.inc()
		l.metrics.bytesOut.add(uint64(len(pingFrame)))
		_, _ = c.Write(pingFrame)
	case session.HeartbeatTimeout:
		l.metrics.heartbeatTimeouts.inc()
		l.debug("heartbeat timeout", ss, "missed", ss.Missed)
		ss.Flags |= session.FlagCloseSent
		_, _ = c.Write(pingTimeoutClose)
		_ = l.el.Close(c)
	case session.HandshakeTimeout:
		ss.Flags |= session.FlagCloseSent
		l.metrics.handshakeFailures[failTimeout].inc()
		l.debug("handshake timeout", ss, "remote", c.RemoteAddr())
		_, _ = c.Write(respTimeout)
		_ = l.el.Close(c)
	case session.CloseDue:
		if int32(l.wheel.Now()-ss.Deadline) >= 0 {
			_ = l.el.Close(c)
			return
		}
		if l.finish(c, ss) == gnet.Close {
			_ = l.el.Close(c)
		}
	}
}

// drain starts closing every connection of the loop for shutdown.
func (l *loop) drain() {
	l.slab.Each(func(_ int32, ss *session.Session) bool {
		switch ss.State {
		case session.Handshaking:
			ss.Flags |= session.FlagCloseSent
			l.metrics.handshakeFailures[failDraining].inc()
			_, _ = ss.Conn.Write(respDraining)
			_ = l.el.Close(ss.Conn)
		case session.Open:
			l.sendClose(ss, frame.CloseGoingAway, "server shutting down")
		}
		return true
	})
}

// writeMessage sends a data message to ss, compressed if ss negotiated
// permessage-deflate and the message is worth it.
func (l *loop) writeMessage(ss *session.Session, op frame.OpCode, p []byte) {
	var rsv byte
	if ss.Has(session.FlagDeflate) && len(p) >= l.srv.cfg.CompressionMinBytes {
		z, err := l.deflater.Deflate(l.zout[:0], p, int(ss.Window))
		if err == nil {
			l.zout, p, rsv = z, z, frame.Rsv1
		}
	}
	l.metrics.messagesOut.inc()
	l.writeFrame(ss, op, rsv, p)
	if cap(l.zout) > maxIdleBuffer {
		l.zout = nil
	}
}

// writeFrame sends one frame to ss: batched if ss is the connection being
// served, written at once otherwise.
func (l *loop) writeFrame(ss *session.Session, op frame.OpCode, rsv byte, p []byte) {
	h := frame.Header{Fin: true, Rsv: rsv, OpCode: op, Length: int64(len(p))}
	l.metrics.bytesOut.add(uint64(frame.HeaderSize(len(p), false) + len(p)))
	if len(p) < bigWrite {
		if ss == l.cur {
			l.out = append(frame.AppendHeader(l.out, h), p...)
			return
		}
		l.tmp = append(frame.AppendHeader(l.tmp[:0], h), p...)
		_, _ = ss.Conn.Write(l.tmp)
		return
	}
	// Large payload: write header and payload as they are, after whatever
	// is batched for the connection, so that order holds.
	if ss == l.cur && len(l.out) > 0 {
		_, _ = ss.Conn.Write(l.out)
		l.out = l.out[:0]
		if ss.State == session.Free {
			return
		}
	}
	l.hdr = frame.AppendHeader(l.hdr[:0], h)
	l.iov = append(l.iov[:0], l.hdr, p)
	_, _ = ss.Conn.Writev(l.iov)
	l.iov[0], l.iov[1] = nil, nil
}

// writeRaw sends bytes that are already a frame.
func (l *loop) writeRaw(ss *session.Session, b []byte) {
	l.metrics.bytesOut.add(uint64(len(b)))
	if ss == l.cur {
		l.out = append(l.out, b...)
		return
	}
	_, _ = ss.Conn.Write(b)
}

// broadcastMsg is one message for every connection of a route, encoded
// once; the loops share it read-only.
type broadcastMsg struct {
	route      uint8
	plain      []byte // the frame
	compressed []byte // the frame compressed (full window), or nil
}

// deliver writes a broadcast to every open connection of its route on this loop.
func (l *loop) deliver(b *broadcastMsg) {
	l.slab.Each(func(_ int32, ss *session.Session) bool {
		if ss.State != session.Open || ss.Endpoint != b.route {
			return true
		}
		f := b.plain
		if b.compressed != nil && ss.Has(session.FlagDeflate) && ss.Window == 15 {
			f = b.compressed
		}
		l.metrics.messagesOut.inc()
		l.writeRaw(ss, f)
		return true
	})
}
