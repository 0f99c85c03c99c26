package protocol_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"testing"

	"github.com/tinylib/msgp/msgp"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/hub"
	"github.com/wsdproject/wsd/internal/wstest"
	"github.com/wsdproject/wsd/protocol"
)

// mpSend sends m as one MessagePack binary message.
func mpSend(t testing.TB, c *wstest.Client, m map[string]any) {
	t.Helper()
	b, err := msgp.AppendMapStrIntf(nil, m)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Send(frame.OpBinary, b); err != nil {
		t.Fatal(err)
	}
}

// mpRead returns the client's next message, read by msgp's own decoder
// (not by the transcoder under test).
func mpRead(t testing.TB, c *wstest.Client) map[string]any {
	t.Helper()
	op, p, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if op != frame.OpBinary {
		t.Fatalf("a wsd.msgpack client got a %v message: %q", op, p)
	}
	v, rest, err := msgp.ReadIntfBytes(p)
	m, ok := v.(map[string]any)
	if err != nil || len(rest) != 0 || !ok {
		t.Fatalf("not one MessagePack map: %x (%v)", p, err)
	}
	return m
}

func mpCall(t testing.TB, c *wstest.Client, m map[string]any) map[string]any {
	t.Helper()
	mpSend(t, c, m)
	return mpRead(t, c)
}

// same turns numbers into float64 (JSON's and JavaScript's one kind of
// number) and []byte-free MessagePack values into what encoding/json
// gives, so the two decodings compare.
func same(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, e := range x {
			out[k] = same(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = same(e)
		}
		return out
	case int64:
		return float64(x)
	case uint64:
		return float64(x)
	case float32:
		return float64(x)
	}
	return v
}

// TestMsgpackAndJSONSameChannel: a JSON and a MessagePack client on one
// channel receive the same publications — channel, offset, epoch and data
// — whether they were published by a JSON client, a MessagePack client or
// the server; a JSON subscriber gets a MessagePack client's data as JSON.
func TestMsgpackAndJSONSameChannel(t *testing.T) {
	s := startStack(t, stackOptions{Policy: hub.Policy{ClientPublish: true}})
	jc := s.Dial(t, "")
	mc := s.DialProtocol(t, "", protocol.SubprotocolMsgpack)
	if mc.Handshake.Protocol != protocol.SubprotocolMsgpack || jc.Handshake.Protocol != "" {
		t.Fatalf("negotiated %q and %q", mc.Handshake.Protocol, jc.Handshake.Protocol)
	}
	subscribe(t, jc, "news")
	if m := mpCall(t, mc, map[string]any{"type": "subscribe", "channel": "news", "id": int64(1)}); m["type"] != "ack" || m["channel"] != "news" || same(m["id"]) != 1.0 {
		t.Fatalf("msgpack subscribe: %v", m)
	}

	jsonData := []string{`{"price":101.25,"symbol":"WSD","tags":["a","b"],"ok":true,"none":null}`, `"text é ✓"`, `-42`, `[1,2.5,{"deep":[[]]}]`, `5.0`}
	mpData := []any{map[string]any{"a": int64(1), "f": 1.5, "s": "é", "l": []any{true, nil, "x"}}, "plain", int64(-7), uint64(1) << 40, float32(0.5)}
	// What a JSON subscriber gets for each MessagePack publication: the
	// same value in JSON (object keys in the order the sender wrote them,
	// so only single-key maps are compared as bytes).
	wantJSON := map[int]string{1: `"plain"`, 2: `-7`, 3: `1099511627776`, 4: `0.5`}

	pub := s.DialProtocol(t, "", protocol.SubprotocolMsgpack)
	jpub := s.Dial(t, "")
	var published []string // data as a JSON subscriber should see it, "" where compared by value only
	for i, d := range jsonData {
		if i%2 == 0 {
			if m := call(t, jpub, `{"type":"publish","channel":"news","data":%s}`, d); m.Type != "ack" {
				t.Fatalf("JSON publish: %+v", m)
			}
		} else if _, err := s.Hub.Publish("news", []byte(d)); err != nil {
			t.Fatal(err)
		}
		published = append(published, d)
	}
	for i, d := range mpData {
		if m := mpCall(t, pub, map[string]any{"type": "publish", "channel": "news", "data": d, "id": "p"}); m["type"] != "ack" || m["id"] != "p" {
			t.Fatalf("msgpack publish %v: %v", d, m)
		}
		published = append(published, wantJSON[i])
	}
	for i := range published {
		jm := read(t, jc)
		mm := mpRead(t, mc)
		if jm.Type != "message" || mm["type"] != "message" || mm["channel"] != jm.Channel || same(mm["offset"]) != float64(jm.Offset) || mm["epoch"] != jm.Epoch {
			t.Fatalf("publication %d: JSON %+v, msgpack %v", i, jm, mm)
		}
		if jm.Offset != uint64(i+1) {
			t.Fatalf("publication %d has offset %d", i, jm.Offset)
		}
		if i < len(jsonData) && string(jm.Data) != jsonData[i] {
			t.Fatalf("a JSON client's data reached a JSON subscriber as %s, published %s", jm.Data, jsonData[i])
		}
		if w := published[i]; w != "" && string(jm.Data) != w {
			t.Fatalf("MessagePack data reached a JSON subscriber as %s, want %s", jm.Data, w)
		}
		var fromJSON any
		if err := json.Unmarshal(jm.Data, &fromJSON); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(same(mm["data"]), fromJSON) {
			t.Fatalf("publication %d: msgpack subscriber got %#v, JSON subscriber %#v", i, mm["data"], fromJSON)
		}
	}
	// Kinds survive both ways: an integer stays an integer, a float a
	// float, for MessagePack subscribers whatever the publisher spoke.
	if m := mpCall(t, mc, map[string]any{"type": "history", "channel": "news"}); m["type"] != "ack" {
		t.Fatalf("history: %v", m)
	} else {
		pubs := m["publications"].([]any)
		if len(pubs) != len(published) {
			t.Fatalf("history has %d publications", len(pubs))
		}
		kinds := []string{"", "", "integer", "", "float", "", "", "integer", "integer", "float"}
		for i, k := range kinds {
			got := ""
			switch pubs[i].(map[string]any)["data"].(type) {
			case int64, uint64:
				got = "integer"
			case float32, float64:
				got = "float"
			}
			if k != "" && got != k {
				t.Errorf("history publication %d data is a MessagePack %s, want %s", i, got, k)
			}
		}
	}
}

