package engine

import (
	"errors"
	"net"
	"time"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/session"
)

// Errors of Conn methods and of Broadcast.
var (
	// ErrClosing: the connection is closing (a close frame was sent or
	// received); it takes no more messages.
	ErrClosing = errors.New("engine: connection is closing")
	// ErrClosed: the connection is gone; a Conn kept past its connection's
	// end refers to nothing (its slot may serve another connection by now).
	ErrClosed = errors.New("engine: connection is closed")
	// ErrDropped: the message was not queued because the connection is over
	// its outbound high-water mark and the policy is SlowConsumerDrop.
	ErrDropped = errors.New("engine: message dropped: the connection is not reading fast enough")
	// ErrSlowConsumer: the message was not queued because it would take the
	// connection over its outbound high-water mark; the connection is being
	// closed with 1013.
	ErrSlowConsumer = errors.New("engine: connection closed as a slow consumer")
	// ErrServerClosed: Shutdown has begun.
	ErrServerClosed = errors.New("engine: server is shutting down")
	// ErrBacklog: a broadcast was refused because an event loop already has
	// MaxBroadcastBacklog bytes of broadcasts to deliver; nothing was sent.
	ErrBacklog = errors.New("engine: broadcast refused: the event loops are behind on delivering broadcasts")
)

// Conn is a WebSocket connection as a Handler sees it: a small value
// naming the connection's loop, session slot and the slot's generation.
//
// A Conn may be kept and used after the callback that received it, but
// only on the connection's own event loop (in a later callback or task of
// that loop), never from another goroutine. Once the connection is gone
// every method is a no-op: writes return ErrClosed, and a kept Conn never
// reaches a later connection that reuses its slot.
type Conn struct {
	l *loop
	s *session.Session
	h session.Handle
}

// conn returns the Conn for a live session of the loop.
func (l *loop) conn(ss *session.Session) Conn {
	return Conn{l: l, s: ss, h: session.Handle{Index: ss.Self, Gen: ss.Gen()}}
}

// live reports whether c still refers to its connection (open, closing,
// or gone with its OnClose not yet finished).
func (c Conn) live() bool {
	return c.s != nil && c.s.Gen() == c.h.Gen && c.s.State != session.Free
}

// makeConnID packs a connection's loop, slot and slot generation: unique
// within the process for as long as it runs, and enough to find the
// session again.
func makeConnID(loop uint8, h session.Handle) uint64 {
	return uint64(loop)<<56 | uint64(uint32(h.Index))<<32 | uint64(h.Gen)
}

// ID returns the connection's id, unique within the process (the "conn"
// field of every log line about the connection). It stays the same after
// the connection is gone.
func (c Conn) ID() uint64 {
	if c.l == nil {
		return 0
	}
	return makeConnID(c.l.idx, c.h)
}

// RemoteAddr returns the peer's address, or nil for a Conn whose
// connection is gone (in OnClose it is still known).
func (c Conn) RemoteAddr() net.Addr {
	if !c.live() {
		return nil
	}
	if c.s.State == session.Gone {
		return c.l.goneAddr(c.h.Index)
	}
	return c.s.Conn.RemoteAddr()
}

// Path returns the route the connection was opened on ("" once gone).
func (c Conn) Path() string {
	if !c.live() {
		return ""
	}
	return c.l.srv.routes[c.s.Endpoint].path
}

// Subprotocol returns the negotiated subprotocol, or "".
func (c Conn) Subprotocol() string {
	if !c.live() || c.s.Proto == 0 {
		return ""
	}
	return c.l.srv.routes[c.s.Endpoint].protocols[c.s.Proto-1]
}

// Compressed reports whether permessage-deflate was negotiated.
func (c Conn) Compressed() bool { return c.live() && c.s.Has(session.FlagDeflate) }

// usable returns nil if messages may be written to c.
func (c Conn) usable() error {
	switch {
	case !c.live() || c.s.State == session.Gone:
		return ErrClosed
	case c.s.State != session.Open:
		return ErrClosing
	}
	return nil
}

// Write sends one message. A write to the connection whose callback is
// running is a reply: it goes out with that callback's other writes when it
// returns, and is never dropped (if it would take the connection over its
// outbound mark, the connection is closed with 1013 and Write returns
// ErrSlowConsumer). A write to any other connection is a push, subject to
// the slow-consumer policy (ErrDropped or ErrSlowConsumer). The payload is
// copied (or compressed) before Write returns.
func (c Conn) Write(op frame.OpCode, p []byte) error {
	if err := c.usable(); err != nil {
		return err
	}
	if op != frame.OpText && op != frame.OpBinary {
		return errors.New("engine: Write takes text or binary messages")
	}
	return c.l.writeMessage(c.s, op, p)
}

