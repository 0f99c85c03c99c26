package engine

import (
	"fmt"
	"runtime/debug"

	"github.com/wsdproject/wsd/frame"
)

// Fanout chooses the receivers of a frame on each event loop: a channel
// hub keeps, per loop, the connections subscribed to each channel and
// writes the one encoded frame to those of the loop it is called on.
type Fanout interface {
	// Deliver runs on the goroutine of event loop `loop`, once for every
	// Server.Fanout call that loop takes part in, in the order of those
	// calls (the order Server.Broadcast documents). It writes f to the
	// loop's receivers with Conn.WriteFrame and must not block or keep f.
	Deliver(loop int, f *Frame)
}

// Fanout encodes one message (and compresses it once, when compression is
// on) and hands it to every event loop, where to.Deliver picks the
// receivers. key and seq travel with the frame for Deliver (Frame.Key,
// Frame.Seq). Safe from any goroutine; it never delivers on the calling
// goroutine, so it may be called from a handler, with locks held: a loop
// delivers what was fanned out to it from its own callbacks as soon as the
// callback returns, and what came from elsewhere in its next task.
//
// Contract as for Server.Broadcast: ordered calls are delivered in order on
// every loop; ErrBacklog refuses the frame before any loop has it;
// ErrServerClosed after Shutdown began. A frame fanned out before a
// connection's handshake completes on its loop is never delivered to it.
func (s *Server) Fanout(to Fanout, key string, seq uint64, op frame.OpCode, payload []byte) error {
	s.inflight.Add(1)
	defer s.inflight.Add(-1)
	if s.draining.Load() {
		return ErrServerClosed
	}
	if to == nil {
		return fmt.Errorf("engine: Fanout needs a Fanout")
	}
	b := s.newFrame(nil, op, payload)
	if b == nil {
		return nil
	}
	b.to, b.key, b.seq = to, key, seq
	return s.dispatch(nil, b)
}

// deliverTo runs a Fanout's Deliver for b on this loop; a panic in it is
// logged and counted, and the loop goes on.
func (l *loop) deliverTo(b *Frame) {
	defer l.survivePanic("fanout panicked", b.key)
	b.to.Deliver(int(l.idx), b)
}

// survivePanic, deferred around code the loop runs for others (a task, a
// Fanout, with the key it was delivering), logs and counts a panic instead
// of letting it end the loop. No variadic arguments: deferred on every
// delivery, it must not allocate.
func (l *loop) survivePanic(msg, key string) {
	if r := recover(); r != nil {
		l.metrics.handlerPanics.inc()
		l.log.Error(msg, "key", key, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	}
}

// WriteFrame writes a frame from Server.Fanout to c: in the route's
// Alternate encoding if c uses it (ErrEncode if the frame cannot be
// encoded so), the compressed form if c negotiated compression with a full
// window, else the plain one. It
// is a push (see Write), subject to the slow-consumer policy, and counts
// as a message out. Only on c's loop, from Fanout.Deliver or a callback.
func (c Conn) WriteFrame(f *Frame) error {
	if err := c.usable(); err != nil {
		return err
	}
	ss := c.s
	b := c.l.frameFor(ss, f)
	if b == nil {
		return ErrEncode
	}
	class := classPush
	if ss == c.l.cur {
		class = classReply
	}
	if err := c.l.sendRaw(ss, class, b); err != nil {
		return err
	}
	c.l.metrics.messagesOut.inc()
	return nil
}

// Busy reports whether a fan-out or broadcast of a payload of n bytes would
// be refused now because an event loop is behind (ErrBacklog): a
// publisher can check it before committing to a message it could not
// deliver. The answer may be stale by the time it is used.
func (s *Server) Busy(n int) bool {
	limit := int64(s.cfg.MaxBroadcastBacklog - n - frame.MaxHeaderSize - 128)
	for i := range int(s.nloops.Load()) {
		if s.loops[i].Load().inbox.bytes.Load() > limit {
			return true
		}
	}
	return false
}
