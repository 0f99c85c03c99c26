package engine

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/gobwas/httphead"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsflate"
	"github.com/wsdproject/wsd/internal/gnet"

	"github.com/wsdproject/wsd/session"
)

// failReason classifies a rejected handshake, for metrics and logs.
type failReason uint8

const (
	failNone failReason = iota
	failBadRequest
	failNotFound
	failVersion
	failMethod
	failTooLarge
	failTimeout
	failDraining
	failAborted
	failFull
	failUnauthorized
	failRefused
	numFailReasons
)

var failReasonNames = [numFailReasons]string{
	failNone:         "none",
	failBadRequest:   "bad_request",
	failNotFound:     "not_found",
	failVersion:      "unsupported_version",
	failMethod:       "method_not_allowed",
	failTooLarge:     "request_too_large",
	failTimeout:      "timeout",
	failDraining:     "draining",
	failAborted:      "aborted",
	failFull:         "loop_full",
	failUnauthorized: "unauthorized",
	failRefused:      "refused",
}

func (r failReason) String() string { return failReasonNames[r] }

// Rejections the upgrader's callbacks return.
var (
	errNotFound = ws.RejectConnectionError(ws.RejectionStatus(http.StatusNotFound))
	errDraining = ws.RejectConnectionError(ws.RejectionStatus(http.StatusServiceUnavailable))
)

// Every refusal is answered with one of these, built once (a rejected
// handshake allocates nothing for its answer), each with Connection: close
// because wsd closes the connection after it.
var (
	respBadRequest = httpResponse(http.StatusBadRequest, "malformed HTTP request")
	respNotFound   = httpResponse(http.StatusNotFound, "no WebSocket endpoint at this path")
	respMethod     = httpResponse(http.StatusMethodNotAllowed, "a WebSocket upgrade is a GET request", "Allow: GET")
	respVersion    = httpResponse(http.StatusUpgradeRequired, "unsupported WebSocket version", "Sec-WebSocket-Version: 13")
	respHTTP10     = httpResponse(http.StatusHTTPVersionNotSupported, "a WebSocket upgrade needs HTTP/1.1")
	respTooLarge   = httpResponse(http.StatusRequestHeaderFieldsTooLarge, "handshake request too large")
	respTimeout    = httpResponse(http.StatusRequestTimeout, "handshake timed out")
	respDraining   = httpResponse(http.StatusServiceUnavailable, "server is shutting down", "Retry-After: 1")
	respFull       = httpResponse(http.StatusServiceUnavailable, "server is at capacity", "Retry-After: 1")

	// respBadHeader answers the upgrader's 400s, naming the bad header.
	respBadHeader = map[error][]byte{}
)

func init() {
	for _, err := range []error{ws.ErrHandshakeBadHost, ws.ErrHandshakeBadUpgrade, ws.ErrHandshakeBadConnection,
		ws.ErrHandshakeBadSecKey, ws.ErrHandshakeBadSecVersion, ws.ErrMalformedRequest} {
		respBadHeader[err] = httpResponse(http.StatusBadRequest, strings.TrimPrefix(err.Error(), "handshake error: "))
	}
}

