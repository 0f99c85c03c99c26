package hub_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/wsdproject/wsd/broker"
	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/hub"
	"github.com/wsdproject/wsd/internal/redistest"
	"github.com/wsdproject/wsd/internal/stack"
	"github.com/wsdproject/wsd/internal/wstest"
)

// node starts a whole /ws endpoint whose broker is Redis at srv.
func node(t *testing.T, srv *redistest.Server, id string) *stack.Stack {
	t.Helper()
	b, err := broker.NewRedis(broker.RedisOptions{Addrs: []string{srv.Addr}, NodeID: id, Prefix: "hubtest"})
	if err != nil {
		t.Fatal(err)
	}
	st := stack.Start(t, stack.Options{
		Broker: b,
		NodeID: id,
		Channel: func(string) hub.ChannelOptions {
			return hub.ChannelOptions{ChannelOptions: broker.ChannelOptions{HistorySize: 100, HistoryTTL: time.Minute}, Presence: true}
		},
	})
	deadline := time.Now().Add(10 * time.Second)
	for b.Ready() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("node %s: broker not ready: %v", id, b.Ready())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return st
}

type message struct {
	Type      string          `json:"type"`
	Channel   string          `json:"channel"`
	Offset    uint64          `json:"offset"`
	Epoch     string          `json:"epoch"`
	Data      json.RawMessage `json:"data"`
	Recovered *bool           `json:"recovered"`
}

func read(t *testing.T, c *wstest.Client) message {
	t.Helper()
	op, p, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var m message
	if op != frame.OpText || json.Unmarshal(p, &m) != nil {
		t.Fatalf("not a JSON text message: %q", p)
	}
	return m
}

func subscribe(t *testing.T, c *wstest.Client, ch string) message {
	t.Helper()
	if err := c.Send(frame.OpText, fmt.Appendf(nil, `{"type":"subscribe","channel":%q,"id":"s"}`, ch)); err != nil {
		t.Fatal(err)
	}
	m := read(t, c)
	if m.Type != "ack" {
		t.Fatalf("subscribe %s: %+v", ch, m)
	}
	return m
}

