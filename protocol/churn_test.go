package protocol_test

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/wsdproject/wsd/internal/wstest"
)

// TestSubscriptionChurn: after a random sequence of subscribes,
// unsubscribes and disconnects over two loops, a publication to each
// channel reaches exactly the connections subscribed to it. (Each loop's
// member lists are swap-removed; a wrong position would deliver to the
// wrong client or to none.)
func TestSubscriptionChurn(t *testing.T) {
	s := startStack(t, stackOptions{})
	rng := rand.New(rand.NewPCG(1, 2))
	chans := []string{"a", "b", "c", "d", "e"}
	type client struct {
		c    *wstest.Client
		subs map[string]bool
		gone bool
	}
	var clients []*client
	for range 40 {
		clients = append(clients, &client{c: s.Dial(t, ""), subs: map[string]bool{}})
	}
	for range 1500 {
		cl := clients[rng.IntN(len(clients))]
		if cl.gone {
			continue
		}
		ch := chans[rng.IntN(len(chans))]
		switch r := rng.IntN(100); {
		case r < 2:
			cl.c.Conn.Close()
			cl.gone = true
		case cl.subs[ch]:
			if m := call(t, cl.c, `{"type":"unsubscribe","channel":%q}`, ch); m.Type != "ack" {
				t.Fatalf("unsubscribe: %+v", m)
			}
			delete(cl.subs, ch)
		default:
			if m := call(t, cl.c, `{"type":"subscribe","channel":%q}`, ch); m.Type != "ack" {
				t.Fatalf("subscribe: %+v", m)
			}
			cl.subs[ch] = true
		}
	}
	for _, ch := range chans {
		if _, err := s.Hub.Publish(ch, fmt.Appendf(nil, "%q", ch)); err != nil {
			t.Fatal(err)
		}
	}
	for i, cl := range clients {
		if cl.gone {
			continue
		}
		got := map[string]bool{}
		for range cl.subs {
			m := read(t, cl.c)
			if m.Type != "message" || string(m.Data) != fmt.Sprintf("%q", m.Channel) || got[m.Channel] {
				t.Fatalf("client %d: %+v", i, m)
			}
			got[m.Channel] = true
		}
		for ch := range cl.subs {
			if !got[ch] {
				t.Fatalf("client %d missed %s (got %v)", i, ch, got)
			}
		}
		barrier(t, cl.c) // nothing from a channel it left
	}
}
