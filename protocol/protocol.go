// Package protocol is wsd's message protocol on the /ws endpoint: one
// JSON object per text message, or with the wsd.msgpack subprotocol the
// same messages as MessagePack maps in binary messages (see
// SubprotocolMsgpack and package mpjson). Client data is carried as raw JSON: it is
// validated but never decoded and re-encoded, and a publication is encoded
// into one frame for all its subscribers (by the hub).
//
// Client → server (every message may carry an "id", any JSON value, copied
// into its reply):
//
//	{"type":"echo","data":…}                                  → {"type":"echo_reply","data":…}
//	{"type":"subscribe","channel":"c"}                        → ack with "offset" and "epoch"
//	{"type":"subscribe","channel":"c","since":{"offset":N,"epoch":"E"}}
//	                                                          → ack with "recovered", then the missed messages
//	{"type":"unsubscribe","channel":"c"}                      → ack
//	{"type":"publish","channel":"c","data":…}                 → ack with the publication's "offset" and "epoch"
//	{"type":"presence","channel":"c"}                         → ack with "presence":[{client,user,info}]
//	{"type":"history","channel":"c","limit":N,"since":{…}}     → ack with "publications":[{offset,data}]
//	{"type":"refresh","token":"…"}                            → ack with "expires" (Unix seconds)
//
// Server → client: {"type":"message","channel":…,"offset":N,"epoch":…,
// "data":…} for each publication; {"type":"join"|"leave","channel":…,
// "info":{…}} on channels with join/leave events; {"type":"unsubscribed",
// "channel":…} when the server unsubscribes the client; and
// {"type":"error","code":…,"message":…} when a message cannot be acted on
// (the codes are the Code* constants). See README.md for the whole
// protocol with examples.
package protocol

import (
	"errors"
	"log/slog"
	"strconv"
	"sync"

	"github.com/mailru/easyjson/jwriter"

	"github.com/wsdproject/wsd/auth"
	"github.com/wsdproject/wsd/broker"
	"github.com/wsdproject/wsd/engine"
	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/hub"
	"github.com/wsdproject/wsd/protocol/mpjson"
)

// Subprotocol is the name a client may ask for in Sec-WebSocket-Protocol
// to request this protocol explicitly (it is also what a client gets
// without asking).
const Subprotocol = "wsd.json"

// SubprotocolMsgpack is the same message set in MessagePack, one map per
// binary message (package mpjson says how values map). The handler reads
// such a message by turning it into JSON; the engine turns what is sent
// to such a connection into MessagePack (MsgpackAlternate), a publication
// once for all its MessagePack subscribers.
const SubprotocolMsgpack = "wsd.msgpack"

// MsgpackAlternate returns the route option that makes the engine encode
// outbound messages in MessagePack for connections of SubprotocolMsgpack.
// The route must list SubprotocolMsgpack among its Subprotocols.
func MsgpackAlternate() *engine.Alternate {
	return &engine.Alternate{Subprotocol: SubprotocolMsgpack, Op: frame.OpBinary, Encode: mpjson.ToMsgpack}
}

// Message types.
const (
	TypeEcho         = "echo"
	TypeEchoReply    = "echo_reply"
	TypeSubscribe    = "subscribe"
	TypeUnsubscribe  = "unsubscribe"
	TypePublish      = "publish"
	TypePresence     = "presence"
	TypeHistory      = "history"
	TypeRefresh      = "refresh"
	TypeAck          = "ack"
	TypeMessage      = "message"
	TypeUnsubscribed = "unsubscribed"
	TypeError        = "error"
	// TypeBroadcast is refused on the socket: sending to every connection
	// is a right of the HTTP API.
	TypeBroadcast = "broadcast"
)

