package protocol_test

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/wsdproject/wsd/broker"
	"github.com/wsdproject/wsd/hub"
	"github.com/wsdproject/wsd/protocol"
)

// notCarriable is valid JSON (what a JSON client or the HTTP API may send)
// that MessagePack cannot carry: a number beyond float64's range could
// only become an infinity, which has no way back to JSON.
var notCarriable = []string{`{"n":1e400}`, `[-1e400]`, `1e400`, strings.Repeat("9", 400)}

// TestPublishRefusesDataMessagePackCannotCarry: a publication whose data
// one of the subprotocols could not deliver is refused before it gets an
// offset, from every entry (Hub.Publish, which the HTTP API calls, and a
// client's publish), so every accepted publication can reach every
// subscriber. (It was accepted, and its MessagePack subscribers never got
// it, live or recovered.)
func TestPublishRefusesDataMessagePackCannotCarry(t *testing.T) {
	s := startStack(t, stackOptions{Policy: hub.Policy{ClientPublish: true}})
	mp := s.DialProtocol(t, "", protocol.SubprotocolMsgpack)
	mpCall(t, mp, map[string]any{"type": "subscribe", "channel": "feed"})
	for _, d := range notCarriable {
		if pos, err := s.Hub.Publish("feed", []byte(d)); !errors.Is(err, hub.ErrInvalidData) {
			t.Fatalf("Hub.Publish(%s): %+v, %v; want ErrInvalidData", d, pos, err)
		}
	}
	js := s.Dial(t, "")
	m := call(t, js, `{"type":"publish","id":1,"channel":"feed","data":{"n":1e400}}`)
	if m.Type != "error" || m.Code != protocol.CodeInvalidMessageFormat || string(m.ID) != "1" || !strings.Contains(m.Message, "float64") {
		t.Fatalf("client publish of 1e400: %+v", m)
	}
	// Nothing got an offset: the next publication is the channel's first,
	// and the MessagePack subscriber receives it.
	pos, err := s.Hub.Publish("feed", []byte(`{"n":1e300}`))
	if err != nil || pos.Offset != 1 {
		t.Fatalf("publish after the refusals: %+v, %v", pos, err)
	}
	if got := mpRead(t, mp); same(got["offset"]) != 1.0 || !reflect.DeepEqual(same(got["data"]), map[string]any{"n": 1e300}) {
		t.Fatalf("MessagePack subscriber got %v", got)
	}
}