// TestRedisAcrossNodes: publications made on node B reach a subscriber on
// node A in order, once; presence lists the subscribers of both nodes.
func TestRedisAcrossNodes(t *testing.T) {
	srv := redistest.Start(t)
	a, b := node(t, srv, "a"), node(t, srv, "b")
	ca, cb := a.Dial(t, ""), b.Dial(t, "")
	subscribe(t, ca, "news")
	subscribe(t, cb, "news")
	const n = 50
	for i := 1; i <= n; i++ {
		if _, err := b.Hub.Publish("news", fmt.Appendf(nil, "%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	var epoch string
	for i := 1; i <= n; i++ {
		m := read(t, ca)
		if m.Type != "message" || m.Offset != uint64(i) || string(m.Data) != fmt.Sprint(i) {
			t.Fatalf("message %d on node a: %+v", i, m)
		}
		if i == 1 {
			epoch = m.Epoch
		} else if m.Epoch != epoch {
			t.Fatalf("epoch %q then %q", epoch, m.Epoch)
		}
	}
	// Each node writes its own presence entries in the background: node b's
	// shows on node a once b has sent it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		pres, err := a.Hub.Presence("news")
		if err == nil && len(pres) == 2 && pres[0].Client[:2] == "a-" && pres[1].Client[:2] == "b-" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("presence from node a: %+v %v", pres, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRedisNewEpochReachesWaitingSubscribers: a subscriber that got no
// publication since it subscribed at offset 5 still receives offsets 1, 2,
// 3 of the epoch that starts when Redis loses the channel's stream (its
// offset filter is of the old epoch; the new epoch's publications carry
// theirs), and the node counts the new epoch (broker.EpochHandler).
func TestRedisNewEpochReachesWaitingSubscribers(t *testing.T) {
	srv := redistest.Start(t)
	a, b := node(t, srv, "a"), node(t, srv, "b")
	for i := 1; i <= 5; i++ {
		if _, err := b.Hub.Publish("c", []byte("0")); err != nil {
			t.Fatal(err)
		}
	}
	ca := a.Dial(t, "")
	// A second subscriber on node a keeps the node's delivery position at
	// 5 (it is subscribed before, and receives nothing either).
	subscribe(t, a.Dial(t, ""), "c")
	if ack := subscribe(t, ca, "c"); ack.Offset != 5 {
		t.Fatalf("subscribed at %+v, want offset 5", ack)
	}
	if _, err := srv.Do("FLUSHALL"); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		if _, err := b.Hub.Publish("c", fmt.Appendf(nil, "%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= 3; i++ {
		m := read(t, ca)
		if m.Type != "message" || m.Offset != uint64(i) || string(m.Data) != fmt.Sprint(i) {
			t.Fatalf("message %d of the new epoch: %+v", i, m)
		}
	}
	if n := a.Hub.Stats().EpochResets.Load(); n != 1 {
		t.Fatalf("%d epoch resets, want 1", n)
	}
}

// TestRedisSubscribeDuringOutage: while Redis is away, a node still takes
// new subscribers of a channel it already carries (their position is the
// node's own, no round trip), and they get what is published once Redis
// is back, from the next offset on.
func TestRedisSubscribeDuringOutage(t *testing.T) {
	srv := redistest.StartWith(t, redistest.Options{Persist: true})
	a, b := node(t, srv, "a"), node(t, srv, "b")
	first := a.Dial(t, "")
	subscribe(t, first, "c")
	for i := 1; i <= 3; i++ {
		if _, err := b.Hub.Publish("c", fmt.Appendf(nil, "%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= 3; i++ {
		if m := read(t, first); m.Offset != uint64(i) {
			t.Fatalf("before the outage: %+v", m)
		}
	}
	srv.Stop()
	second := a.Dial(t, "")
	if ack := subscribe(t, second, "c"); ack.Offset != 3 || ack.Epoch == "" {
		t.Fatalf("subscribe without Redis: %+v", ack)
	}
	// A channel the node does not carry needs Redis.
	if err := second.Send(frame.OpText, []byte(`{"type":"subscribe","channel":"other","id":"o"}`)); err != nil {
		t.Fatal(err)
	}
	if m := read(t, second); m.Type != "error" {
		t.Fatalf("subscribe to a new channel without Redis: %+v", m)
	}
	srv.Restart()
	deadline := time.Now().Add(10 * time.Second)
	for i := 4; i <= 5; i++ {
		for {
			_, err := b.Hub.Publish("c", fmt.Appendf(nil, "%d", i))
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("publish after the restart: %v", err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for _, c := range []*wstest.Client{first, second} {
		for i := 4; i <= 5; i++ {
			if m := read(t, c); m.Type != "message" || m.Offset != uint64(i) || string(m.Data) != fmt.Sprint(i) {
				t.Fatalf("after the outage: %+v, want offset %d", m, i)
			}
		}
	}
}

// TestRedisSubscribeChurn: clients on both event loops subscribe to and
// unsubscribe from one channel at once, over and over. The node's
// subscription at the broker follows its loops: those left subscribed get
// the next publication, and once every client has left, neither the hub
// nor Redis has the node subscribed.
func TestRedisSubscribeChurn(t *testing.T) {
	srv := redistest.Start(t)
	a, b := node(t, srv, "a"), node(t, srv, "b")
	const clients, rounds = 8, 15
	cs := make([]*wstest.Client, clients)
	for i := range cs {
		cs[i] = a.Dial(t, "") // the engine spreads them over its two loops
	}
	errs := make(chan error, clients)
	for _, c := range cs {
		go func() {
			for range rounds {
				for _, msg := range []string{`{"type":"subscribe","channel":"x"}`, `{"type":"unsubscribe","channel":"x"}`} {
					if err := c.Send(frame.OpText, []byte(msg)); err != nil {
						errs <- err
						return
					}
					if _, _, err := c.ReadMessage(); err != nil {
						errs <- err
						return
					}
				}
			}
			errs <- nil
		}()
	}
	for range clients {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := a.Hub.NodeChannels(); n != 0 {
		t.Fatalf("%d channels on the node after every client left", n)
	}
	if r, err := srv.DoLines(4, "PUBSUB", "SHARDNUMSUB", "hubtest:c:{x}"); err != nil || len(r) != 4 || r[3] != ":0" {
		t.Fatalf("PUBSUB SHARDNUMSUB: %q %v", r, err)
	}
	// Half subscribe again, at once: all of them get what follows.
	for _, c := range cs[:clients/2] {
		go func() {
			if err := c.Send(frame.OpText, []byte(`{"type":"subscribe","channel":"x"}`)); err != nil {
				errs <- err
				return
			}
			_, _, err := c.ReadMessage()
			errs <- err
		}()
	}
	for range clients / 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if r, err := srv.DoLines(4, "PUBSUB", "SHARDNUMSUB", "hubtest:c:{x}"); err != nil || len(r) != 4 || r[3] != ":1" {
		t.Fatalf("PUBSUB SHARDNUMSUB with subscribers: %q %v", r, err)
	}
	pos, err := b.Hub.Publish("x", []byte(`"after"`))
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range cs[:clients/2] {
		if m := read(t, c); m.Type != "message" || m.Offset != pos.Offset || string(m.Data) != `"after"` {
			t.Fatalf("client %d: %+v", i, m)
		}
	}
}
