package protocol_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/internal/stack"
	"github.com/wsdproject/wsd/internal/wstest"
)

// startStack and friends are internal/stack's, under the names the
// tests use.
type stackOptions = stack.Options

func startStack(t testing.TB, o stackOptions) *stack.Stack { return stack.Start(t, o) }

func token(t testing.TB, sub string, claims jwt.MapClaims) string { return stack.Token(t, sub, claims) }

// msg is any server message, decoded.
type msg struct {
	Type         string          `json:"type"`
	ID           json.RawMessage `json:"id"`
	Channel      string          `json:"channel"`
	Offset       uint64          `json:"offset"`
	Epoch        string          `json:"epoch"`
	Data         json.RawMessage `json:"data"`
	Recovered    *bool           `json:"recovered"`
	Code         string          `json:"code"`
	Message      string          `json:"message"`
	Presence     []clientInfo
	Publications []struct {
		Offset uint64          `json:"offset"`
		Data   json.RawMessage `json:"data"`
	}
	Info    clientInfo `json:"info"`
	Expires int64      `json:"expires"`
}

// read returns the client's next message.
func read(t testing.TB, c *wstest.Client) msg {
	t.Helper()
	op, p, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var m msg
	if op != frame.OpText || json.Unmarshal(p, &m) != nil {
		t.Fatalf("not a JSON text message: %q", p)
	}
	return m
}

// call sends a message and returns the next message received (its reply,
// when nothing else is in flight).
func call(t testing.TB, c *wstest.Client, format string, args ...any) msg {
	t.Helper()
	if err := c.Send(frame.OpText, fmt.Appendf(nil, format, args...)); err != nil {
		t.Fatal(err)
	}
	return read(t, c)
}

// subscribe subscribes c and checks the ack.
func subscribe(t testing.TB, c *wstest.Client, ch string) msg {
	t.Helper()
	m := call(t, c, `{"type":"subscribe","channel":%q,"id":"s"}`, ch)
	if m.Type != "ack" || m.Channel != ch || string(m.ID) != `"s"` {
		t.Fatalf("subscribe %s: %+v", ch, m)
	}
	return m
}

// barrier proves nothing else is queued for c: an echo comes straight back.
func barrier(t testing.TB, c *wstest.Client) {
	t.Helper()
	if m := call(t, c, `{"type":"echo","data":"barrier"}`); m.Type != "echo_reply" {
		t.Fatalf("expected nothing before the echo reply, got %+v", m)
	}
}

type clientInfo struct {
	Client string          `json:"client"`
	User   string          `json:"user"`
	Info   json.RawMessage `json:"info"`
}