// WriteText sends a text message; p must be valid UTF-8.
func (c Conn) WriteText(p []byte) error { return c.Write(frame.OpText, p) }

// Close starts the close handshake with code and reason.
func (c Conn) Close(code frame.CloseCode, reason string) error {
	if err := c.usable(); err != nil {
		return err
	}
	if !frame.ValidCloseCode(code) {
		return errors.New("engine: invalid close code")
	}
	setReason(c.s, ReasonApplication)
	c.l.sendClose(c.s, code, reason)
	return nil
}

// Broadcast sends one message to every open connection on this
// connection's route, this one included, encoding it once. It follows the
// delivery contract of Server.Broadcast; for this connection the message
// is queued in order with the callback's other writes. It works in OnClose
// too (the closed connection itself is no longer among the receivers).
func (c Conn) Broadcast(op frame.OpCode, p []byte) error {
	if !c.live() {
		return ErrClosed
	}
	return c.l.srv.broadcast(c.l, int(c.s.Endpoint), op, p)
}

// Loop returns the index of the connection's event loop (0 to
// Server.Loops()-1), for state a handler keeps per loop.
func (c Conn) Loop() int {
	if c.l == nil {
		return -1
	}
	return int(c.l.idx)
}

// Value returns what SetValue stored for the connection (for a connection
// whose route authenticates, the Authenticate hook's value until
// replaced), or nil. Only on the connection's loop.
func (c Conn) Value() any {
	if !c.live() {
		return nil
	}
	return c.l.value(c.h.Index)
}

// SetValue stores v with the connection until it is gone (after its
// OnClose). Only on the connection's loop.
func (c Conn) SetValue(v any) {
	if !c.live() {
		return
	}
	c.l.setValue(c.h.Index, v)
}

// valuesPage is how many slots' values one page holds: pages are added as
// the slab grows, never copied, and nothing is held for slots past the
// last page a value was set in.
const valuesPage = 256

func (l *loop) value(idx int32) any {
	p := int(idx) / valuesPage
	if p >= len(l.values) || l.values[p] == nil {
		return nil
	}
	return l.values[p][int(idx)%valuesPage]
}

func (l *loop) setValue(idx int32, v any) {
	p := int(idx) / valuesPage
	if p >= len(l.values) {
		if v == nil {
			return
		}
		l.values = append(l.values, make([][]any, p+1-len(l.values))...)
	}
	if l.values[p] == nil {
		if v == nil {
			return
		}
		l.values[p] = make([]any, valuesPage)
	}
	l.values[p][int(idx)%valuesPage] = v
}

// ExpiryHandler is implemented by a Handler that sets expiries with
// Conn.SetExpiry.
type RateLimitHandler interface {
	// OnRateLimited runs instead of OnMessage for a data message that came
	// past the connection's MessageRate (its burst spent): the message is
	// not handled, and the handler may tell the peer so. After
	// MaxRateStrikes of them in a row the engine closes the connection with
	// 1008 instead. p is valid only during the call.
	OnRateLimited(c Conn, op frame.OpCode, p []byte)
}

// ExpiryHandler is a Handler that is told when a connection's expiry
// (Conn.SetExpiry) comes.
type ExpiryHandler interface {
	// OnExpire runs on the connection's loop when its expiry has come. The
	// connection stays open unless OnExpire closes it (or sets a new
	// expiry).
	OnExpire(c Conn)
}

// SetExpiry makes the engine call the route handler's OnExpire (it must
// be an ExpiryHandler) when at has come, to the timing wheel's tick (it
// may run up to one tick late, never early); a zero at clears it. A
// connection has one expiry: a new call replaces the last.
func (c Conn) SetExpiry(at time.Time) error {
	if err := c.usable(); err != nil {
		return err
	}
	if _, ok := c.l.srv.routes[c.s.Endpoint].handler.(ExpiryHandler); !ok {
		return errors.New("engine: SetExpiry needs a handler that implements ExpiryHandler")
	}
	var tick uint32
	if !at.IsZero() {
		tick = c.l.srv.tickOf(at)
	}
	c.l.srv.timeouts.SetExpiry(c.l.wheel, c.h.Index, tick)
	return nil
}
