package engine

import (
	"errors"
	"net"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/session"
)

// ErrClosing is returned when writing to a connection that is closing.
var ErrClosing = errors.New("engine: connection is closing")

// Conn is a WebSocket connection as a Handler sees it: a small value
// naming the connection's loop and session. It is valid only during the
// Handler call that received it, on that call's goroutine.
type Conn struct {
	l *loop
	s *session.Session
}

// makeConnID packs a connection's loop, slot and slot generation: unique
// within the process for as long as it runs, and enough to find the
// session again.
func makeConnID(loop uint8, h session.Handle) uint64 {
	return uint64(loop)<<56 | uint64(uint32(h.Index))<<32 | uint64(h.Gen)
}

// ID returns the connection's id, unique within the process (the "conn"
// field of every log line about the connection).
func (c Conn) ID() uint64 { return c.l.connID(c.s) }

// RemoteAddr returns the peer's address.
func (c Conn) RemoteAddr() net.Addr { return c.s.Conn.RemoteAddr() }

// Path returns the route the connection was opened on.
func (c Conn) Path() string { return c.l.srv.routes[c.s.Endpoint].path }

// Subprotocol returns the negotiated subprotocol, or "".
func (c Conn) Subprotocol() string {
	if c.s.Proto == 0 {
		return ""
	}
	return c.l.srv.routes[c.s.Endpoint].protocols[c.s.Proto-1]
}

// Compressed reports whether permessage-deflate was negotiated.
func (c Conn) Compressed() bool { return c.s.Has(session.FlagDeflate) }

// Write sends one message. Writes during a callback for this connection
// go out together when the callback returns; the payload is copied (or
// compressed) before Write returns.
func (c Conn) Write(op frame.OpCode, p []byte) error {
	if c.s.State != session.Open {
		return ErrClosing
	}
	if op != frame.OpText && op != frame.OpBinary {
		return errors.New("engine: Write takes text or binary messages")
	}
	c.l.writeMessage(c.s, op, p)
	return nil
}

// WriteText sends a text message; p must be valid UTF-8.
func (c Conn) WriteText(p []byte) error { return c.Write(frame.OpText, p) }

// Close starts the close handshake with code and reason.
func (c Conn) Close(code frame.CloseCode, reason string) error {
	if c.s.State != session.Open {
		return ErrClosing
	}
	if !frame.ValidCloseCode(code) {
		return errors.New("engine: invalid close code")
	}
	c.l.sendClose(c.s, code, reason)
	return nil
}

// Broadcast sends one message to every open connection on this
// connection's route, this one included, encoding it once.
func (c Conn) Broadcast(op frame.OpCode, p []byte) {
	c.l.srv.broadcast(c.l, int(c.s.Endpoint), op, p)
}
