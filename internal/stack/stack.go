// Package stack starts a whole wsd WebSocket endpoint for tests: the
// engine, the memory broker (or one the test gives), the hub and the JSON protocol on /ws (plus an
// echo route on /echo), on a free loopback port, stopped when the test
// ends.
package stack

import (
	"net/http"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wsdproject/wsd/auth"
	"github.com/wsdproject/wsd/broker"
	"github.com/wsdproject/wsd/engine"
	"github.com/wsdproject/wsd/hub"
	"github.com/wsdproject/wsd/internal/testserver"
	"github.com/wsdproject/wsd/internal/wstest"
	"github.com/wsdproject/wsd/protocol"
)

// Secret is the HS256 secret of Options.Tokens.
var Secret = []byte("an HMAC secret of at least thirty-two bytes")

// Options change the stack.
type Options struct {
	Engine engine.Config // Addr is set; Loops 2 and CloseTimeout 1s unless set
	// Channel gives channels their options; nil: history of 100 for a
	// minute, no presence or events.
	Channel   func(string) hub.ChannelOptions
	Policy    hub.Policy
	Tokens    bool // require HS256 tokens signed with Secret (Token makes them)
	Anonymous bool // with Tokens: admit clients without one
	// MaxChannels bounds the channels with subscribers (hub default if 0).
	MaxChannels int
	// Broker, if set, carries the channels instead of a new Memory broker
	// (the stack's Mem is then nil); the stack closes it when it stops.
	Broker broker.Broker
	// NodeID names the node (default "test").
	NodeID string
}

// Stack is a running endpoint.
type Stack struct {
	Addr string
	Srv  *engine.Server
	Hub  *hub.Hub
	Mem  *broker.Memory
}

// Start starts a stack and stops it when the test ends.
func Start(t testing.TB, o Options) *Stack {
	t.Helper()
	cfg := o.Engine
	cfg.Addr = "127.0.0.1:0"
	if cfg.Loops == 0 {
		cfg.Loops = 2
	}
	if cfg.CloseTimeout == 0 {
		cfg.CloseTimeout = time.Second
	}
	cfg.Logger = testserver.Logger()
	srv, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var mem *broker.Memory
	b := o.Broker
	if b == nil {
		mem = broker.NewMemory(broker.MemoryOptions{})
		b = mem
	}
	if o.NodeID == "" {
		o.NodeID = "test"
	}
	if o.Channel == nil {
		o.Channel = func(string) hub.ChannelOptions {
			return hub.ChannelOptions{ChannelOptions: broker.ChannelOptions{HistorySize: 100, HistoryTTL: time.Minute}}
		}
	}
	h, err := hub.New(hub.Options{Server: srv, Broker: b, Channel: o.Channel, NodeID: o.NodeID, Logger: cfg.Logger,
		MaxChannels: o.MaxChannels})
	if err != nil {
		t.Fatal(err)
	}
	var v *auth.Verifier
	if o.Tokens {
		if v, err = auth.NewVerifier(auth.Config{HMACSecret: Secret}); err != nil {
			t.Fatal(err)
		}
	}
	handler := protocol.New(protocol.Options{Hub: h, Verifier: v, Policy: o.Policy, Logger: cfg.Logger,
		MaxMessageBytes: int(srv.Config().MaxMessageBytes)})
	if err := srv.Handle("/ws", handler, engine.RouteOptions{Subprotocols: []string{protocol.Subprotocol, protocol.SubprotocolMsgpack},
		Alternate:    protocol.MsgpackAlternate(),
		Authenticate: protocol.Authenticator(v, "wsd_token", o.Anonymous || v == nil)}); err != nil {
		t.Fatal(err)
	}
	if err := srv.Handle("/echo", engine.Echo{}, engine.RouteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() }) // after the server stops (cleanups run last first)
	testserver.StopAtCleanup(t, srv)
	return &Stack{Addr: srv.Addr().String(), Srv: srv, Hub: h, Mem: mem}
}

// Token signs an HS256 token for sub with extra claims.
func Token(t testing.TB, sub string, claims jwt.MapClaims) string {
	t.Helper()
	c := jwt.MapClaims{"sub": sub}
	for k, v := range claims {
		c[k] = v
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(Secret)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Dial opens a /ws client, with a bearer token if tok is not empty.
func (s *Stack) Dial(t testing.TB, tok string) *wstest.Client {
	t.Helper()
	return s.DialProtocol(t, tok, "")
}

// DialProtocol opens a /ws client asking for subprotocol proto (none if
// empty), with a bearer token if tok is not empty.
func (s *Stack) DialProtocol(t testing.TB, tok, proto string) *wstest.Client {
	t.Helper()
	o := wstest.Options{}
	if proto != "" {
		o.Protocols = []string{proto}
	}
	if tok != "" {
		o.Header = http.Header{"Authorization": {"Bearer " + tok}}
	}
	return wstest.Dial(t, s.Addr, "/ws", o)
}
