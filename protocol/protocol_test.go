package protocol

import (
	"encoding/json"
	"testing"

	"github.com/wsdproject/wsd/engine"
	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/internal/testserver"
	"github.com/wsdproject/wsd/internal/wstest"
)

func startServer(t *testing.T) string {
	t.Helper()
	return testserver.Start(t, engine.Config{},
		testserver.Route{Path: "/ws", Handler: Handler{}, Options: engine.RouteOptions{Subprotocols: []string{Subprotocol}}},
		testserver.Route{Path: "/echo", Handler: engine.Echo{}},
	).Addr().String()
}

func roundTrip(t *testing.T, c *wstest.Client, op frame.OpCode, msg string) string {
	t.Helper()
	if err := c.Send(op, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	gotOp, got, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("reply to %q: %v", msg, err)
	}
	if gotOp != frame.OpText || !json.Valid(got) {
		t.Fatalf("reply to %q is not a JSON text message: %q", msg, got)
	}
	return string(got)
}

func TestEcho(t *testing.T) {
	addr := startServer(t)
	c := wstest.Dial(t, addr, "/ws", wstest.Options{Protocols: []string{Subprotocol}})
	if c.Handshake.Protocol != Subprotocol {
		t.Fatalf("subprotocol %q", c.Handshake.Protocol)
	}
	cases := []struct{ in, want string }{
		{`{"type":"echo","data":{"b":[1,2,{"c":null}],"a":"x"}}`, `{"type":"echo_reply","data":{"b":[1,2,{"c":null}],"a":"x"}}`},
		// data is raw JSON: spacing, key order and number forms survive.
		{`{ "data" : [ 1.50, 2e3 , "\u00e9" ] , "type" : "echo" }`, `{"type":"echo_reply","data":[ 1.50, 2e3 , "\u00e9" ]}`},
		{`{"type":"echo","id":42,"data":"hi"}`, `{"type":"echo_reply","id":42,"data":"hi"}`},
		{`{"type":"echo","id":"req-7"}`, `{"type":"echo_reply","id":"req-7"}`},
		// An explicit null is data too; an absent data stays absent.
		{`{"type":"echo","data":null}`, `{"type":"echo_reply","data":null}`},
		{`{"type":"echo","id":1,"data": null }`, `{"type":"echo_reply","id":1,"data":null}`},
		{`{"type":"echo","data":"κόσμε","extra":{"ignored":true}}`, `{"type":"echo_reply","data":"κόσμε"}`},
	}
	for _, tc := range cases {
		if got := roundTrip(t, c, frame.OpText, tc.in); got != tc.want {
			t.Errorf("%s\n got %s\nwant %s", tc.in, got, tc.want)
		}
	}
}

func TestErrors(t *testing.T) {
	addr := startServer(t)
	c := wstest.Dial(t, addr, "/ws", wstest.Options{})
	invalid := `{"type":"error","code":"INVALID_MESSAGE_FORMAT","message":"message is not a valid JSON object"}`
	cases := []struct {
		op       frame.OpCode
		in, want string
	}{
		{frame.OpText, `not json`, invalid},
		{frame.OpText, `{"type":"echo","data":{"a":}}`, invalid},
		{frame.OpText, `{"type":"echo"`, invalid},
		{frame.OpText, `[1,2]`, invalid},
		{frame.OpText, `"echo"`, invalid},
		{frame.OpText, `{"type":"echo"} trailing`, invalid},
		{frame.OpText, "{\"type\":\"broadcast\",\"data\":\"\x01\"}", invalid}, // a raw control character
		{frame.OpText, `{"type":"echo","id":[1,],"data":1}`, invalid},
		{frame.OpText, `{"type":7}`, `{"type":"error","code":"INVALID_MESSAGE_FORMAT","message":"\"type\" must be a string"}`},
		{frame.OpText, `{"type":null,"id":3}`, `{"type":"error","id":3,"code":"INVALID_MESSAGE_FORMAT","message":"\"type\" must be a string"}`},
		{frame.OpText, ``, invalid},
		{frame.OpText, `{"data":1}`, `{"type":"error","code":"INVALID_MESSAGE_FORMAT","message":"missing \"type\""}`},
		{frame.OpText, `{"type":"launch","id":"x1"}`, `{"type":"error","id":"x1","code":"UNKNOWN_MESSAGE_TYPE","message":"unknown message type"}`},
		{frame.OpBinary, `{"type":"echo"}`, `{"type":"error","code":"INVALID_MESSAGE_FORMAT","message":"binary messages are not supported; send JSON text"}`},
	}
	for _, tc := range cases {
		if got := roundTrip(t, c, tc.op, tc.in); got != tc.want {
			t.Errorf("%q\n got %s\nwant %s", tc.in, got, tc.want)
		}
	}
	// The connection survives every error.
	if got := roundTrip(t, c, frame.OpText, `{"type":"echo","data":1}`); got != `{"type":"echo_reply","data":1}` {
		t.Fatalf("after errors: %s", got)
	}
}