// putUncarriable puts data MessagePack cannot carry into feed's history
// through the broker itself: what a node that did not refuse it yet (an
// older version, sharing Redis) may have left there.
func putUncarriable(t *testing.T, mem *broker.Memory, ch string) uint64 {
	t.Helper()
	pos, err := mem.Publish(ch, []byte(`{"n":1e400}`), broker.ChannelOptions{HistorySize: 100, HistoryTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return pos.Offset
}

// TestMsgpackRecoveryGoesOnPastUncarriable: a MessagePack client recovering
// across a publication it cannot receive gets the ones after it, in order,
// then the live ones. (The replay stopped at it, and the later offsets,
// under the subscriber's filter, were lost live too.)
func TestMsgpackRecoveryGoesOnPastUncarriable(t *testing.T) {
	s := startStack(t, stackOptions{})
	pub := func(n int) {
		t.Helper()
		if _, err := s.Hub.Publish("feed", fmt.Appendf(nil, `{"n":%d}`, n)); err != nil {
			t.Fatal(err)
		}
	}
	pub(1)
	pub(2)
	if off := putUncarriable(t, s.Mem, "feed"); off != 3 {
		t.Fatalf("put at offset %d", off)
	}
	pub(4)
	pub(5)
	_, head, err := s.Hub.History("feed", nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	c := s.DialProtocol(t, "", protocol.SubprotocolMsgpack)
	m := mpCall(t, c, map[string]any{"type": "subscribe", "channel": "feed", "since": map[string]any{"offset": int64(1), "epoch": head.Epoch}})
	if m["type"] != "ack" || m["recovered"] != true || same(m["offset"]) != 5.0 {
		t.Fatalf("recovering subscribe: %v", m)
	}
	pub(6)
	for _, want := range []int{2, 4, 5, 6} {
		m := mpRead(t, c)
		if m["type"] != "message" || same(m["offset"]) != float64(want) || !reflect.DeepEqual(same(m["data"]), map[string]any{"n": float64(want)}) {
			t.Fatalf("want offset %d, got %v", want, m)
		}
	}
	var b bytes.Buffer
	s.Srv.WriteMetrics(&b)
	if !strings.Contains(b.String(), "\nwsd_encode_failures_total 1\n") {
		t.Fatalf("the skipped publication is not counted once in wsd_encode_failures_total:\n%s", b.String())
	}
}

// TestMsgpackReplyThatCannotBeEncodedIsAnError: a history reply holding a
// publication MessagePack cannot carry is answered with NOT_ENCODABLE (and
// the request's id), not left unanswered; a JSON client gets the history.
func TestMsgpackReplyThatCannotBeEncodedIsAnError(t *testing.T) {
	s := startStack(t, stackOptions{})
	putUncarriable(t, s.Mem, "feed")
	c := s.DialProtocol(t, "", protocol.SubprotocolMsgpack)
	mpSend(t, c, map[string]any{"type": "history", "channel": "feed", "id": int64(7)})
	mpSend(t, c, map[string]any{"type": "echo", "data": "after", "id": int64(8)})
	if m := mpRead(t, c); m["type"] != "error" || m["code"] != protocol.CodeNotEncodable || same(m["id"]) != 7.0 {
		t.Fatalf("history's reply: %v", m)
	}
	if m := mpRead(t, c); m["type"] != "echo_reply" || same(m["id"]) != 8.0 {
		t.Fatalf("echo's reply: %v", m)
	}
	js := s.Dial(t, "")
	m := call(t, js, `{"type":"history","id":1,"channel":"feed"}`)
	if m.Type != "ack" || len(m.Publications) != 1 || string(m.Publications[0].Data) != `{"n":1e400}` {
		t.Fatalf("JSON client's history: %+v", m)
	}
}

// TestPublishRefusesInvalidUTF8: data that is not UTF-8 is refused before
// it gets an offset. A client cannot send it (the engine checks a text
// message's UTF-8, MessagePack str is checked on the way in), but the HTTP
// API's body is JSON that encoding/json does not check, and Hub.Publish is
// what the API calls. (It was accepted: a text frame JSON subscribers'
// WebSocket must fail on, and a MessagePack str that is not one.)
func TestPublishRefusesInvalidUTF8(t *testing.T) {
	s := startStack(t, stackOptions{})
	js := s.Dial(t, "")
	subscribe(t, js, "feed")
	mp := s.DialProtocol(t, "", protocol.SubprotocolMsgpack)
	mpCall(t, mp, map[string]any{"type": "subscribe", "channel": "feed"})
	for _, d := range []string{"\"\xe9\"", "{\"s\":\"caf\xc3\"}", "{\"\xff\":1}", "[\"\\t\xed\xa0\x80\"]"} {
		if pos, err := s.Hub.Publish("feed", []byte(d)); !errors.Is(err, hub.ErrInvalidData) || !strings.Contains(err.Error(), "UTF-8") {
			t.Fatalf("Hub.Publish(%q): %+v, %v; want ErrInvalidData naming UTF-8", d, pos, err)
		}
	}
	pos, err := s.Hub.Publish("feed", []byte(`"café"`))
	if err != nil || pos.Offset != 1 {
		t.Fatalf("publish after the refusals: %+v, %v", pos, err)
	}
	if m := read(t, js); m.Offset != 1 || string(m.Data) != `"café"` {
		t.Fatalf("JSON subscriber got %+v", m)
	}
	if m := mpRead(t, mp); same(m["offset"]) != 1.0 || m["data"] != "café" {
		t.Fatalf("MessagePack subscriber got %v", m)
	}
}
