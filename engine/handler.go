package engine

import (
	"fmt"
	"runtime/debug"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/session"
)

// Handler receives the events of the connections on one route. Its methods
// run on the connection's event loop: they must return quickly and never
// block. Callbacks never nest: while one runs, no other callback of the
// same loop starts (a connection that goes away meanwhile is reported by
// OnClose after the running callback has returned). A panic in a callback
// closes that connection with 1011 and is logged; the server goes on.
type Handler interface {
	// OnOpen runs once the WebSocket handshake has completed.
	OnOpen(c Conn)
	// OnMessage runs for every complete text or binary message. data is
	// valid only until OnMessage returns.
	OnMessage(c Conn, op frame.OpCode, data []byte)
	// OnClose runs once when a connection that was opened has gone away:
	// the TCP connection is closed and c accepts no more writes. info says
	// which close code went on the wire (or 1006 if none did) and why.
	OnClose(c Conn, info CloseInfo)
}

// CloseInfo tells how a connection ended.
type CloseInfo struct {
	// Code is the close code of the close handshake: the one wsd sent if it
	// closed first, the peer's if the peer did, 1006 if the TCP connection
	// ended with no close frame either way.
	Code frame.CloseCode
	// Reason says why, beside the code.
	Reason CloseReason
}

// CloseReason says why a connection was closed. Many reasons share an RFC
// 6455 code (1001 is both shutdown and ping timeout), so metrics and logs
// use the reason.
type CloseReason uint8

const (
	// ReasonUnknown is the zero value: not decided yet.
	ReasonUnknown CloseReason = iota
	// ReasonPeer: the peer sent a close frame first (Code is the peer's).
	ReasonPeer
	// ReasonConnectionLost: the TCP connection ended without a close
	// handshake (reset, EOF, write error).
	ReasonConnectionLost
	// ReasonApplication: a Handler called Conn.Close.
	ReasonApplication
	// ReasonProtocolError: the peer broke RFC 6455 or RFC 7692 (1002, 1007).
	ReasonProtocolError
	// ReasonPolicy: the peer passed a configured limit (1009: a message
	// over MaxMessageBytes).
	ReasonPolicy
	// ReasonPingTimeout: the peer left MaxMissedPongs pings unanswered (1001).
	ReasonPingTimeout
	// ReasonSlowConsumer: the peer did not read fast enough to stay under
	// MaxOutboundBytes (1013).
	ReasonSlowConsumer
	// ReasonShutdown: the server is shutting down (1001).
	ReasonShutdown
	// ReasonInternalError: a Handler callback panicked (1011).
	ReasonInternalError
	// ReasonRateLimit: the peer went on past its message rate, or past its
	// inbound bytes per second (1008).
	ReasonRateLimit
	// ReasonIdle: the peer sent no data message for IdleTimeout (1000).
	ReasonIdle
	numCloseReasons
)

var closeReasonNames = [numCloseReasons]string{
	ReasonUnknown:        "unknown",
	ReasonPeer:           "peer",
	ReasonConnectionLost: "connection_lost",
	ReasonApplication:    "application",
	ReasonProtocolError:  "protocol_error",
	ReasonPolicy:         "policy",
	ReasonPingTimeout:    "ping_timeout",
	ReasonSlowConsumer:   "slow_consumer",
	ReasonShutdown:       "shutdown",
	ReasonInternalError:  "internal_error",
	ReasonRateLimit:      "rate_limit",
	ReasonIdle:           "idle",
}

// setReason records why ss is closing, unless a reason was already
// decided: the first cause is the one reported.
func setReason(ss *session.Session, r CloseReason) {
	if ss.Reason == 0 {
		ss.Reason = uint8(r)
	}
}

func (r CloseReason) String() string {
	if r < numCloseReasons {
		return closeReasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// RouteOptions configure one route.
type RouteOptions struct {
	// Subprotocols the route accepts, in no particular order: the first one
	// in the client's Sec-WebSocket-Protocol list that is here is chosen.
	Subprotocols []string
	// Authenticate, if set, checks each upgrade request of the route once
	// it is known to be a valid one, before the 101 is sent. An error
	// refuses the upgrade: an *HTTPError with its status and message, any
	// other error with 401. The value it returns becomes the connection's
	// Value. It runs on the event loop, so it must be quick (cache what is
	// costly to check).
	Authenticate func(r *Request) (any, error)
	// Alternate, if set, is a second encoding of the route's outbound
	// messages, for the connections that negotiate its subprotocol.
	Alternate *Alternate
}

type route struct {
	path      string
	handler   Handler
	protocols []string
	auth      func(*Request) (any, error)
	alt       *Alternate
	altProto  uint8 // index+1 of alt.Subprotocol in protocols: the sessions whose Proto it is get alt
}

// The handler is called only through these: each recovers a panic.

func (l *loop) callOpen(ss *session.Session) {
	defer l.recoverHandler(ss, "OnOpen")
	l.srv.routes[ss.Endpoint].handler.OnOpen(l.conn(ss))
}

func (l *loop) callMessage(ss *session.Session, op frame.OpCode, p []byte) {
	defer l.recoverHandler(ss, "OnMessage")
	l.srv.routes[ss.Endpoint].handler.OnMessage(l.conn(ss), op, p)
}

func (l *loop) callClose(ss *session.Session, info CloseInfo) {
	defer l.recoverHandler(ss, "OnClose")
	l.srv.routes[ss.Endpoint].handler.OnClose(l.conn(ss), info)
}

func (l *loop) callRateLimited(h RateLimitHandler, ss *session.Session, op frame.OpCode, p []byte) {
	defer l.recoverHandler(ss, "OnRateLimited")
	h.OnRateLimited(l.conn(ss), op, p)
}

func (l *loop) callExpire(h ExpiryHandler, ss *session.Session) {
	defer l.recoverHandler(ss, "OnExpire")
	h.OnExpire(l.conn(ss))
}

// recoverHandler turns a handler's panic into the end of its connection
// (1011) and an error log line; the loop and every other connection go on.
func (l *loop) recoverHandler(ss *session.Session, callback string) {
	r := recover()
	if r == nil {
		return
	}
	l.metrics.handlerPanics.inc()
	l.log.Error("handler panicked; closing the connection with 1011", "conn", l.connID(ss), "client", l.clientAddr(ss, ss.Conn),
		"callback", callback, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	if ss.State == session.Open || ss.State == session.Closing {
		ss.Flags |= session.FlagDiscard
		setReason(ss, ReasonInternalError)
		l.sendClose(ss, frame.CloseInternalError, "internal error")
	}
}