func httpResponse(code int, body string, headers ...string) []byte {
	var extra string
	for _, h := range headers {
		extra += h + "\r\n"
	}
	return []byte("HTTP/1.1 " + strconv.Itoa(code) + " " + http.StatusText(code) + "\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n" + extra +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
}

// upgradeResult is the outcome of one upgrade request.
type upgradeResult struct {
	ok       bool
	reason   failReason
	route    int   // index into the server's routes
	proto    int   // negotiated subprotocol: index+1 into the route's list, 0 for none
	deflate  bool  // permessage-deflate accepted
	window   uint8 // server_max_window_bits to compress with
	response []byte
}

// handshaker answers HTTP/1.1 upgrade requests from bytes already
// buffered, with gobwas/ws's Upgrader (RFC 6455 section 4.2 checks, 400/426
// statuses) run over an in-memory reader. One per event loop, reused: its
// callbacks are bound once and it allocates little per handshake.
type handshaker struct {
	routes      []route
	compression bool
	draining    func() bool

	upgrader ws.Upgrader
	req      bytes.Reader // the request being upgraded
	// What the route's Authenticate hook sees, copied out of the
	// upgrader's buffer (reused, so no allocation per handshake).
	uri, authorization, cookie []byte
	// What admission sees: Origin and Host (with an Origin allow-list),
	// X-Forwarded-For (from a trusted proxy).
	origin, host, xff []byte
	wantOrigin        bool   // set once: an allow-list is configured
	wantXFF           bool   // set per request: the peer is a trusted proxy
	out               []byte // the response being written
	res               upgradeResult
}

// Read and Write make the handshaker the "connection" the upgrader reads
// the buffered request from and writes its response to.
func (h *handshaker) Read(p []byte) (int, error) { return h.req.Read(p) }

func (h *handshaker) Write(p []byte) (int, error) {
	h.out = append(h.out, p...)
	return len(p), nil
}

func newHandshaker(routes []route, compression bool, maxRequest int, draining func() bool) *handshaker {
	h := &handshaker{routes: routes, compression: compression, draining: draining}
	h.upgrader = ws.Upgrader{
		ReadBufferSize:  maxRequest,
		WriteBufferSize: 512,
		OnRequest:       h.onRequest,
		Protocol:        h.selectProtocol,
		Negotiate:       h.negotiate,
		OnHeader:        h.onHeader,
		OnHost:          h.onHost,
	}
	return h
}

// endOfRequest returns the length of the HTTP request head at the start of
// b (through the blank line), or 0 if b does not hold all of it yet.
func endOfRequest(b []byte) int {
	if i := bytes.Index(b, []byte("\r\n\r\n")); i >= 0 {
		return i + 4
	}
	return 0
}

// upgrade processes one complete request head and returns the outcome and
// the bytes to send back. The result is valid until the next call.
func (h *handshaker) upgrade(req []byte) *upgradeResult {
	h.res = upgradeResult{route: -1}
	h.uri, h.authorization, h.cookie = h.uri[:0], h.authorization[:0], h.cookie[:0]
	h.origin, h.host, h.xff = h.origin[:0], h.host[:0], h.xff[:0]
	h.req.Reset(req)
	h.out = h.out[:0]
	_, err := h.upgrader.Upgrade(h)
	h.req.Reset(nil)
	res := &h.res
	res.response = h.out
	if err == nil && res.route >= 0 {
		res.ok = true
		return res
	}
	// The upgrader's own error responses are replaced by ours (they lack
	// Connection: close, and 405 its Allow header).
	res.deflate = false
	res.reason = failBadRequest
	switch err {
	case errNotFound:
		res.reason, res.response = failNotFound, respNotFound
	case errDraining:
		res.reason, res.response = failDraining, respDraining
	case ws.ErrHandshakeUpgradeRequired:
		res.reason, res.response = failVersion, respVersion
	case ws.ErrHandshakeBadMethod:
		res.reason, res.response = failMethod, respMethod
	case ws.ErrHandshakeBadProtocol:
		res.response = respHTTP10
	default:
		if r, ok := respBadHeader[err]; ok {
			res.response = r
		} else {
			res.response = respBadRequest
		}
	}
	return res
}

func (h *handshaker) onRequest(uri []byte) error {
	h.uri = append(h.uri[:0], uri...)
	path := uri
	if i := bytes.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	for i := range h.routes {
		if string(path) == h.routes[i].path {
			if h.draining() {
				return errDraining
			}
			h.res.route = i
			return nil
		}
	}
	return errNotFound
}

func (h *handshaker) onHost(host []byte) error {
	if h.wantOrigin {
		h.host = append(h.host[:0], host...)
	}
	return nil
}

// onHeader keeps the headers admission reads, and those an Authenticate
// hook reads (only for a route that has one).
func (h *handshaker) onHeader(key, value []byte) error {
	switch {
	case h.wantOrigin && bytes.EqualFold(key, []byte("Origin")):
		h.origin = append(h.origin[:0], value...)
		return nil
	case h.wantXFF && bytes.EqualFold(key, []byte("X-Forwarded-For")):
		if len(h.xff) > 0 {
			h.xff = append(h.xff, ',')
		}
		h.xff = append(h.xff, value...)
		return nil
	}
	if h.res.route < 0 || h.routes[h.res.route].auth == nil {
		return nil
	}
	switch {
	case bytes.EqualFold(key, []byte("Authorization")):
		h.authorization = append(h.authorization[:0], value...)
	case bytes.EqualFold(key, []byte("Cookie")):
		if len(h.cookie) > 0 { // several Cookie headers (HTTP/2 style): join them
			h.cookie = append(h.cookie, "; "...)
		}
		h.cookie = append(h.cookie, value...)
	}
	return nil
}

func (h *handshaker) selectProtocol(p []byte) bool {
	if h.res.route < 0 {
		return false
	}
	for i, name := range h.routes[h.res.route].protocols {
		if string(p) == name {
			h.res.proto = i + 1
			return true
		}
	}
	return false
}

// negotiate accepts the client's first acceptable permessage-deflate offer
// (RFC 7692). wsd always answers with server_no_context_takeover and
// client_no_context_takeover, so neither side keeps a compression window
// between messages and a connection holds no flate state; a client's
// server_max_window_bits is honoured by compressing with that window.
// An offer with unknown or malformed parameters is declined, not failed.
func (h *handshaker) negotiate(opt httphead.Option) (httphead.Option, error) {
	if !h.compression || h.res.deflate || !bytes.Equal(opt.Name, wsflate.ExtensionNameBytes) {
		return httphead.Option{}, nil
	}
	var offer wsflate.Parameters
	if err := offer.Parse(opt); err != nil {
		return httphead.Option{}, nil
	}
	accept := wsflate.Parameters{ServerNoContextTakeover: true, ClientNoContextTakeover: true}
	window := wsflate.WindowBits(15)
	if offer.ServerMaxWindowBits.Defined() {
		window = offer.ServerMaxWindowBits
		accept.ServerMaxWindowBits = window
	}
	h.res.deflate = true
	h.res.window = uint8(window)
	return accept.Option(), nil
}

var _ io.ReadWriter = (*handshaker)(nil)

// handshake reads the upgrade request once it is all buffered and answers it.
func (l *loop) handshake(c gnet.Conn, ss *session.Session) gnet.Action {
	limit := l.srv.cfg.MaxHandshakeBytes
	n := c.InboundBuffered()
	if n == 0 {
		return gnet.None
	}
	buf, err := c.Peek(min(n, limit))
	if err != nil {
		return gnet.None
	}
	a := l.srv.admit
	if ss.Has(session.FlagProxied) {
		if a.proxy && !ss.Has(session.FlagClientAddr) {
			if buf, err = l.proxyHeader(c, ss, buf, limit); err != nil {
				return l.refuse(c, ss, admitBadProxy)
			}
			// The per-address rules apply as soon as the header is in,
			// whether the request came with it or comes later (this branch
			// is not taken again).
			if ss.Has(session.FlagClientAddr) {
				if v := l.admitClient(ss, l.clientAddr(ss, c)); v != admitOK {
					return l.refuse(c, ss, v)
				}
			}
			if buf == nil {
				return gnet.None
			}
			n = c.InboundBuffered()
		}
	} else if yes, sure := looksLikeProxy(buf); yes {
		if !sure {
			return gnet.None
		}
		l.strike(ss)
		return l.refuse(c, ss, admitUntrustedProxy)
	}
	if buf[0] < 'A' || buf[0] > 'Z' { // not an HTTP method: TLS, garbage
		return l.reject(c, ss, failBadRequest, respBadRequest)
	}
	end := endOfRequest(buf)
	if end == 0 {
		if n >= limit {
			return l.reject(c, ss, failTooLarge, respTooLarge)
		}
		return gnet.None
	}
	l.hs.wantXFF = ss.Has(session.FlagProxied) && !a.proxy
	res := l.hs.upgrade(buf[:end])
	_, _ = l.src.Discard(end)
	if !res.ok {
		return l.reject(c, ss, res.reason, res.response)
	}
	if l.hs.wantXFF {
		if addr, ok := a.forwardedFor(l.hs.xff); ok {
			l.setClientAddr(ss, addr)
		} else {
			l.srv.logLimited.warn(l.log, "a trusted proxy sent no usable X-Forwarded-For: the connection counts under the proxy's address",
				"conn", l.connID(ss), "proxy", addrOf(c.RemoteAddr()))
		}
		if v := l.admitClient(ss, l.clientAddr(ss, c)); v != admitOK {
			return l.refuse(c, ss, v)
		}
	}
	if !a.originAllowed(l.hs.origin, l.hs.host) {
		return l.refuse(c, ss, admitOrigin)
	}
	rt := &l.srv.routes[res.route]
	if rt.auth != nil {
		req := Request{URI: l.hs.uri, Authorization: l.hs.authorization, Cookie: l.hs.cookie,
			RemoteAddr: c.RemoteAddr(), ClientAddr: l.clientAddr(ss, c)}
		v, err := rt.auth(&req)
		if err != nil {
			return l.reject(c, ss, failUnauthorized, refusal(err))
		}
		l.setValue(ss.Self, v)
	}
	ss.Endpoint = uint8(res.route)
	ss.Proto = uint8(res.proto)
	if res.deflate {
		ss.Flags |= session.FlagDeflate
		ss.Window = res.window
	}
	l.account(ss, len(res.response))
	_, _ = c.Write(res.response)
	if ss.State == session.Gone {
		return gnet.None
	}
	// Broadcasts posted before this moment go to the connections open
	// before it, not to this one.
	l.drainInbox()
	l.srv.timeouts.Opened(l.wheel, ss.Self)
	l.metrics.handshakeLatency.observe(time.Duration(msgNow()-ss.MsgTAT) * msgUnit)
	l.startLimits(ss)
	l.addMember(ss)
	l.metrics.handshakes.inc()
	l.debug("connection opened", ss, "path", l.srv.routes[ss.Endpoint].path,
		"deflate", ss.Has(session.FlagDeflate))
	l.cur = ss
	l.callOpen(ss)
	return gnet.None
}

// reject answers a failed handshake with an HTTP error and closes.
func (l *loop) reject(c gnet.Conn, ss *session.Session, reason failReason, resp []byte) gnet.Action {
	l.debug("handshake rejected", ss, "reason", reason.String())
	return l.answerAndClose(c, ss, reason, resp)
}

// answerAndClose writes a refusal's HTTP answer and closes.
func (l *loop) answerAndClose(c gnet.Conn, ss *session.Session, reason failReason, resp []byte) gnet.Action {
	l.metrics.handshakeFailures[reason].inc()
	ss.Flags |= session.FlagCloseSent
	_, _ = c.Discard(c.InboundBuffered())
	l.metrics.bytesOut.add(uint64(len(resp)))
	_, _ = c.Write(resp)
	return gnet.Close
}

// refuse answers a connection that admission refused (its log line goes
// through the limiter: refusals come in floods).
func (l *loop) refuse(c gnet.Conn, ss *session.Session, v admitVerdict) gnet.Action {
	l.srv.admit.reject(v)
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.srv.logLimited.debug(l.log, "connection refused", "conn", l.connID(ss), "client", l.clientAddr(ss, c), "reason", v.String())
	}
	return l.answerAndClose(c, ss, failRefused, l.srv.admit.response(v))
}

