package protocol_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wsdproject/wsd/broker"
	"github.com/wsdproject/wsd/engine"
	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/hub"
	"github.com/wsdproject/wsd/internal/wstest"
	"github.com/wsdproject/wsd/protocol"
)

// TestChannelFanout: publications from clients and from the server side
// reach exactly the subscribers of their channel, on both loops, once and
// in order; unsubscribed clients and clients of other channels get none.
func TestChannelFanout(t *testing.T) {
	s := startStack(t, stackOptions{Policy: hub.Policy{ClientPublish: true}})
	chans := []string{"news", "chat:lobby", "scores.live"}
	type sub struct {
		c  *wstest.Client
		ch string
	}
	var subs []sub
	for i := range 30 {
		c := s.Dial(t, "")
		ch := chans[i%3]
		subscribe(t, c, ch)
		subs = append(subs, sub{c, ch})
	}
	// One client of each channel unsubscribes again: it must get nothing.
	gone := map[int]bool{0: true, 1: true, 2: true}
	for i := range gone {
		if m := call(t, subs[i].c, `{"type":"unsubscribe","channel":%q,"id":2}`, subs[i].ch); m.Type != "ack" {
			t.Fatalf("unsubscribe: %+v", m)
		}
		if m := call(t, subs[i].c, `{"type":"unsubscribe","channel":%q}`, subs[i].ch); m.Code != protocol.CodeNotSubscribed {
			t.Fatalf("second unsubscribe: %+v", m)
		}
	}
	pub := s.Dial(t, "") // not subscribed to anything: publishes only
	const n = 50
	for i := range n {
		for j, ch := range chans {
			data := fmt.Sprintf(`{"ch":%d,"n":%d}`, j, i)
			if i%2 == 0 {
				if m := call(t, pub, `{"type":"publish","channel":%q,"data":%s,"id":%d}`, ch, data, i); m.Type != "ack" || m.Offset != uint64(i+1) {
					t.Fatalf("publish ack: %+v", m)
				}
			} else if pos, err := s.Hub.Publish(ch, []byte(data)); err != nil || pos.Offset != uint64(i+1) {
				t.Fatalf("server publish: %v %v", pos, err)
			}
		}
	}
	for i, sb := range subs {
		if gone[i] {
			barrier(t, sb.c)
			continue
		}
		j := i % 3
		var epoch string
		for k := range n {
			m := read(t, sb.c)
			want := fmt.Sprintf(`{"ch":%d,"n":%d}`, j, k)
			if m.Type != "message" || m.Channel != sb.ch || m.Offset != uint64(k+1) || string(m.Data) != want {
				t.Fatalf("client %d (%s), message %d: %+v", i, sb.ch, k, m)
			}
			if epoch == "" {
				epoch = m.Epoch
			} else if m.Epoch != epoch {
				t.Fatalf("epoch changed: %q then %q", epoch, m.Epoch)
			}
		}
		barrier(t, sb.c) // and nothing more
	}
	barrier(t, pub)
}