// Error codes.
const (
	CodeInvalidMessageFormat = "INVALID_MESSAGE_FORMAT"
	CodeUnknownMessageType   = "UNKNOWN_MESSAGE_TYPE"
	// CodeInvalidChannel: a missing or malformed channel name.
	CodeInvalidChannel = "INVALID_CHANNEL"
	// CodeForbidden: the connection's token (or the server's policy for
	// anonymous connections) does not allow this on this channel.
	CodeForbidden         = "FORBIDDEN"
	CodeAlreadySubscribed = "ALREADY_SUBSCRIBED"
	CodeNotSubscribed     = "NOT_SUBSCRIBED"
	CodeTooManyChannels   = "TOO_MANY_CHANNELS"
	CodeNotAvailable      = "NOT_AVAILABLE" // presence not kept on this channel
	CodeInvalidToken      = "INVALID_TOKEN"
	CodeMissingData       = "MISSING_DATA"
	CodeBrokerError       = "BROKER_ERROR"
	CodeServerBusy        = "SERVER_BUSY"
	CodeRateLimitExceeded = "RATE_LIMIT_EXCEEDED" // past the connection's message rate: the message was not handled
	// CodeNotEncodable: the reply holds data the connection's encoding
	// cannot carry (wsd.msgpack: a number beyond float64's range in a
	// publication kept from before such data was refused at publish).
	CodeNotEncodable       = "NOT_ENCODABLE"
	closeCodeTokenExpired  = frame.CloseCode(4001)
	closeReasonTokenExpire = "token expired"
)

// Options configure the handler.
type Options struct {
	// Hub serves the channel messages.
	Hub *hub.Hub
	// Verifier checks refreshed tokens; nil: refresh is refused.
	Verifier *auth.Verifier
	// Policy is what connections may do beyond their token.
	Policy hub.Policy
	// MaxMessageBytes bounds a wsd.msgpack message once turned into JSON
	// (default 1 MiB, the engine's default message limit): pass the
	// engine's MaxMessageBytes, so that either kind of client can send the
	// same.
	MaxMessageBytes int
	Logger          *slog.Logger
}

// Handler serves the protocol; it is an engine.Handler (and an
// engine.ExpiryHandler: a connection whose token expires is closed with
// 4001 "token expired"). Its methods run on event loops, concurrently for
// connections of different loops; per-connection state is the hub's
// Client, kept as the connection's Value.
type Handler struct {
	maxJSON int
	hub     *hub.Hub
	verify  *auth.Verifier
	policy  hub.Policy
	log     *slog.Logger
}

// New returns the handler.
func New(o Options) *Handler {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MaxMessageBytes <= 0 {
		o.MaxMessageBytes = 1 << 20
	}
	return &Handler{hub: o.Hub, verify: o.Verifier, policy: o.Policy, log: o.Logger, maxJSON: o.MaxMessageBytes}
}

// replyWriter encodes replies. joined holds a reply that spilled over
// several of the encoder's chunks, joined into one slice: reused, so that
// large replies leave no garbage behind.
type replyWriter struct {
	jwriter.Writer
	joined []byte
}

// writers hold reply encoders: sync.Pool keeps one per P, so loops neither
// allocate nor contend for them.
var writers = sync.Pool{New: func() any { return new(replyWriter) }}

// anonymous stands for every anonymous connection that has not subscribed
// to anything: read only. An anonymous connection gets a Client of its own
// (its Value) with its first subscription, so an idle one costs nothing
// here.
var anonymous = hub.NewClient(nil)

// client returns c's Client, or the shared anonymous one.
func client(c engine.Conn) *hub.Client {
	if cl := hub.ClientOf(c); cl != nil {
		return cl
	}
	return anonymous
}

// OnOpen registers the connection with the hub and arms its token's
// expiry.
func (h *Handler) OnOpen(c engine.Conn) {
	cl := hub.ClientOf(c)
	if cl == nil {
		return // anonymous
	}
	h.hub.Opened(c, cl)
	if exp := cl.Expiry(); !exp.IsZero() {
		_ = c.SetExpiry(exp)
	}
}

// OnClose unsubscribes the connection from everything.
func (h *Handler) OnClose(c engine.Conn, _ engine.CloseInfo) {
	if cl := hub.ClientOf(c); cl != nil {
		h.hub.Gone(c, cl)
	}
}

// OnExpire closes a connection whose token has expired (unless a refresh
// moved the expiry since).
func (h *Handler) OnExpire(c engine.Conn) {
	_ = c.Close(closeCodeTokenExpired, closeReasonTokenExpire)
}

// OnRateLimited answers a message that came past the connection's message
// rate: RATE_LIMIT_EXCEEDED with its id (if it has one); it was not acted
// on. The engine closes the connection with 1008 if the flood goes on.
func (h *Handler) OnRateLimited(c engine.Conn, op frame.OpCode, data []byte) {
	var in Inbound
	buf := jsonBufs.Get().(*[]byte)
	defer putJSONBuf(buf)
	if js, err := h.asJSON(c, op, data, buf); err == nil {
		_ = in.decode(js) // for the id only
	}
	sendError(c, in.ID, CodeRateLimitExceeded, "message rate exceeded; slow down")
}

