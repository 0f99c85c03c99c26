package protocol_test

import (
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsdproject/wsd/engine"
	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/hub"
	"github.com/wsdproject/wsd/internal/wstest"
	"github.com/wsdproject/wsd/protocol"
)

// TestBadChannelInput: malformed channel operations get their documented
// error, and neither that client nor anyone else loses a message.
func TestBadChannelInput(t *testing.T) {
	s := startStack(t, stackOptions{Engine: engine.Config{MaxMessageBytes: 4096}, Policy: hub.Policy{ClientPublish: true}})
	bystander := s.Dial(t, "")
	subscribe(t, bystander, "news")
	bad := s.Dial(t, "")
	subscribe(t, bad, "news")
	long := strings.Repeat("x", 256)
	for _, tc := range []struct{ in, code string }{
		{`{"type":"subscribe"}`, protocol.CodeInvalidChannel},
		{`{"type":"subscribe","channel":""}`, protocol.CodeInvalidChannel},
		{`{"type":"subscribe","channel":"has space"}`, protocol.CodeInvalidChannel},
		{`{"type":"subscribe","channel":"a::b"}`, protocol.CodeInvalidChannel},
		{`{"type":"subscribe","channel":"` + long + `"}`, protocol.CodeInvalidChannel},
		{`{"type":"subscribe","channel":"caf\u00e9"}`, protocol.CodeInvalidChannel},
		{`{"type":"subscribe","channel":7}`, protocol.CodeInvalidMessageFormat},
		{`{"type":"subscribe","channel":"x","since":{"offset":-1}}`, protocol.CodeInvalidMessageFormat},
		{`{"type":"subscribe","channel":"x","since":{"offset":"1"}}`, protocol.CodeInvalidMessageFormat},
		{`{"type":"history","channel":"x","limit":-5}`, protocol.CodeInvalidMessageFormat},
		{`{"type":"publish","channel":"news"}`, protocol.CodeMissingData},
		{`{"type":"publish","channel":"","data":1}`, protocol.CodeInvalidChannel},
		{`{"type":"unsubscribe","channel":"never"}`, protocol.CodeNotSubscribed},
		{`{"type":"broadcast","data":"everyone"}`, protocol.CodeForbidden},
		{`{"type":"refresh","token":"x"}`, protocol.CodeInvalidToken},
		{`{"type":"subscribe!","channel":"x"}`, protocol.CodeUnknownMessageType},
		{`{"type":"publish","channel":"news","data":{"a":}}`, protocol.CodeInvalidMessageFormat},
	} {
		if m := call(t, bad, "%s", tc.in); m.Type != "error" || m.Code != tc.code {
			t.Errorf("%s: got %+v, want %s", tc.in, m, tc.code)
		}
	}
	// Still subscribed, still served: a publication reaches both.
	s.Hub.Publish("news", []byte(`"after the errors"`))
	for _, c := range []*wstest.Client{bad, bystander} {
		if m := read(t, c); m.Type != "message" || string(m.Data) != `"after the errors"` {
			t.Fatalf("after bad input: %+v", m)
		}
	}
	// Data over the message limit: that client is closed with 1009 (the
	// message is never read whole); the bystander keeps everything.
	big := `{"type":"publish","channel":"news","data":"` + strings.Repeat("y", 5000) + `"}`
	if err := bad.Send(frame.OpText, []byte(big)); err != nil {
		t.Fatal(err)
	}
	bad.ExpectCloseReply(t, frame.CloseMessageTooBig)
	s.Hub.Publish("news", []byte(`"still here"`))
	if m := read(t, bystander); string(m.Data) != `"still here"` {
		t.Fatalf("bystander after the oversized message: %+v", m)
	}
	barrier(t, bystander)
}

// TestSubscriptionLimit: a connection may hold at most MaxSubscriptions.
func TestSubscriptionLimit(t *testing.T) {
	s := startStack(t, stackOptions{})
	c := s.Dial(t, "")
	for i := range 128 {
		subscribe(t, c, fmt.Sprintf("c%d", i))
	}
	if m := call(t, c, `{"type":"subscribe","channel":"one-too-many"}`); m.Code != protocol.CodeTooManyChannels {
		t.Fatalf("129th subscribe: %+v", m)
	}
}

// TestChannelLimit: the node keeps at most MaxChannels channels with
// subscribers, whatever names clients send; one freed is one available.
func TestChannelLimit(t *testing.T) {
	s := startStack(t, stackOptions{MaxChannels: 3})
	a, b := s.Dial(t, ""), s.Dial(t, "")
	for _, ch := range []string{"x1", "x2", "x3"} {
		subscribe(t, a, ch)
	}
	subscribe(t, b, "x1") // an existing channel is no new one
	if m := call(t, b, `{"type":"subscribe","channel":"x4"}`); m.Code != protocol.CodeTooManyChannels {
		t.Fatalf("fourth channel: %+v", m)
	}
	if m := call(t, a, `{"type":"unsubscribe","channel":"x3"}`); m.Type != "ack" {
		t.Fatal(m)
	}
	subscribe(t, b, "x4")
	if n := s.Hub.Stats().ChannelsRefused.Load(); n != 1 {
		t.Fatalf("refusals counted: %d", n)
	}
}

// TestFanoutAllocs: publishing to a channel allocates a small amount
// whether it has 100 or 1,000 subscribers over two event loops: nothing per
// delivered message (engine.TestZeroAllocs proves the fan-out itself
// allocates nothing; this is the whole path, broker and sockets included). The subscribers are raw sockets read
// into fixed buffers, so the count is the server's.
func TestFanoutAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under the race detector; make test runs this without it")
	}
	per := map[int]float64{}
	for _, n := range []int{100, 1000} {
		s := startStack(t, stackOptions{})
		var received atomic.Int64
		payload := []byte(`{"n":"` + strings.Repeat("x", 80) + `"}`)
		frameLen := int64(len(hub.AppendMessage(nil, "bench", 1, "12345678", payload))) + 2
		for i := range n {
			c := s.Dial(t, "")
			subscribe(t, c, "bench")
			c.Conn.SetReadDeadline(time.Time{}) // wstest's deadline would end the reader
			if c.R.Buffered() > 0 {
				t.Fatalf("client %d has %d bytes buffered after subscribing", i, c.R.Buffered())
			}
			go func(conn net.Conn) {
				buf := make([]byte, 64<<10)
				for {
					k, err := conn.Read(buf)
					if err != nil {
						return
					}
					received.Add(int64(k))
				}
			}(c.Conn)
		}
		publish := func() {
			want := received.Load() + int64(n)*frameLen
			if _, err := s.Hub.Publish("bench", payload); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(10 * time.Second)
			for received.Load() < want {
				if time.Now().After(deadline) {
					t.Fatalf("%d subscribers: %d of %d bytes arrived", n, received.Load(), want)
				}
				runtime.Gosched()
			}
		}
		for range 20 { // warm up pools and buffers
			publish()
		}
		per[n] = testing.AllocsPerRun(100, publish)
		t.Logf("%d subscribers: %.1f allocs per publication", n, per[n])
	}
	// What a publication allocates is the broker's copy of the data and
	// gnet's task for each loop's batch (a node and a closure, more when a
	// loop's inbox is armed twice in one publication): a handful, whatever
	// the subscriber count. One allocation per delivered message would be
	// 1,000 here.
	if per[1000] > 12 || per[1000]/1000 >= 0.02 {
		t.Fatalf("allocations grow with subscribers: %v per publication (100 vs 1000 subscribers)", per)
	}
}
