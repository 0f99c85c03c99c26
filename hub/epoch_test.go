package hub_test

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/wsdproject/wsd/broker"
	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/internal/stack"
	"github.com/wsdproject/wsd/internal/wstest"
)

// epochBroker is a Memory broker whose subscribe-time answers (NodePosition,
// History) the test chooses, and which runs a hook right after giving one:
// a fake, because only a broker can put the hub's HandleEpoch (or the lack
// of it) exactly between the position a subscriber reads and the moment
// the hub records the subscriber, and because only the test, standing in
// for the broker's delivery goroutine, can then hand over the publications
// of an epoch the subscriber's position does not belong to. Everything
// else (engine, hub, protocol, the client) is real.
type epochBroker struct {
	*broker.Memory
	h broker.Handler

	mu      sync.Mutex
	nodePos *broker.Position     // NodePosition's answer (nil: not a NodePositioner answer)
	history *broker.Position     // History's position for a recovery
	replay  []broker.Publication // History's publications for a recovery
	after   func(ch string)      // run right after NodePosition or History answered
}

func (f *epochBroker) Run(h broker.Handler) error { f.h = h; return f.Memory.Run(h) }

func (f *epochBroker) NodePosition(ch string) (broker.Position, bool) {
	f.mu.Lock()
	pos, after := f.nodePos, f.after
	f.mu.Unlock()
	if pos == nil {
		return broker.Position{}, false
	}
	if after != nil {
		defer after(ch)
	}
	return *pos, true
}

func (f *epochBroker) History(ch string, since *broker.Position, limit int) ([]broker.Publication, broker.Position, error) {
	f.mu.Lock()
	pos, replay, after := f.history, f.replay, f.after
	f.mu.Unlock()
	if since == nil || pos == nil {
		return f.Memory.History(ch, since, limit)
	}
	if after != nil {
		defer after(ch)
	}
	return replay, *pos, nil
}

// deliver hands the hub a channel's publications as the broker would, in
// order, from offset `from` to `to` of epoch.
func (f *epochBroker) deliver(ch, epoch string, from, to uint64) {
	for i := from; i <= to; i++ {
		f.h.HandlePublication(ch, &broker.Publication{Offset: i, Data: fmt.Appendf(nil, `"%s/%d"`, epoch, i)}, broker.Position{Offset: i, Epoch: epoch})
	}
}

func startEpochStack(t *testing.T) (*epochBroker, *stack.Stack) {
	t.Helper()
	fb := &epochBroker{Memory: broker.NewMemory(broker.MemoryOptions{})}
	return fb, stack.Start(t, stack.Options{Broker: fb})
}

// expect reads the client's next messages and checks they are the given
// (epoch, offset) publications, in that order. No deadline decides: the
// test always ends its deliveries with a publication every variant of the
// hub passes on, so a filtered one shows as the wrong next message.
func expect(t *testing.T, c *wstest.Client, want ...string) {
	t.Helper()
	for _, w := range want {
		op, p, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("waiting for %s: %v", w, err)
		}
		if op != frame.OpText {
			t.Fatalf("waiting for %s: opcode %v", w, op)
		}
		var m message
		if err := json.Unmarshal(p, &m); err != nil || m.Type != "message" {
			t.Fatalf("waiting for %s: %q", w, p)
		}
		got := fmt.Sprintf("%s/%d", m.Epoch, m.Offset)
		if got != w || string(m.Data) != fmt.Sprintf("%q", w) {
			t.Fatalf("got %s (data %s), want %s", got, m.Data, w)
		}
	}
}

// TestEpochChangeBetweenPositionAndJoinIsDelivered: the broker starts a new
// epoch (HandleEpoch) after the subscriber's position (offset 5 of the old
// epoch) was read and before the hub recorded the subscriber. The new
// epoch's offsets 1 to 3 are not the subscriber's duplicates: they reach it.
// (They were filtered as offsets at or below 5, a silent loss, while the
// hub relied on an epoch reset frame stamped before the member's join.)
func TestEpochChangeBetweenPositionAndJoinIsDelivered(t *testing.T) {
	fb, st := startEpochStack(t)
	c := st.Dial(t, "")
	fb.mu.Lock()
	fb.nodePos = &broker.Position{Offset: 5, Epoch: "E1"}
	fb.after = func(ch string) { fb.h.(broker.EpochHandler).HandleEpoch(ch, broker.Position{Epoch: "E2"}) }
	fb.mu.Unlock()
	if ack := subscribe(t, c, "c"); ack.Offset != 5 || ack.Epoch != "E1" {
		t.Fatalf("ack %+v, want offset 5 of E1", ack)
	}
	fb.deliver("c", "E2", 1, 6)
	expect(t, c, "E2/1", "E2/2", "E2/3", "E2/4", "E2/5", "E2/6")
}