// TestMsgpackRecovery: a MessagePack client that resubscribes with its
// position gets recovered:true and the missed publications, in
// MessagePack, in order.
func TestMsgpackRecovery(t *testing.T) {
	s := startStack(t, stackOptions{})
	c := s.DialProtocol(t, "", protocol.SubprotocolMsgpack)
	mpCall(t, c, map[string]any{"type": "subscribe", "channel": "feed"})
	if _, err := s.Hub.Publish("feed", []byte(`{"n":1}`)); err != nil {
		t.Fatal(err)
	}
	live := mpRead(t, c)
	epoch, _ := live["epoch"].(string)
	if same(live["offset"]) != 1.0 || epoch == "" {
		t.Fatalf("live: %v", live)
	}
	c.Conn.Close()
	for i := 2; i <= 4; i++ {
		if _, err := s.Hub.Publish("feed", fmt.Appendf(nil, `{"n":%d}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	c = s.DialProtocol(t, "", protocol.SubprotocolMsgpack)
	m := mpCall(t, c, map[string]any{"type": "subscribe", "channel": "feed", "since": map[string]any{"offset": int64(1), "epoch": epoch}})
	if m["type"] != "ack" || m["recovered"] != true {
		t.Fatalf("recovering subscribe: %v", m)
	}
	for i := 2; i <= 4; i++ {
		m := mpRead(t, c)
		if same(m["offset"]) != float64(i) || !reflect.DeepEqual(same(m["data"]), map[string]any{"n": float64(i)}) {
			t.Fatalf("replayed %d: %v", i, m)
		}
	}
}

// TestMsgpackHostile: malformed MessagePack is refused like malformed JSON
// (INVALID_MESSAGE_FORMAT, the connection stays usable), lengths the peer
// states are not believed, and each connection must use its own encoding.
func TestMsgpackHostile(t *testing.T) {
	s := startStack(t, stackOptions{Policy: hub.Policy{ClientPublish: true}})
	c := s.DialProtocol(t, "", protocol.SubprotocolMsgpack)
	bad := map[string][]byte{
		"garbage":                     {0xc1, 0xc1},
		"map claims 2^32-1 entries":   {0xdf, 0xff, 0xff, 0xff, 0xff, 0xa4, 't', 'y', 'p', 'e'},
		"array claims 2^32-1":         {0xdd, 0xff, 0xff, 0xff, 0xff, 0x01},
		"str claims 4 GiB":            {0x81, 0xa4, 't', 'y', 'p', 'e', 0xdb, 0xff, 0xff, 0xff, 0xff, 'e'},
		"not a map":                   {0x93, 0x01, 0x02, 0x03},
		"integer key":                 {0x81, 0x01, 0xa4, 'e', 'c', 'h', 'o'},
		"bin data":                    append([]byte{0x82, 0xa4, 't', 'y', 'p', 'e', 0xa4, 'e', 'c', 'h', 'o', 0xa4, 'd', 'a', 't', 'a'}, msgp.AppendBytes(nil, []byte{1, 2})...),
		"trailing bytes":              {0x81, 0xa4, 't', 'y', 'p', 'e', 0xa4, 'e', 'c', 'h', 'o', 0xc0},
		"NaN data":                    append([]byte{0x82, 0xa4, 't', 'y', 'p', 'e', 0xa4, 'e', 'c', 'h', 'o', 0xa4, 'd', 'a', 't', 'a'}, msgp.AppendFloat64(nil, nan())...),
		"type is not a string":        {0x81, 0xa4, 't', 'y', 'p', 'e', 0x05},
		"nested past the depth limit": deepArray(20000),
		// 300 KB of MessagePack that would be 1.5 MB of JSON, past the
		// stack's 1 MiB message limit.
		"larger than the limit as JSON": nils(300_000),
	}
	for name, b := range bad {
		if err := c.Send(frame.OpBinary, b); err != nil {
			t.Fatal(err)
		}
		if m := mpRead(t, c); m["type"] != "error" || m["code"] != protocol.CodeInvalidMessageFormat {
			t.Fatalf("%s: %v", name, m)
		}
	}
	if err := c.Send(frame.OpText, []byte(`{"type":"echo","data":1}`)); err != nil {
		t.Fatal(err)
	}
	if m := mpRead(t, c); m["type"] != "error" || m["code"] != protocol.CodeInvalidMessageFormat {
		t.Fatalf("JSON text on a wsd.msgpack connection: %v", m)
	}
	if m := mpCall(t, c, map[string]any{"type": "echo", "data": map[string]any{"still": "open"}}); m["type"] != "echo_reply" || !reflect.DeepEqual(m["data"], map[string]any{"still": "open"}) {
		t.Fatalf("echo after the refusals: %v", m)
	}
	j := s.Dial(t, "")
	if err := j.Send(frame.OpBinary, []byte{0x80}); err != nil {
		t.Fatal(err)
	}
	if m := read(t, j); m.Code != protocol.CodeInvalidMessageFormat {
		t.Fatalf("MessagePack on a JSON connection: %+v", m)
	}
}

func nils(n int) []byte {
	b := []byte{0x82, 0xa4, 't', 'y', 'p', 'e', 0xa4, 'e', 'c', 'h', 'o', 0xa4, 'd', 'a', 't', 'a'}
	b = msgp.AppendArrayHeader(b, uint32(n))
	for range n {
		b = msgp.AppendNil(b)
	}
	return b
}

func deepArray(n int) []byte {
	b := make([]byte, 0, n+16)
	b = append(b, 0x82, 0xa4, 't', 'y', 'p', 'e', 0xa4, 'e', 'c', 'h', 'o', 0xa4, 'd', 'a', 't', 'a')
	for range n {
		b = append(b, 0x91)
	}
	return append(b, 0xc0)
}

func nan() float64 { return math.NaN() }

// TestMsgpackServerMessages: what the server sends on its own — join and
// leave events, an unsubscribe by the HTTP API — reaches a wsd.msgpack
// client in MessagePack too.
func TestMsgpackServerMessages(t *testing.T) {
	s := startStack(t, stackOptions{Tokens: true, Channel: func(string) hub.ChannelOptions {
		return hub.ChannelOptions{JoinLeave: true}
	}})
	c := s.DialProtocol(t, token(t, "alice", nil), protocol.SubprotocolMsgpack)
	if m := mpCall(t, c, map[string]any{"type": "subscribe", "channel": "room"}); m["type"] != "ack" {
		t.Fatalf("subscribe: %v", m)
	}
	if m := mpRead(t, c); m["type"] != "join" || m["channel"] != "room" || m["info"].(map[string]any)["user"] != "alice" {
		t.Fatalf("own join: %v", m)
	}
	other := s.Dial(t, token(t, "bob", nil))
	subscribe(t, other, "room")
	if m := mpRead(t, c); m["type"] != "join" || m["info"].(map[string]any)["user"] != "bob" {
		t.Fatalf("bob's join: %v", m)
	}
	other.Conn.Close()
	if m := mpRead(t, c); m["type"] != "leave" || m["info"].(map[string]any)["user"] != "bob" {
		t.Fatalf("bob's leave: %v", m)
	}
	if n, err := s.Hub.UnsubscribeUser(context.Background(), "alice", "room"); err != nil || n != 1 {
		t.Fatalf("UnsubscribeUser: %d %v", n, err)
	}
	if m := mpRead(t, c); m["type"] != "unsubscribed" || m["channel"] != "room" {
		t.Fatalf("unsubscribed: %v", m)
	}
}
