package protocol

//go:generate go tool easyjson -no_std_marshalers envelope.go

import "github.com/mailru/easyjson"

// Inbound is a client message: {"type":…,"id":…,"data":…}. Type points into
// the message being decoded and Data and ID are raw JSON slices of it (an
// explicit null is kept as null): all are valid only while the message is
// handled. Unknown fields are ignored, so clients may send fields that
// later versions understand. Its decoder is hand-written (inbound.go).
type Inbound struct {
	Type    string
	ID      easyjson.RawMessage
	Data    easyjson.RawMessage
	Channel string // copied: it outlives the message as a channel's name
	Token   string // points into the message
	// Since is the position a subscribe recovers from, or a history read
	// starts after; HasSince tells whether it was given.
	Since    Position
	HasSince bool
	Limit    int
	fieldErr bool // a known field had the wrong kind of value
}

// Position is a place in a channel's stream as a client gives it.
type Position struct {
	Offset uint64
	Epoch  string
}

// Reply is a server message carrying data: echo_reply and broadcast.
//
//easyjson:json
type Reply struct {
	Type string              `json:"type"`
	ID   easyjson.RawMessage `json:"id,omitempty"`
	Data easyjson.RawMessage `json:"data,omitempty"`
}

// Error is the server's answer to a message it cannot act on.
//
//easyjson:json
type Error struct {
	Type    string              `json:"type"`
	ID      easyjson.RawMessage `json:"id,omitempty"`
	Code    string              `json:"code"`
	Message string              `json:"message"`
}
