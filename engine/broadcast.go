package engine

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/session"
)

// Broadcast sends one message to every connection open on the route at
// path. The frame is encoded once (and compressed once for the connections
// that negotiated compression with a full window), and every event loop
// writes the same bytes to its own connections. Safe from any goroutine.
//
// Delivery contract:
//
//   - Receivers: the connections open on the route when Broadcast is
//     called that are still open when their loop delivers it. A connection
//     whose handshake completes after Broadcast has returned does not get
//     it; one that completes during the call may or may not. A connection
//     that is closing (a close frame was sent or received) gets nothing.
//   - Once: a receiver gets the message at most once, never duplicated.
//   - Order: broadcasts whose calls are ordered (one returns before the
//     next starts, as for successive calls from one goroutine or one
//     handler) reach every receiver in that order, on every loop; this
//     includes broadcasts made from OnClose, which runs after the callback
//     during which its connection went away has finished. Broadcasts made
//     concurrently from different goroutines have no order between them.
//     On the caller's own loop a broadcast from a handler is queued in
//     order with that callback's other writes.
//   - Slow consumers: a receiver over its outbound mark is skipped (and
//     counted) under SlowConsumerDrop, or closed with 1013 under
//     SlowConsumerClose; nobody else waits for it.
//   - Back-pressure: a broadcast that would take any loop's queue of
//     broadcasts still to deliver past MaxBroadcastBacklog is refused with
//     ErrBacklog, and nothing is sent: the caller decides (tell its client
//     to retry later, wait). A broadcast is delivered everywhere or refused,
//     never sent to some loops and not others, except at shutdown.
//   - Errors: ErrServerClosed once Shutdown has begun (nothing is sent),
//     ErrBacklog, or an unknown path. A nil error means every loop has the
//     message queued, not that anyone has read it.
func (s *Server) Broadcast(path string, op frame.OpCode, payload []byte) error {
	for i := range s.routes {
		if s.routes[i].path == path {
			return s.broadcast(nil, i, op, payload)
		}
	}
	return fmt.Errorf("engine: no route %q", path)
}

// Frame is one message for many connections, encoded once: a broadcast to
// a route, or a Fanout's frame. The loops share it read-only; each holds a
// reference, and the last to finish returns it to the pool. A Fanout sees
// it only during Deliver and must not keep it.
type Frame struct {
	route      uint8
	to         Fanout // nil: every connection of the route
	key        string
	seq        uint64
	plain      []byte // the frame
	compressed []byte // the frame compressed (full window), or empty
	refs       atomic.Int32
	born       int64 // monoNow when it was made: for the publish→delivery latency
	hdr        int   // the header's length in plain: plain[hdr:] is the payload

	// The frame in a route's Alternate encoding, made by the first loop
	// that delivers it to a connection of that encoding (see altFrame).
	altMu         sync.Mutex
	altState      atomic.Int32 // 0: not made; route+1: alt holds it; -(route+1): the encoding failed
	alt           []byte
	altCompressed []byte
}

// Key returns the key the frame was fanned out with (a channel name, say).
func (f *Frame) Key() string { return f.key }

// Seq returns the sequence number the frame was fanned out with.
func (f *Frame) Seq() uint64 { return f.seq }

var broadcastPool = sync.Pool{New: func() any { return new(Frame) }}

// maxPooledFrame is the largest frame buffer a pooled message keeps.
const maxPooledFrame = 64 << 10

// size is what the message counts for while it waits in an inbox: its
// frames and a slot's worth of overhead (its buffers come from a pool and
// may be larger, up to maxPooledFrame).
func (b *Frame) size() int { return len(b.plain) + len(b.compressed) + 128 }

func (b *Frame) release() {
	if b.refs.Add(-1) == 0 {
		b.recycle()
	}
}

// recycle returns b to the pool, without outsized buffers or references
// that would keep a Fanout or a key alive.
func (b *Frame) recycle() {
	if cap(b.plain) > maxPooledFrame {
		b.plain = nil
	}
	if cap(b.compressed) > maxPooledFrame {
		b.compressed = nil
	}
	if cap(b.alt) > maxPooledFrame {
		b.alt = nil
	}
	if cap(b.altCompressed) > maxPooledFrame {
		b.altCompressed = nil
	}
	b.altState.Store(0)
	b.to, b.key = nil, ""
	broadcastPool.Put(b)
}

// broadcast encodes the message and hands it to every loop. from (if not
// nil) is the calling loop, which delivers at once, after what was already
// posted to it, in order with the writes its current callback has made.
func (s *Server) broadcast(from *loop, routeIdx int, op frame.OpCode, payload []byte) error {
	s.inflight.Add(1)
	defer s.inflight.Add(-1)
	if s.draining.Load() {
		return ErrServerClosed
	}
	b := s.newFrame(from, op, payload)
	if b == nil {
		return nil // no connection has ever opened: nobody to deliver to
	}
	b.route = uint8(routeIdx)
	return s.dispatch(from, b)
}

// newFrame encodes a message for many receivers, or returns nil when no
// event loop has started yet.
func (s *Server) newFrame(from *loop, op frame.OpCode, payload []byte) *Frame {
	if s.nloops.Load() == 0 {
		return nil
	}
	b := broadcastPool.Get().(*Frame)
	b.to, b.key, b.seq, b.route = nil, "", 0, 0
	b.born = monoNow()
	b.plain = frame.AppendFrame(b.plain[:0], op, 0, payload)
	b.hdr = len(b.plain) - len(payload)
	b.compressed = b.compressed[:0]
	b.altState.Store(0)
	if s.cfg.Compression && len(payload) >= s.cfg.CompressionMinBytes {
		s.compressBroadcast(from, b, op, payload)
	}
	return b
}

