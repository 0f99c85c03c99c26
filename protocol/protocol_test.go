package protocol_test

import (
	"encoding/json"
	"testing"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/internal/wstest"
	"github.com/wsdproject/wsd/protocol"
)

func startServer(t *testing.T) string {
	t.Helper()
	return startStack(t, stackOptions{}).Addr
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
	c := wstest.Dial(t, addr, "/ws", wstest.Options{Protocols: []string{protocol.Subprotocol}})
	if c.Handshake.Protocol != protocol.Subprotocol {
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
		{frame.OpText, "{\"type\":\"publish\",\"data\":\"\x01\"}", invalid}, // a raw control character
		{frame.OpText, `{"type":"echo","id":[1,],"data":1}`, invalid},
		{frame.OpText, `{"type":7}`, `{"type":"error","code":"INVALID_MESSAGE_FORMAT","message":"\"type\" must be a string"}`},
		{frame.OpText, `{"type":null,"id":3}`, `{"type":"error","id":3,"code":"INVALID_MESSAGE_FORMAT","message":"\"type\" must be a string"}`},
		{frame.OpText, ``, invalid},
		{frame.OpText, `{"data":1}`, `{"type":"error","code":"INVALID_MESSAGE_FORMAT","message":"missing \"type\""}`},
		{frame.OpText, `{"type":"launch","id":"x1"}`, `{"type":"error","id":"x1","code":"UNKNOWN_MESSAGE_TYPE","message":"unknown message type"}`},
		{frame.OpBinary, `{"type":"echo"}`, `{"type":"error","code":"INVALID_MESSAGE_FORMAT","message":"binary messages are not supported on wsd.json; send JSON text, or connect with the wsd.msgpack subprotocol"}`},
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
