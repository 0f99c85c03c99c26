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
	"github.com/panjf2000/gnet/v2"

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
	}
	return "unknown"
}

// Flag bits of Session.Flags.
const (
	// FlagDeflate: permessage-deflate was negotiated.
	FlagDeflate uint8 = 1 << iota
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
	// Deadline is the tick by which a Closing session's TCP connection is
	// closed whatever happens.
	Deadline uint32
	// Self is the session's own slab index.
	Self      int32
	State     State
	Loop      uint8 // index of the owning event loop
	Missed    uint8 // pings sent without any inbound traffic since
	Flags     uint8
	Endpoint  uint8 // index of the route the handshake matched
	Proto     uint8 // negotiated subprotocol: index+1 into the route's list, 0 for none
	Window    uint8 // server_max_window_bits for permessage-deflate (8-15)
	CloseCode frame.CloseCode
}

// Has reports whether every bit of f is set.
func (s *Session) Has(f uint8) bool { return s.Flags&f == f }

// Handle refers to a session across callbacks. A handle whose session was
// freed (and perhaps reused for a new connection) no longer resolves.
type Handle struct {
	Index int32
	Gen   uint32
}