// dispatch hands an encoded frame to every loop: the calling loop (from,
// if not nil) delivers it at once after draining its inbox, the others
// get it in their inboxes. It refuses the frame, before any loop has it,
// if a loop has no room for it.
func (s *Server) dispatch(from *loop, b *Frame) error {
	n := int(s.nloops.Load())
	// (Concurrent broadcasts may each pass this check: a loop's backlog can
	// go over by what they add at once, a bounded amount.)
	size := b.size()
	for i := range n {
		if l := s.loops[i].Load(); l != from && l.inbox.bytes.Load() > int64(s.cfg.MaxBroadcastBacklog-size) {
			b.recycle()
			s.refusedBacklog.Add(1)
			return ErrBacklog
		}
	}
	b.refs.Store(int32(n))
	var err error
	for i := range n {
		l := s.loops[i].Load()
		if l == from {
			l.drainInbox()
			l.deliver(b)
			b.release()
			continue
		}
		if e := l.post(b); e != nil {
			err = e
		}
	}
	return err
}

// compressBroadcast adds the compressed frame to b, with the calling
// loop's compressor, or with a shared one for broadcasts made outside the
// loops (rare: the HTTP API).
func (s *Server) compressBroadcast(from *loop, b *Frame, op frame.OpCode, payload []byte) {
	var c []byte
	var err error
	if from != nil {
		c, err = from.deflater.Deflate(from.zout[:0], payload, 15)
		from.zout = c
	} else {
		s.sharedDeflaterMu.Lock()
		defer s.sharedDeflaterMu.Unlock()
		if s.sharedDeflater == nil {
			s.sharedDeflater = frame.NewDeflater(s.cfg.CompressionLevel)
		}
		c, err = s.sharedDeflater.Deflate(s.sharedZout[:0], payload, 15)
		s.sharedZout = c
	}
	if err == nil && len(c) < len(payload) {
		b.compressed = frame.AppendFrame(b.compressed[:0], op, frame.Rsv1, c)
	}
}

// inbox holds broadcasts other goroutines hand to a loop. Posters append
// under the mutex; the loop takes the whole queue at once. One gnet task is
// queued per batch (when the queue goes from idle to armed), not one per
// message.
type inbox struct {
	mu    sync.Mutex
	q     []*Frame
	spare []*Frame     // the drained queue's array, for reuse
	armed bool         // a drain task is queued on the loop
	bytes atomic.Int64 // what the queued messages hold, for MaxBroadcastBacklog
}

// post queues b for the loop; any goroutine.
func (l *loop) post(b *Frame) error {
	l.inbox.bytes.Add(int64(b.size()))
	l.inbox.mu.Lock()
	l.inbox.q = append(l.inbox.q, b)
	arm := !l.inbox.armed
	l.inbox.armed = true
	l.inbox.mu.Unlock()
	if !arm {
		return nil
	}
	if err := l.el.Execute(context.Background(), l.inboxTask); err != nil {
		// The engine is stopping: the loop runs no more tasks.
		l.inbox.mu.Lock()
		l.inbox.armed = false
		l.inbox.mu.Unlock()
		return fmt.Errorf("%w (event loop %d: %v)", ErrServerClosed, l.idx, err)
	}
	return nil
}

// drainInbox delivers every broadcast posted to the loop, in order. It runs
// as the inbox task, before a local broadcast, and before a handshake
// completes (so that a connection never gets a broadcast issued before it
// opened).
func (l *loop) drainInbox() {
	l.inbox.mu.Lock()
	q := l.inbox.q
	l.inbox.armed = false
	if len(q) == 0 {
		l.inbox.mu.Unlock()
		return
	}
	l.inbox.q, l.inbox.spare = l.inbox.spare[:0], nil
	l.inbox.mu.Unlock()
	for i, b := range q {
		l.deliver(b)
		l.inbox.bytes.Add(-int64(b.size()))
		b.release()
		q[i] = nil
	}
	l.inbox.mu.Lock()
	if l.inbox.spare == nil && cap(q) <= 1<<12 {
		l.inbox.spare = q[:0]
	}
	l.inbox.mu.Unlock()
}

// deliver writes a broadcast to every open connection of its route on this
// loop: it walks the route's member list, not the slab.
func (l *loop) deliver(b *Frame) {
	sent := l.metrics.messagesOut.get()
	defer func() {
		if l.metrics.messagesOut.get() != sent {
			l.metrics.publishLatency.observe(time.Duration(monoNow() - b.born))
		}
	}()
	if b.to != nil {
		l.deliverTo(b)
		return
	}
	for _, idx := range l.members[b.route] {
		ss := l.slab.At(idx)
		if ss.State != session.Open {
			continue
		}
		f := l.frameFor(ss, b)
		if f == nil {
			continue
		}
		if l.sendRaw(ss, classPush, f) == nil {
			l.metrics.messagesOut.inc()
		}
	}
}

// addMember lists a session that has just opened under its route.
func (l *loop) addMember(ss *session.Session) {
	m := l.members[ss.Endpoint]
	ss.Member = int32(len(m))
	l.members[ss.Endpoint] = append(m, ss.Self)
}

// removeMember takes a session off its route's list (the last member
// takes its place).
func (l *loop) removeMember(ss *session.Session) {
	if ss.Member < 0 {
		return
	}
	m := l.members[ss.Endpoint]
	last := m[len(m)-1]
	m[ss.Member] = last
	l.slab.At(last).Member = ss.Member
	l.members[ss.Endpoint] = m[:len(m)-1]
	ss.Member = -1
}