// jsonBufs hold MessagePack messages turned into JSON while they are
// handled (the decoded message points into them).
var jsonBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

func putJSONBuf(b *[]byte) {
	if cap(*b) <= 64<<10 {
		jsonBufs.Put(b)
	}
}

// Why a message is refused before it is read, worded for the client.
var (
	errBinaryOnJSON  = errors.New("binary messages are not supported on wsd.json; send JSON text, or connect with the wsd.msgpack subprotocol")
	errTextOnMsgpack = errors.New("this connection speaks wsd.msgpack: send each message as one MessagePack map in a binary message")
)

// asJSON returns a client message as JSON: as it came on a JSON
// connection, turned from MessagePack into buf on a wsd.msgpack one.
func (h *Handler) asJSON(c engine.Conn, op frame.OpCode, data []byte, buf *[]byte) ([]byte, error) {
	if c.Subprotocol() != SubprotocolMsgpack {
		if op != frame.OpText {
			return nil, errBinaryOnJSON
		}
		return data, nil
	}
	if op != frame.OpBinary {
		return nil, errTextOnMsgpack
	}
	js, err := mpjson.ToJSON((*buf)[:0], data, h.maxJSON)
	*buf = js[:0]
	return js, err
}

// OnMessage decodes one client message and acts on it. A MessagePack
// message is turned into JSON first, so both kinds of client go through
// the one decoder and its checks.
func (h *Handler) OnMessage(c engine.Conn, op frame.OpCode, data []byte) {
	buf := jsonBufs.Get().(*[]byte)
	defer putJSONBuf(buf)
	data, err := h.asJSON(c, op, data, buf)
	if err != nil {
		sendError(c, nil, CodeInvalidMessageFormat, err.Error())
		return
	}
	var in Inbound
	if err := in.decode(data); err != nil {
		sendError(c, in.ID, CodeInvalidMessageFormat, err.Error())
		return
	}
	cl := client(c)
	switch in.Type {
	case TypeEcho:
		sendReply(c, Reply{Type: TypeEchoReply, ID: in.ID, Data: in.Data})
	case TypeSubscribe:
		h.subscribe(c, cl, &in)
	case TypeUnsubscribe:
		if err := h.hub.Unsubscribe(c, cl, in.Channel); err != nil {
			h.fail(c, &in, err)
			return
		}
		h.ack(c, &in, func(*jwriter.Writer) {})
	case TypePublish:
		h.publish(c, cl, &in)
	case TypePresence:
		h.presence(c, cl, &in)
	case TypeHistory:
		h.history(c, cl, &in)
	case TypeRefresh:
		h.refresh(c, cl, &in)
	case TypeBroadcast:
		sendError(c, in.ID, CodeForbidden, "broadcast to every connection is a right of the HTTP API; publish to a channel")
	default:
		sendError(c, in.ID, CodeUnknownMessageType, "unknown message type")
	}
}

func (h *Handler) subscribe(c engine.Conn, cl *hub.Client, in *Inbound) {
	if cl == anonymous {
		cl = hub.NewClient(nil)
		c.SetValue(cl)
	}
	var since *broker.Position
	if in.HasSince {
		since = &broker.Position{Offset: in.Since.Offset, Epoch: in.Since.Epoch}
	}
	res, err := h.hub.Subscribe(c, cl, in.Channel, since)
	if err != nil {
		h.fail(c, in, err)
		return
	}
	h.ack(c, in, func(w *jwriter.Writer) {
		writePosition(w, res.Position)
		if res.Recovery {
			w.RawString(`,"recovered":`)
			w.Bool(res.Recovered)
		}
	})
	// The missed publications follow the ack, before any live one. One
	// the connection's encoding cannot carry (kept from before such data
	// was refused at publish; counted by the engine as an encode failure)
	// is skipped as its live delivery would be: the ones after it are
	// still owed, and the member's filter would skip them live.
	if len(res.Replayed) > 0 {
		w := writers.Get().(*replyWriter)
		for i := range res.Replayed {
			p := &res.Replayed[i]
			w.Buffer.Buf = hub.AppendMessage(w.Buffer.Buf[:0], in.Channel, p.Offset, res.Position.Epoch, p.Data)
			if err := send(c, w, false); err != nil && !errors.Is(err, engine.ErrEncode) {
				return // the connection is going: nothing more reaches it
			}
			w = writers.Get().(*replyWriter)
		}
		writers.Put(w)
	}
}