// TestNewEpochReachesSubscriberWithoutReset: a subscriber waiting above
// offset 5 of epoch E1 gets the next epoch's low offsets even if nothing
// but the publications themselves tells the hub of the new epoch (a broker
// that does not call HandleEpoch, or a reset the engine refused for its
// backlog): the epoch travels with each publication.
func TestNewEpochReachesSubscriberWithoutReset(t *testing.T) {
	fb, st := startEpochStack(t)
	c := st.Dial(t, "")
	fb.mu.Lock()
	fb.nodePos = &broker.Position{Offset: 5, Epoch: "E1"}
	fb.mu.Unlock()
	subscribe(t, c, "c")
	fb.deliver("c", "E1", 4, 5) // still in the loop's inbox when it subscribed: duplicates
	fb.deliver("c", "E2", 1, 6)
	expect(t, c, "E2/1", "E2/2", "E2/3", "E2/4", "E2/5", "E2/6")
	if n := st.Hub.Stats().DuplicatesFiltered.Load(); n != 2 {
		t.Fatalf("%d duplicates filtered, want 2 (E1's 4 and 5)", n)
	}
}

// TestRecoveryAheadOfNodeSkipsReplayedNotOldEpoch: recovery reads the
// broker's server (a Redis round trip) and may come back in an epoch the
// node's delivery has not reached yet: it replays E2's 1 to 3 while the
// node still hands over E1's last publications. Those are another epoch's,
// so they are not filtered by offset; E2's 1 to 3, when the node gets to
// them, are the replayed ones and are skipped; E2's 4 is new.
func TestRecoveryAheadOfNodeSkipsReplayedNotOldEpoch(t *testing.T) {
	fb, st := startEpochStack(t)
	c := st.Dial(t, "")
	fb.mu.Lock()
	fb.history = &broker.Position{Offset: 3, Epoch: "E2"}
	for i := uint64(1); i <= 3; i++ {
		fb.replay = append(fb.replay, broker.Publication{Offset: i, Data: fmt.Appendf(nil, `"E2/%d"`, i)})
	}
	fb.mu.Unlock()
	if err := c.Send(frame.OpText, []byte(`{"type":"subscribe","channel":"c","since":{"offset":0,"epoch":"E2"}}`)); err != nil {
		t.Fatal(err)
	}
	if ack := read(t, c); ack.Type != "ack" || ack.Recovered == nil || !*ack.Recovered {
		t.Fatalf("ack %+v", ack)
	}
	expect(t, c, "E2/1", "E2/2", "E2/3") // the replay
	fb.deliver("c", "E1", 7, 8)
	fb.deliver("c", "E2", 1, 4)
	expect(t, c, "E1/7", "E1/8", "E2/4")
}

// TestRecoveryBehindNodeGetsNewEpoch: recovery answers with E1's position
// (5) and the broker starts E2 right after, before the hub records the
// subscriber: E2's offsets from 1 reach it.
func TestRecoveryBehindNodeGetsNewEpoch(t *testing.T) {
	fb, st := startEpochStack(t)
	c := st.Dial(t, "")
	fb.mu.Lock()
	fb.history = &broker.Position{Offset: 5, Epoch: "E1"}
	fb.after = func(ch string) { fb.h.(broker.EpochHandler).HandleEpoch(ch, broker.Position{Epoch: "E2"}) }
	fb.mu.Unlock()
	if err := c.Send(frame.OpText, []byte(`{"type":"subscribe","channel":"c","since":{"offset":5,"epoch":"E1"}}`)); err != nil {
		t.Fatal(err)
	}
	if ack := read(t, c); ack.Type != "ack" || ack.Offset != 5 || ack.Epoch != "E1" {
		t.Fatalf("ack %+v", ack)
	}
	fb.deliver("c", "E2", 1, 6)
	expect(t, c, "E2/1", "E2/2", "E2/3", "E2/4", "E2/5", "E2/6")
}