// TestBroadcast: a broadcast reaches every /ws connection on every loop,
// the sender included, exactly once and in order, and none on /echo.
func TestBroadcast(t *testing.T) {
	addr := startServer(t)
	var clients []*wstest.Client
	for range 20 {
		clients = append(clients, wstest.Dial(t, addr, "/ws", wstest.Options{}))
	}
	other := wstest.Dial(t, addr, "/echo", wstest.Options{})
	for i := range 5 {
		msg := `{"type":"broadcast","id":"ignored","data":{"n":` + string(rune('0'+i)) + `}}`
		if err := clients[i].Send(frame.OpText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		// Wait until everyone has it before the next, so order is defined.
		want := `{"type":"broadcast","data":{"n":` + string(rune('0'+i)) + `}}`
		for j, c := range clients {
			_, got, err := c.ReadMessage()
			if err != nil || string(got) != want {
				t.Fatalf("client %d, broadcast %d: %q %v", j, i, got, err)
			}
		}
	}
	// Nothing extra arrived anywhere: an echo round trip comes back first.
	for j, c := range clients {
		if got := roundTrip(t, c, frame.OpText, `{"type":"echo","data":"end"}`); got != `{"type":"echo_reply","data":"end"}` {
			t.Fatalf("client %d got %s", j, got)
		}
	}
	other.Send(frame.OpText, []byte("echo only"))
	if _, got, _ := other.ReadMessage(); string(got) != "echo only" {
		t.Fatalf("/echo connection got %q", got)
	}
}

// TestBroadcastCompressed: clients with and without permessage-deflate get
// the same broadcast.
func TestBroadcastCompressed(t *testing.T) {
	s := testserver.Start(t, engine.Config{Compression: true}, testserver.Route{Path: "/ws", Handler: Handler{}})
	addr := s.Addr().String()
	z := wstest.Dial(t, addr, "/ws", wstest.Options{Deflate: true})
	plain := wstest.Dial(t, addr, "/ws", wstest.Options{})
	if !z.Deflate || plain.Deflate {
		t.Fatalf("deflate negotiated: %v / %v", z.Deflate, plain.Deflate)
	}
	data := `"this text repeats, this text repeats, this text repeats, this text repeats"`
	z.SendCompressed(frame.OpText, []byte(`{"type":"broadcast","data":`+data+`}`))
	want := `{"type":"broadcast","data":` + data + `}`
	for _, c := range []*wstest.Client{z, plain} {
		h, p, err := c.ReadFrame()
		if err != nil || !h.Fin || h.OpCode != frame.OpText {
			t.Fatalf("frame %+v, %v", h, err)
		}
		// The compressed client gets the compressed frame, the other the plain one.
		if compressed := h.Rsv&frame.Rsv1 != 0; compressed != c.Deflate {
			t.Fatalf("RSV1 %v for a client with deflate %v", compressed, c.Deflate)
		}
		if c.Deflate {
			if len(p) >= len(want) {
				t.Fatalf("compressed frame of %d bytes for a %d-byte message", len(p), len(want))
			}
			var zr frame.Inflater
			if p, err = zr.Inflate(nil, p, 1<<20); err != nil {
				t.Fatal(err)
			}
		}
		if string(p) != want {
			t.Fatalf("got %q", p)
		}
	}
}