func (h *Handler) publish(c engine.Conn, cl *hub.Client, in *Inbound) {
	switch {
	case auth.ValidChannel(in.Channel) != nil:
		h.fail(c, in, hub.ErrInvalidChannel)
		return
	case !cl.CanPublish(in.Channel, h.policy):
		sendError(c, in.ID, CodeForbidden, "publishing needs a token whose \"publish\" claim matches the channel (or a server started with --allow-client-publish, for public channels)")
		return
	case len(in.Data) == 0:
		sendError(c, in.ID, CodeMissingData, `a publication needs "data"`)
		return
	}
	pos, err := h.hub.Publish(in.Channel, in.Data)
	if err != nil {
		h.fail(c, in, err)
		return
	}
	h.ack(c, in, func(w *jwriter.Writer) { writePosition(w, pos) })
}

func (h *Handler) presence(c engine.Conn, cl *hub.Client, in *Inbound) {
	if !h.readable(c, cl, in) {
		return
	}
	list, err := h.hub.Presence(in.Channel)
	if err != nil {
		h.fail(c, in, err)
		return
	}
	h.ack(c, in, func(w *jwriter.Writer) {
		w.RawString(`,"presence":`)
		WritePresence(w, list)
	})
}

func (h *Handler) history(c engine.Conn, cl *hub.Client, in *Inbound) {
	if !h.readable(c, cl, in) {
		return
	}
	var since *broker.Position
	if in.HasSince {
		since = &broker.Position{Offset: in.Since.Offset, Epoch: in.Since.Epoch}
	}
	limit := in.Limit
	if since != nil {
		limit = 0 // everything after since, as recovery would
	}
	pubs, pos, err := h.hub.History(in.Channel, since, limit)
	recovered := true
	if errors.Is(err, broker.ErrUnrecoverable) {
		recovered, pubs, err = false, nil, nil
	}
	if err != nil {
		h.fail(c, in, err)
		return
	}
	h.ack(c, in, func(w *jwriter.Writer) {
		writePosition(w, pos)
		if since != nil {
			w.RawString(`,"recovered":`)
			w.Bool(recovered)
		}
		w.RawString(`,"publications":`)
		WritePublications(w, pubs)
	})
}

// readable checks a channel a client reads presence or history of.
func (h *Handler) readable(c engine.Conn, cl *hub.Client, in *Inbound) bool {
	switch {
	case auth.ValidChannel(in.Channel) != nil:
		h.fail(c, in, hub.ErrInvalidChannel)
	case !cl.CanSubscribe(in.Channel):
		h.fail(c, in, hub.ErrForbidden)
	default:
		return true
	}
	return false
}

func (h *Handler) refresh(c engine.Conn, cl *hub.Client, in *Inbound) {
	if h.verify == nil {
		sendError(c, in.ID, CodeInvalidToken, "this server does not use tokens")
		return
	}
	claims, err := h.verify.Verify(in.Token)
	if err != nil {
		sendError(c, in.ID, CodeInvalidToken, "the token is not valid: "+tokenProblem(err))
		return
	}
	if cl.Claims == nil || claims.Sub != cl.Claims.Sub {
		sendError(c, in.ID, CodeInvalidToken, "a refreshed token must name the connection's user")
		return
	}
	cl.Claims = claims
	_ = c.SetExpiry(claims.Exp) // zero clears it: the new token does not expire
	h.ack(c, in, func(w *jwriter.Writer) {
		if !claims.Exp.IsZero() {
			w.RawString(`,"expires":`)
			w.Int64(claims.Exp.Unix())
		}
	})
}

// tokenProblem says what is wrong with a token, without any of its bytes.
func tokenProblem(err error) string {
	switch {
	case errors.Is(err, auth.ErrExpired):
		return "expired"
	case errors.Is(err, auth.ErrNoToken):
		return "missing"
	}
	return "invalid"
}