// proxyHeader consumes the PROXY header a trusted proxy opens the
// connection with and keeps the client address it names. It returns the
// bytes after it, nil when the header (or anything after it) has not all
// arrived yet.
func (l *loop) proxyHeader(c gnet.Conn, ss *session.Session, buf []byte, limit int) ([]byte, error) {
	n, err := proxyHeaderLen(buf, limit)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		if len(buf) >= limit {
			return nil, errors.New("PROXY header too long")
		}
		return nil, nil
	}
	addr, ok, err := l.proxy.parse(buf[:n])
	if err != nil {
		return nil, err
	}
	if !ok {
		addr = addrOf(c.RemoteAddr())
	}
	l.setClientAddr(ss, addr)
	_, _ = l.src.Discard(n)
	rest := c.InboundBuffered()
	if rest == 0 {
		return nil, nil
	}
	return c.Peek(min(rest, limit))
}

// Request is what a route's Authenticate hook sees of an upgrade request.
// The byte slices are valid only during the call.
type Request struct {
	URI           []byte     // the request target, with its query string
	Authorization []byte     // the Authorization header's value, or empty
	Cookie        []byte     // the Cookie header's value, or empty
	RemoteAddr    net.Addr   // the TCP peer (a trusted proxy, or the client)
	ClientAddr    netip.Addr // the client: as a trusted proxy gave it, else the TCP peer
}

// HTTPError refuses an upgrade with Status and a short plain-text Message
// (shown to the client: say what is wrong, never why internally).
type HTTPError struct {
	Status  int
	Message string
}

func (e *HTTPError) Error() string { return e.Message }

var respUnauthorized = httpResponse(http.StatusUnauthorized, "unauthorized", "WWW-Authenticate: Bearer")

// refusal is the response for an Authenticate hook's error.
func refusal(err error) []byte {
	var he *HTTPError
	if !errors.As(err, &he) || he.Status < 400 || he.Status > 599 {
		return respUnauthorized
	}
	var extra []string
	if he.Status == http.StatusUnauthorized {
		extra = append(extra, "WWW-Authenticate: Bearer")
	}
	return httpResponse(he.Status, he.Message, extra...)
}
