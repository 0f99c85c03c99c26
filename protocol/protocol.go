// Package protocol is wsd's JSON message protocol on the /ws endpoint: one
// JSON object per text message, {"type":…,"id":…,"data":…}. The data field
// is carried as raw JSON: it is validated but never decoded and
// re-encoded, and a broadcast is encoded into one frame for all receivers.
//
// Client → server:
//
//	{"type":"echo","data":…}       answered with {"type":"echo_reply","data":…}
//	{"type":"broadcast","data":…}  sent to every open /ws connection as {"type":"broadcast","data":…}
//
// An optional "id" (any JSON value) is copied into the reply or error.
// Server → client errors: {"type":"error","code":…,"message":…} with code
// INVALID_MESSAGE_FORMAT or UNKNOWN_MESSAGE_TYPE.
package protocol

import (
	"errors"
	"sync"

	"github.com/mailru/easyjson/jwriter"

	"github.com/wsdproject/wsd/engine"
	"github.com/wsdproject/wsd/frame"
)

// Subprotocol is the name a client may ask for in Sec-WebSocket-Protocol
// to request this protocol explicitly (it is also what a client gets
// without asking).
const Subprotocol = "wsd.json"

// Message types.
const (
	TypeEcho      = "echo"
	TypeEchoReply = "echo_reply"
	TypeBroadcast = "broadcast"
	TypeError     = "error"
)

// Error codes.
const (
	CodeInvalidMessageFormat = "INVALID_MESSAGE_FORMAT"
	CodeUnknownMessageType   = "UNKNOWN_MESSAGE_TYPE"
	// CodeServerBusy: a broadcast was refused because the server is behind
	// on delivering earlier ones; nothing was sent. Retry later.
	CodeServerBusy = "SERVER_BUSY"
)

// Handler serves the protocol; it is an engine.Handler. Its methods run on
// event loops, concurrently for connections of different loops; it keeps
// no per-connection state.
type Handler struct{}

// replyWriter encodes replies. joined holds a reply that spilled over
// several of the encoder's chunks, joined into one slice: reused, so that
// large replies and broadcasts leave no garbage behind.
type replyWriter struct {
	jwriter.Writer
	joined []byte
}

// writers hold reply encoders: sync.Pool keeps one per P, so loops neither
// allocate nor contend for them.
var writers = sync.Pool{New: func() any { return new(replyWriter) }}

// OnOpen does nothing: the protocol has no greeting.
func (Handler) OnOpen(engine.Conn) {}

// OnClose does nothing: the protocol keeps no per-connection state.
func (Handler) OnClose(engine.Conn, engine.CloseInfo) {}

// OnMessage decodes one client message and acts on it.
func (Handler) OnMessage(c engine.Conn, op frame.OpCode, data []byte) {
	if op != frame.OpText {
		sendError(c, nil, CodeInvalidMessageFormat, "binary messages are not supported; send JSON text")
		return
	}
	var in Inbound
	if err := in.decode(data); err != nil {
		sendError(c, in.ID, CodeInvalidMessageFormat, err.Error())
		return
	}
	switch in.Type {
	case TypeEcho:
		sendReply(c, false, Reply{Type: TypeEchoReply, ID: in.ID, Data: in.Data})
	case TypeBroadcast:
		if err := sendReply(c, true, Reply{Type: TypeBroadcast, Data: in.Data}); errors.Is(err, engine.ErrBacklog) {
			sendError(c, in.ID, CodeServerBusy, "broadcast not sent: the server is behind on delivering; retry later")
		}
	default:
		sendError(c, in.ID, CodeUnknownMessageType, "unknown message type")
	}
}

func sendReply(c engine.Conn, broadcast bool, r Reply) error {
	w := writers.Get().(*replyWriter)
	r.MarshalEasyJSON(&w.Writer)
	return send(c, w, broadcast)
}

func sendError(c engine.Conn, id []byte, code, message string) {
	w := writers.Get().(*replyWriter)
	(&Error{Type: TypeError, ID: id, Code: code, Message: message}).MarshalEasyJSON(&w.Writer)
	_ = send(c, w, false)
}

// send writes the encoded reply to c, or broadcasts it, and recycles the
// encoder. Its error is the write's or the broadcast's.
func send(c engine.Conn, w *replyWriter, broadcast bool) error {
	out := w.Buffer.Buf
	if w.Buffer.Size() != len(out) {
		w.joined = w.Buffer.BuildBytes(w.joined[:0])
		out = w.joined
	}
	var err error
	if broadcast {
		err = c.Broadcast(frame.OpText, out)
	} else {
		err = c.WriteText(out)
	}
	w.Buffer.Buf = w.Buffer.Buf[:0]
	w.Error = nil
	if cap(w.Buffer.Buf) > 64<<10 {
		w.Buffer.Buf = nil
	}
	if cap(w.joined) > 1<<20 {
		w.joined = nil
	}
	writers.Put(w)
	return err
}
