// Package session holds per-connection state for an event loop: the
// Session record, the Slab that stores every session of one loop in fixed
// pages (no per-connection allocation, stable addresses, generation-checked
// handles), and the hashed timing Wheel that drives handshake deadlines,
// heartbeats and close timeouts for all of them.
//
// Nothing here is safe for concurrent use: a Slab, its sessions and its
// Wheel belong to one event loop and are touched only from it.
package session

import (
	"github.com/wsdproject/wsd/internal/gnet"

	"github.com/wsdproject/wsd/frame"
)

// State is where a connection is in its life.
type State uint8

const (
	// Free marks a slab slot that holds no connection.
	Free State = iota
	// Handshaking: TCP is open, the HTTP upgrade request is being read.
	Handshaking
	// Open: the WebSocket is up and messages flow.
	Open
	// Closing: a close frame was sent; waiting for the peer's close frame,
	// or for pending bytes to drain, before closing TCP.
	Closing
	// Gone: the TCP connection is closed; the slot is kept until the
	// engine has told the handler (it does that only once the callback
	// that was running when the connection went away has returned).
	Gone
)

func (s State) String() string {
	switch s {
	case Free:
		return "free"
	case Handshaking:
		return "handshaking"
	case Open:
		return "open"
	case Closing:
		return "closing"
	case Gone:
		return "gone"
	}
	return "unknown"
}

// Flag bits of Session.Flags.
const (
	// FlagDeflate: permessage-deflate was negotiated.
	FlagDeflate uint16 = 1 << iota
	// FlagCloseReceived: the peer's close frame has arrived.
	FlagCloseReceived
	// FlagCloseSent: our close frame has been written (or, while
	// handshaking, our HTTP error response).
	FlagCloseSent
	// FlagDiscard: stop decoding and drop whatever else arrives (after a
	// protocol failure or the peer's close frame).
	FlagDiscard
	// FlagShutdown: our side of the TCP connection is shut down; waiting
	// for the peer's FIN.
	FlagShutdown
	// FlagNoLinger: close TCP as soon as our bytes are out, without
	// waiting for the peer's close frame or FIN (a slow consumer).
	FlagNoLinger
	// FlagBacklog: the session is on its loop's list of connections with
	// outbound bytes waiting in user space.
	FlagBacklog
	// FlagDropping: frames for the session are being dropped because it is
	// over its outbound high-water mark (set at the first drop, cleared
	// when a frame is accepted again).
	FlagDropping
	// FlagPeerTracked: the connection counts in the per-address table under
	// its TCP peer's address.
	FlagPeerTracked
	// FlagProxied: the TCP peer is a trusted proxy; the client's address
	// comes from its PROXY header or X-Forwarded-For.
	FlagProxied
	// FlagClientAddr: the engine keeps the client address the connection's
	// proxy gave.
	FlagClientAddr
	// FlagClientTracked: the connection counts in the per-address table
	// under the client address its proxy gave.
	FlagClientTracked
)

// Session is one connection. It is kept small (every idle connection pays
// for it) and lives in its loop's Slab; the gnet connection's context points
// at it. Fields the engine manages are exported; the links are the Slab's
// and the Wheel's.
type Session struct {
	Conn    gnet.Conn
	Decoder frame.Decoder // partial frame and message state

	gen  uint32 // bumped on every free; a Handle must match it
	next int32  // wheel bucket list, or free list
	prev int32
	list int32  // which wheel list holds the session (-1: none)
	due  uint32 // wheel tick at which the session's timer fires

	// LastSeen is the wheel tick of the last inbound bytes.
	LastSeen uint32
	// Deadline is, for a Closing session, the tick by which its TCP
	// connection is closed whatever happens; for an Open one, the tick at
	// which its credentials expire (its timer fires then at the latest), 0
	// for none. One field for both keeps every idle connection 8 bytes
	// smaller: a session is never both.
	Deadline uint32
	// Self is the session's own slab index.
	Self int32
	// Sent counts the bytes handed to the connection for writing (modulo
	// 2^32); with the bytes still buffered it tells how far the peer has
	// read.
	Sent uint32
	// PingMark is Sent just after the last heartbeat ping was written: the
	// ping has left the server once Sent-PingMark >= the bytes buffered.
	PingMark uint32
	// Member is the session's position in its loop's list of open
	// connections of its route, -1 when on none.
	Member int32
	// MsgTAT is the engine's clock for the connection's data messages, in
	// 1/16 ms: the message-rate bucket's theoretical arrival time (GCRA),
	// which also dates the last message for the idle timeout; while
	// handshaking, the accept time (for the handshake latency).
	MsgTAT uint32
	// ByteTAT is the inbound byte-rate bucket's theoretical arrival time,
	// in microseconds.
	ByteTAT uint32
	State   State
	Loop    uint8 // index of the owning event loop
	Missed  uint8 // heartbeat pings sent and not yet answered
	// Reason is why the connection is closing (the engine's close reason
	// enum; 0 until decided).
	Reason    uint8
	Flags     uint16
	Endpoint  uint8 // index of the route the handshake matched
	Proto     uint8 // negotiated subprotocol: index+1 into the route's list, 0 for none
	Window    uint8 // server_max_window_bits for permessage-deflate (8-15)
	CloseCode frame.CloseCode
}

// Has reports whether every bit of f is set.
func (s *Session) Has(f uint16) bool { return s.Flags&f == f }

// Gen returns the slot's generation: a Handle made now resolves to this
// session until it is freed.
func (s *Session) Gen() uint32 { return s.gen }

// Handle refers to a session across callbacks. A handle whose session was
// freed (and perhaps reused for a new connection) no longer resolves.
type Handle struct {
	Index int32
	Gen   uint32
}