// TestRecovery covers recovery from a position: a clean replay, an epoch
// from elsewhere, a gap older than the history, and "nothing missed".
func TestRecovery(t *testing.T) {
	s := startStack(t, stackOptions{Channel: func(string) hub.ChannelOptions {
		return hub.ChannelOptions{ChannelOptions: broker.ChannelOptions{HistorySize: 5, HistoryTTL: time.Minute}}
	}})
	c := s.Dial(t, "")
	// A channel nobody published to has no stream yet: position {0, ""}.
	ack := subscribe(t, c, "room")
	if ack.Offset != 0 || ack.Epoch != "" || ack.Recovered != nil {
		t.Fatalf("first subscribe ack: %+v", ack)
	}
	var epoch string
	for i := 1; i <= 3; i++ {
		s.Hub.Publish("room", fmt.Appendf(nil, "%d", i))
		m := read(t, c)
		if m.Offset != uint64(i) || m.Epoch == "" || epoch != "" && m.Epoch != epoch {
			t.Fatalf("live %d: %+v", i, m)
		}
		epoch = m.Epoch
	}
	c.Conn.Close()
	for i := 4; i <= 7; i++ { // missed while away
		s.Hub.Publish("room", fmt.Appendf(nil, "%d", i))
	}
	c = s.Dial(t, "")
	m := call(t, c, `{"type":"subscribe","channel":"room","since":{"offset":3,"epoch":%q}}`, epoch)
	if m.Type != "ack" || m.Recovered == nil || !*m.Recovered || m.Offset != 7 || m.Epoch != epoch {
		t.Fatalf("recovery ack: %+v", m)
	}
	for i := 4; i <= 7; i++ {
		if m := read(t, c); m.Type != "message" || m.Offset != uint64(i) || string(m.Data) != fmt.Sprint(i) {
			t.Fatalf("replayed %d: %+v", i, m)
		}
	}
	s.Hub.Publish("room", []byte("8"))
	if m := read(t, c); m.Offset != 8 {
		t.Fatalf("live after recovery: %+v", m)
	}
	barrier(t, c)

	for _, tc := range []struct {
		name, since string
		recovered   bool
		replay      int
	}{
		{"nothing missed", fmt.Sprintf(`{"offset":8,"epoch":%q}`, epoch), true, 0},
		{"from before the stream, evicted since", `{"offset":0,"epoch":""}`, false, 0},
		{"other epoch", `{"offset":3,"epoch":"elsewhere"}`, false, 0},
		{"older than the history", fmt.Sprintf(`{"offset":1,"epoch":%q}`, epoch), false, 0}, // 2 was evicted (size 5)
		{"from the future", fmt.Sprintf(`{"offset":99,"epoch":%q}`, epoch), false, 0},
		{"within the history", fmt.Sprintf(`{"offset":5,"epoch":%q}`, epoch), true, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := s.Dial(t, "")
			m := call(t, c, `{"type":"subscribe","channel":"room","since":%s}`, tc.since)
			if m.Recovered == nil || *m.Recovered != tc.recovered || m.Offset != 8 || m.Epoch != epoch {
				t.Fatalf("ack %+v", m)
			}
			for i := range tc.replay {
				if m := read(t, c); m.Offset != uint64(9-tc.replay+i) {
					t.Fatalf("replayed: %+v", m)
				}
			}
			barrier(t, c)
		})
	}
}

// TestRecoveryFromNoStream: a client that subscribed before anything was
// published ({0, ""}) and left recovers everything from the first
// publication.
func TestRecoveryFromNoStream(t *testing.T) {
	s := startStack(t, stackOptions{})
	c := s.Dial(t, "")
	if ack := subscribe(t, c, "fresh"); ack.Offset != 0 || ack.Epoch != "" {
		t.Fatalf("ack %+v", ack)
	}
	c.Conn.Close()
	s.Hub.Publish("fresh", []byte("1"))
	s.Hub.Publish("fresh", []byte("2"))
	c = s.Dial(t, "")
	m := call(t, c, `{"type":"subscribe","channel":"fresh","since":{"offset":0,"epoch":""}}`)
	if m.Recovered == nil || !*m.Recovered || m.Offset != 2 || m.Epoch == "" {
		t.Fatalf("ack %+v", m)
	}
	for i := 1; i <= 2; i++ {
		if m := read(t, c); m.Offset != uint64(i) {
			t.Fatalf("replayed %+v", m)
		}
	}
	barrier(t, c)
}