// fail answers a refused channel operation with its error code.
func (h *Handler) fail(c engine.Conn, in *Inbound, err error) {
	code, msg := ErrorCode(err)
	if code == CodeBrokerError {
		h.log.Error("broker error", "conn", c.ID(), "type", in.Type, "channel", in.Channel, "err", err)
	}
	sendError(c, in.ID, code, msg)
}

// ErrorCode maps a hub or broker error to a protocol error code and a
// message for the client.
func ErrorCode(err error) (code, message string) {
	switch {
	case errors.Is(err, hub.ErrInvalidChannel):
		return CodeInvalidChannel, "channel names are 1 to 255 printable ASCII characters, segments separated by ':', '.' or '/'"
	case errors.Is(err, hub.ErrForbidden):
		return CodeForbidden, "not allowed on this channel"
	case errors.Is(err, hub.ErrAlreadySubscribed):
		return CodeAlreadySubscribed, err.Error()
	case errors.Is(err, hub.ErrNotSubscribed):
		return CodeNotSubscribed, err.Error()
	case errors.Is(err, hub.ErrTooManySubscribers):
		return CodeTooManyChannels, err.Error()
	case errors.Is(err, hub.ErrNoPresence):
		return CodeNotAvailable, err.Error()
	case errors.Is(err, engine.ErrBacklog), errors.Is(err, hub.ErrBusy):
		return CodeServerBusy, "the server is behind on delivering; retry later"
	case errors.Is(err, engine.ErrServerClosed):
		return CodeServerBusy, "the server is shutting down; retry on another node"
	case errors.Is(err, broker.ErrTooManyChannels), errors.Is(err, hub.ErrTooManyChannels):
		return CodeTooManyChannels, "the server keeps too many channels; retry later"
	case errors.Is(err, hub.ErrInvalidData):
		return CodeInvalidMessageFormat, err.Error()
	}
	return CodeBrokerError, "the message bus failed; retry"
}

// ack writes {"type":"ack","id":…,"channel":…<more>}.
func (h *Handler) ack(c engine.Conn, in *Inbound, more func(*jwriter.Writer)) {
	w := writers.Get().(*replyWriter)
	w.RawString(`{"type":"ack"`)
	if len(in.ID) > 0 {
		w.RawString(`,"id":`)
		w.Raw(in.ID, nil)
	}
	if in.Channel != "" {
		w.RawString(`,"channel":`)
		w.String(in.Channel)
	}
	more(&w.Writer)
	w.RawByte('}')
	if errors.Is(send(c, w, false), engine.ErrEncode) {
		// A request is always answered: a reply the connection's
		// encoding cannot carry becomes an error with the request's id.
		sendError(c, in.ID, CodeNotEncodable, "the reply holds data this connection's encoding cannot carry (a number beyond float64's range); read it over wsd.json or the HTTP API")
	}
}

func writePosition(w *jwriter.Writer, p broker.Position) {
	w.RawString(`,"offset":`)
	w.Uint64(p.Offset)
	w.RawString(`,"epoch":`)
	w.String(p.Epoch)
}

// WritePresence writes a presence list as a JSON array.
func WritePresence(w *jwriter.Writer, list []broker.ClientInfo) {
	w.RawByte('[')
	for i, ci := range list {
		if i > 0 {
			w.RawByte(',')
		}
		hub.WriteClientInfo(w, ci)
	}
	w.RawByte(']')
}

// WritePublications writes publications as a JSON array of
// {"offset":N,"data":…}.
func WritePublications(w *jwriter.Writer, pubs []broker.Publication) {
	w.RawByte('[')
	for i := range pubs {
		if i > 0 {
			w.RawByte(',')
		}
		w.RawString(`{"offset":`)
		w.RawString(strconv.FormatUint(pubs[i].Offset, 10))
		w.RawString(`,"data":`)
		w.Raw(pubs[i].Data, nil)
		w.RawByte('}')
	}
	w.RawByte(']')
}

func sendReply(c engine.Conn, r Reply) {
	w := writers.Get().(*replyWriter)
	r.MarshalEasyJSON(&w.Writer)
	_ = send(c, w, false)
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
		err = c.Send(out) // in the connection's encoding
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

var (
	_ engine.RateLimitHandler = (*Handler)(nil)
	_ engine.ExpiryHandler    = (*Handler)(nil)
)