// TestRecoveryRacingPublishes: clients resubscribe with their last
// position while publications keep coming; each sees every offset exactly
// once, in order, across the switch from replay to live.
func TestRecoveryRacingPublishes(t *testing.T) {
	s := startStack(t, stackOptions{Engine: wstestEngine(), Channel: func(string) hub.ChannelOptions {
		return hub.ChannelOptions{ChannelOptions: broker.ChannelOptions{HistorySize: 10000, HistoryTTL: time.Minute}}
	}})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := s.Hub.Publish("race", fmt.Appendf(nil, "%d", i)); err != nil {
				t.Error(err)
				return
			}
			if i%50 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	var cwg sync.WaitGroup
	for k := range 8 {
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			var last uint64
			var epoch string
			for round := range 6 {
				c, err := wstest.DialErr(s.Addr, "/ws", wstest.Options{})
				if err != nil {
					t.Error(err)
					return
				}
				var sub string
				if round == 0 {
					sub = `{"type":"subscribe","channel":"race"}`
				} else {
					sub = fmt.Sprintf(`{"type":"subscribe","channel":"race","since":{"offset":%d,"epoch":%q}}`, last, epoch)
				}
				c.Send(frame.OpText, []byte(sub))
				got := 0
				for got < 200 {
					_, p, err := c.ReadMessage()
					if err != nil {
						t.Errorf("client %d: %v", k, err)
						return
					}
					var m msg
					json.Unmarshal(p, &m)
					switch m.Type {
					case "ack":
						if round > 0 && (m.Recovered == nil || !*m.Recovered) {
							t.Errorf("client %d round %d: not recovered: %s", k, round, p)
							return
						}
						if round == 0 {
							last, epoch = m.Offset, m.Epoch
						}
					case "message":
						if m.Offset != last+1 {
							t.Errorf("client %d round %d: offset %d after %d", k, round, m.Offset, last)
							return
						}
						last = m.Offset
						got++
					}
				}
				c.Conn.Close()
			}
		}()
	}
	cwg.Wait()
	close(stop)
	wg.Wait()
}

func wstestEngine() engine.Config { return engine.Config{} }

// TestPresenceAndEvents: presence lists the subscribers of a channel with
// presence on, join and leave events reach the others, and a disconnect
// takes the connection out of presence.
func TestPresenceAndEvents(t *testing.T) {
	s := startStack(t, stackOptions{Tokens: true, Channel: func(ch string) hub.ChannelOptions {
		o := hub.ChannelOptions{ChannelOptions: broker.ChannelOptions{HistorySize: 10, HistoryTTL: time.Minute}}
		if strings.HasPrefix(ch, "room:") {
			o.Presence, o.JoinLeave = true, true
		}
		return o
	}})
	alice := s.Dial(t, token(t, "alice", jwt.MapClaims{"info": map[string]any{"name": "Alice"}}))
	bob := s.Dial(t, token(t, "bob", nil))
	subscribe(t, alice, "room:1")
	if m := read(t, alice); m.Type != "join" || m.Info.User != "alice" || string(m.Info.Info) != `{"name":"Alice"}` {
		t.Fatalf("own join: %+v", m)
	}
	subscribe(t, bob, "room:1")
	for _, c := range []*wstest.Client{alice, bob} {
		if m := read(t, c); m.Type != "join" || m.Channel != "room:1" || m.Info.User != "bob" {
			t.Fatalf("bob's join: %+v", m)
		}
	}
	m := call(t, alice, `{"type":"presence","channel":"room:1","id":9}`)
	if m.Type != "ack" || len(m.Presence) != 2 {
		t.Fatalf("presence: %+v", m)
	}
	users := m.Presence[0].User + "," + m.Presence[1].User
	if users != "alice,bob" && users != "bob,alice" {
		t.Fatalf("presence users %q", users)
	}
	bob.Conn.Close()
	if m := read(t, alice); m.Type != "leave" || m.Info.User != "bob" {
		t.Fatalf("bob's leave: %+v", m)
	}
	if m := call(t, alice, `{"type":"presence","channel":"room:1"}`); len(m.Presence) != 1 || m.Presence[0].User != "alice" {
		t.Fatalf("presence after leave: %+v", m)
	}
	// Presence of a channel without it, and history reads.
	if m := call(t, alice, `{"type":"presence","channel":"news"}`); m.Code != protocol.CodeNotAvailable {
		t.Fatalf("presence without it: %+v", m)
	}
	s.Hub.Publish("news", []byte(`"a"`))
	s.Hub.Publish("news", []byte(`"b"`))
	m = call(t, alice, `{"type":"history","channel":"news","limit":1}`)
	if m.Type != "ack" || m.Offset != 2 || len(m.Publications) != 1 || string(m.Publications[0].Data) != `"b"` {
		t.Fatalf("history: %+v", m)
	}
}
