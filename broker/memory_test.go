package broker

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// clock is a settable time source for MemoryOptions.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Unix(1_700_000_000, 0)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// event is one Handler call.
type event struct {
	kind    string // "pub", "join", "leave"
	channel string
	offset  uint64
	epoch   string
	data    string
	client  string
}

// recorder is a Handler that records every call.
type recorder struct {
	mu     sync.Mutex
	events []event
}

func (r *recorder) HandlePublication(channel string, pub *Publication, pos Position) {
	r.mu.Lock()
	r.events = append(r.events, event{kind: "pub", channel: channel, offset: pub.Offset, epoch: pos.Epoch, data: string(pub.Data)})
	r.mu.Unlock()
}

func (r *recorder) HandleJoin(channel string, info ClientInfo) {
	r.mu.Lock()
	r.events = append(r.events, event{kind: "join", channel: channel, client: info.Client})
	r.mu.Unlock()
}

func (r *recorder) HandleLeave(channel string, info ClientInfo) {
	r.mu.Lock()
	r.events = append(r.events, event{kind: "leave", channel: channel, client: info.Client})
	r.mu.Unlock()
}

func (r *recorder) take() []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	ev := r.events
	r.events = nil
	return ev
}

type nopHandler struct{}

func (nopHandler) HandlePublication(string, *Publication, Position) {}
func (nopHandler) HandleJoin(string, ClientInfo)                    {}
func (nopHandler) HandleLeave(string, ClientInfo)                   {}

// newTestMemory returns a running Memory (with a janitor that never fires
// on its own: tests call sweep) closed at the end of the test.
func newTestMemory(t testing.TB, opts MemoryOptions, h Handler) *Memory {
	t.Helper()
	m := NewMemory(opts)
	m.sweepEvery = time.Hour
	if h == nil {
		h = nopHandler{}
	}
	if err := m.Run(h); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func mustPublish(t testing.TB, m *Memory, ch, data string, opts ChannelOptions) Position {
	t.Helper()
	pos, err := m.Publish(ch, []byte(data), opts)
	if err != nil {
		t.Fatalf("Publish(%q, %q): %v", ch, data, err)
	}
	return pos
}

// offsets lists the publications' offsets.
func offsets(pubs []Publication) []uint64 {
	out := make([]uint64, len(pubs))
	for i, p := range pubs {
		out[i] = p.Offset
	}
	return out
}

func span(from, to uint64) []uint64 {
	var out []uint64
	for o := from; o <= to; o++ {
		out = append(out, o)
	}
	return out
}

func equalOffsets(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// orderHandler checks that calls for one channel are never concurrent and
// come in offset order, with positions that match the publication.
type orderHandler struct {
	t     *testing.T
	mu    sync.Mutex
	state map[string]*chanOrder
	calls atomic.Int64
}

type chanOrder struct {
	inside atomic.Bool
	last   uint64
	epoch  string
	// lastSeq is, per publisher, the last sequence number it delivered.
	lastSeq map[int]int
}

func (h *orderHandler) of(ch string) *chanOrder {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.state[ch]
	if s == nil {
		s = &chanOrder{lastSeq: map[int]int{}}
		h.state[ch] = s
	}
	return s
}

func (h *orderHandler) HandlePublication(ch string, pub *Publication, pos Position) {
	h.calls.Add(1)
	s := h.of(ch)
	if !s.inside.CompareAndSwap(false, true) {
		h.t.Errorf("%s: concurrent HandlePublication calls", ch)
		return
	}
	defer s.inside.Store(false)
	if pub.Offset != s.last+1 {
		h.t.Errorf("%s: offset %d after %d", ch, pub.Offset, s.last)
	}
	if pos.Offset != pub.Offset {
		h.t.Errorf("%s: position offset %d for publication %d", ch, pos.Offset, pub.Offset)
	}
	if s.epoch == "" {
		s.epoch = pos.Epoch
	} else if pos.Epoch != s.epoch {
		h.t.Errorf("%s: epoch changed from %q to %q", ch, s.epoch, pos.Epoch)
	}
	s.last = pub.Offset
	var g, seq int
	if _, err := fmt.Sscanf(string(pub.Data), `{"g":%d,"seq":%d}`, &g, &seq); err != nil {
		h.t.Errorf("%s: data %q: %v", ch, pub.Data, err)
		return
	}
	if last, ok := s.lastSeq[g]; ok && seq != last+1 {
		h.t.Errorf("%s: publisher %d: seq %d after %d", ch, g, seq, last)
	}
	s.lastSeq[g] = seq
}

func (h *orderHandler) HandleJoin(string, ClientInfo)  {}
func (h *orderHandler) HandleLeave(string, ClientInfo) {}

func TestMemoryConcurrentPublishersOneChannel(t *testing.T) {
	const goroutines, each = 8, 1000
	h := &orderHandler{t: t, state: map[string]*chanOrder{}}
	m := newTestMemory(t, MemoryOptions{}, h)
	if err := m.Subscribe("c"); err != nil {
		t.Fatal(err)
	}
	got := make([][]Position, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for seq := range each {
				pos, err := m.Publish("c", fmt.Appendf(nil, `{"g":%d,"seq":%d}`, g, seq), ChannelOptions{HistorySize: 100})
				if err != nil {
					t.Error(err)
					return
				}
				got[g] = append(got[g], pos)
			}
		})
	}
	wg.Wait()
	if n := h.calls.Load(); n != goroutines*each {
		t.Fatalf("handler called %d times, want %d", n, goroutines*each)
	}
	seen := make([]bool, goroutines*each+1)
	epoch := got[0][0].Epoch
	for g, ps := range got {
		for i, p := range ps {
			if p.Epoch != epoch {
				t.Fatalf("publisher %d: epoch %q, want %q", g, p.Epoch, epoch)
			}
			if p.Offset == 0 || p.Offset > goroutines*each || seen[p.Offset] {
				t.Fatalf("publisher %d: offset %d out of range or given twice", g, p.Offset)
			}
			seen[p.Offset] = true
			if i > 0 && p.Offset <= ps[i-1].Offset {
				t.Fatalf("publisher %d: offset %d after %d", g, p.Offset, ps[i-1].Offset)
			}
		}
	}
	pubs, pos, err := m.History("c", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := span(goroutines*each-99, goroutines*each); !equalOffsets(offsets(pubs), want) {
		t.Fatalf("history offsets %v, want %v", offsets(pubs), want)
	}
	if pos != (Position{Offset: goroutines * each, Epoch: epoch}) {
		t.Fatalf("position %+v", pos)
	}
	if st := m.Stats(); st.Published != goroutines*each || st.HistoryPublications != 100 || st.EvictedBySize != goroutines*each-100 {
		t.Fatalf("stats %+v", st)
	}
}

func TestMemoryConcurrentPublishersManyChannels(t *testing.T) {
	const goroutines, each, channels = 8, 500, 16
	h := &orderHandler{t: t, state: map[string]*chanOrder{}}
	m := newTestMemory(t, MemoryOptions{}, h)
	for c := range channels {
		if err := m.Subscribe("ch" + strconv.Itoa(c)); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for seq := range each {
				ch := "ch" + strconv.Itoa((g+seq)%channels)
				// The sequence is per publisher and channel: seq/channels
				// counts this publisher's publications to ch.
				data := fmt.Appendf(nil, `{"g":%d,"seq":%d}`, g, seq/channels)
				if _, err := m.Publish(ch, data, ChannelOptions{HistorySize: 10, HistoryTTL: time.Minute}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	var total uint64
	for c := range channels {
		_, pos, err := m.History("ch"+strconv.Itoa(c), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		total += pos.Offset
	}
	if total != goroutines*each || h.calls.Load() != goroutines*each {
		t.Fatalf("offsets add up to %d, handler called %d times, want %d", total, h.calls.Load(), goroutines*each)
	}
}

func TestMemoryHistorySize(t *testing.T) {
	m := newTestMemory(t, MemoryOptions{}, nil)
	opts := ChannelOptions{HistorySize: 3}
	var pos Position
	for i := 1; i <= 5; i++ {
		pos = mustPublish(t, m, "c", strconv.Itoa(i), opts)
		if pos.Offset != uint64(i) {
			t.Fatalf("publication %d got offset %d", i, pos.Offset)
		}
	}
	pubs, cur, err := m.History("c", nil, 0)
	if err != nil || cur != pos || !equalOffsets(offsets(pubs), []uint64{3, 4, 5}) {
		t.Fatalf("History = %v, %+v, %v", offsets(pubs), cur, err)
	}
	for i, p := range pubs {
		if want := strconv.Itoa(3 + i); string(p.Data) != want {
			t.Fatalf("publication %d has data %q, want %q", p.Offset, p.Data, want)
		}
	}
	if pubs, _, _ := m.History("c", nil, 2); !equalOffsets(offsets(pubs), []uint64{4, 5}) {
		t.Fatalf("History with limit 2 = %v, want the newest two", offsets(pubs))
	}
	if _, _, err := m.History("c", &Position{Offset: 1, Epoch: pos.Epoch}, 0); err != ErrUnrecoverable {
		t.Fatalf("recovery from 1 with history 3..5: %v", err)
	}
	if pubs, _, err := m.History("c", &Position{Offset: 2, Epoch: pos.Epoch}, 0); err != nil || !equalOffsets(offsets(pubs), []uint64{3, 4, 5}) {
		t.Fatalf("recovery from 2 = %v, %v", offsets(pubs), err)
	}
	if st := m.Stats(); st.EvictedBySize != 2 || st.HistoryPublications != 3 || st.HistoryBytes != 3 {
		t.Fatalf("stats %+v", st)
	}

	// HistorySize 0 keeps nothing (what was kept goes), offsets advance.
	pos = mustPublish(t, m, "c", "6", ChannelOptions{})
	if pos.Offset != 6 {
		t.Fatalf("offset %d, want 6", pos.Offset)
	}
	if pubs, cur, err := m.History("c", nil, 0); err != nil || len(pubs) != 0 || cur != pos {
		t.Fatalf("History after HistorySize 0 = %v, %+v, %v", offsets(pubs), cur, err)
	}
	if _, _, err := m.History("c", &Position{Offset: 5, Epoch: pos.Epoch}, 0); err != ErrUnrecoverable {
		t.Fatalf("recovery over a publication not kept: %v", err)
	}
	if st := m.Stats(); st.HistoryBytes != 0 || st.HistoryPublications != 0 {
		t.Fatalf("stats %+v", st)
	}

	// Growing and shrinking the size.
	for i := 7; i <= 20; i++ {
		mustPublish(t, m, "c", strconv.Itoa(i), ChannelOptions{HistorySize: 10})
	}
	if pubs, _, _ := m.History("c", nil, 0); !equalOffsets(offsets(pubs), span(11, 20)) {
		t.Fatalf("history %v, want 11..20", offsets(pubs))
	}
	mustPublish(t, m, "c", "21", ChannelOptions{HistorySize: 2})
	if pubs, _, _ := m.History("c", nil, 0); !equalOffsets(offsets(pubs), []uint64{20, 21}) {
		t.Fatalf("history %v, want 20, 21", offsets(pubs))
	}
}

func TestMemoryHistoryTTL(t *testing.T) {
	clk := newClock()
	m := newTestMemory(t, MemoryOptions{Now: clk.Now}, nil)
	opts := ChannelOptions{HistorySize: 10, HistoryTTL: 10 * time.Second}
	t0 := clk.Now()
	mustPublish(t, m, "c", "a", opts) // t0
	clk.Advance(4 * time.Second)
	mustPublish(t, m, "c", "b", opts) // t0+4s
	clk.Advance(4 * time.Second)
	pos := mustPublish(t, m, "c", "c", opts) // t0+8s

	clk.Advance(2*time.Second - time.Millisecond) // t0+10s-1ms: a is still there
	if pubs, _, _ := m.History("c", nil, 0); !equalOffsets(offsets(pubs), []uint64{1, 2, 3}) {
		t.Fatalf("history just before a's TTL = %v", offsets(pubs))
	}
	clk.Advance(time.Millisecond) // t0+10s: a is 10s old
	pubs, cur, err := m.History("c", nil, 0)
	if err != nil || cur != pos || !equalOffsets(offsets(pubs), []uint64{2, 3}) {
		t.Fatalf("History at t0+10s = %v, %+v, %v", offsets(pubs), cur, err)
	}
	if pubs[0].Time != t0.Add(4*time.Second).UnixMilli() {
		t.Fatalf("publication 2 has time %d, want %d", pubs[0].Time, t0.Add(4*time.Second).UnixMilli())
	}
	if _, _, err := m.History("c", &Position{Offset: 0, Epoch: pos.Epoch}, 0); err != ErrUnrecoverable {
		t.Fatalf("recovery over an expired publication: %v", err)
	}
	if pubs, _, err := m.History("c", &Position{Offset: 1, Epoch: pos.Epoch}, 0); err != nil || !equalOffsets(offsets(pubs), []uint64{2, 3}) {
		t.Fatalf("recovery from 1 = %v, %v", offsets(pubs), err)
	}

	clk.Advance(8 * time.Second) // t0+18s: all expired
	if pubs, cur, err := m.History("c", nil, 0); err != nil || len(pubs) != 0 || cur != pos {
		t.Fatalf("History at t0+18s = %v, %+v, %v", offsets(pubs), cur, err)
	}
	if pubs, _, err := m.History("c", &pos, 0); err != nil || len(pubs) != 0 {
		t.Fatalf("recovery from the current position = %v, %v", offsets(pubs), err)
	}
	if _, _, err := m.History("c", &Position{Offset: 2, Epoch: pos.Epoch}, 0); err != ErrUnrecoverable {
		t.Fatalf("recovery over an expired publication: %v", err)
	}
	if st := m.Stats(); st.EvictedByAge != 3 || st.HistoryBytes != 0 || st.HistoryPublications != 0 {
		t.Fatalf("stats %+v", st)
	}

	// Publish trims too, and the janitor trims a channel nobody reads.
	mustPublish(t, m, "d", "xx", opts)
	mustPublish(t, m, "e", "yyy", opts)
	clk.Advance(10 * time.Second)
	mustPublish(t, m, "d", "zz", opts)
	if pubs, _, _ := m.History("d", nil, 0); !equalOffsets(offsets(pubs), []uint64{2}) {
		t.Fatalf("history of d = %v, want [2]", offsets(pubs))
	}
	if st := m.Stats(); st.HistoryBytes != 5 {
		t.Fatalf("history bytes %d, want 5 (e's publication not yet trimmed)", st.HistoryBytes)
	}
	m.sweep()
	if st := m.Stats(); st.HistoryBytes != 2 || st.EvictedByAge != 5 {
		t.Fatalf("after a sweep: %+v", st)
	}
}

func TestMemoryEpochs(t *testing.T) {
	a := newTestMemory(t, MemoryOptions{}, nil)
	b := newTestMemory(t, MemoryOptions{}, nil)
	pa := mustPublish(t, a, "c", "1", ChannelOptions{})
	pb := mustPublish(t, b, "c", "1", ChannelOptions{})
	if pa.Epoch == pb.Epoch {
		t.Fatalf("two brokers gave channel c the same epoch %q", pa.Epoch)
	}
	for _, e := range []string{pa.Epoch, pb.Epoch} {
		if len(e) != 8 || strings.Trim(e, "0123456789abcdefghijklmnopqrstuv") != "" {
			t.Fatalf("epoch %q is not 8 base32 characters", e)
		}
	}
	if _, _, err := b.History("c", &pa, 0); err != ErrUnrecoverable {
		t.Fatalf("recovery with another broker's epoch: %v", err)
	}
	seen := map[string]bool{}
	for range 100_000 {
		e := a.newEpoch()
		if seen[e] {
			t.Fatalf("epoch %q repeated", e)
		}
		seen[e] = true
	}
}

func TestMemoryStreamExpiry(t *testing.T) {
	clk := newClock()
	m := newTestMemory(t, MemoryOptions{Now: clk.Now}, nil) // StreamIdle 1m
	old := mustPublish(t, m, "c", "1", ChannelOptions{})
	clk.Advance(time.Minute - time.Millisecond)
	m.sweep()
	if _, pos, _ := m.History("c", nil, 0); pos != old {
		t.Fatalf("stream changed before StreamIdle: %+v, want %+v", pos, old)
	}
	clk.Advance(time.Millisecond)
	m.sweep()
	if st := m.Stats(); st.StreamsExpired != 1 || st.Streams != 0 || st.Channels != 0 {
		t.Fatalf("after expiry: %+v", st)
	}
	pos := mustPublish(t, m, "c", "2", ChannelOptions{})
	if pos.Offset != 1 || pos.Epoch == old.Epoch || pos.Epoch == "" {
		t.Fatalf("after expiry the stream is %+v (old %+v), want offset 1 in a new epoch", pos, old)
	}
	if _, _, err := m.History("c", &old, 0); err != ErrUnrecoverable {
		t.Fatalf("recovery from an expired epoch: %v", err)
	}

	// A history longer-lived than StreamIdle keeps the stream until it is
	// empty and HistoryTTL has passed.
	opts := ChannelOptions{HistorySize: 10, HistoryTTL: 5 * time.Minute}
	d := mustPublish(t, m, "d", "1", opts)
	clk.Advance(4 * time.Minute)
	m.sweep()
	if _, pos, _ := m.History("d", nil, 0); pos != d {
		t.Fatalf("stream d dropped with its history: %+v", pos)
	}
	clk.Advance(time.Minute)
	m.sweep()
	if _, pos, _ := m.History("d", nil, 0); pos.Epoch == d.Epoch || pos.Offset != 0 {
		t.Fatalf("stream d kept after its TTL: %+v", pos)
	}

	// With no age limit the history keeps the stream.
	e := mustPublish(t, m, "e", "1", ChannelOptions{HistorySize: 1})
	// A subscription, or presence, keeps it too.
	s := mustPublish(t, m, "s", "1", ChannelOptions{})
	p := mustPublish(t, m, "p", "1", ChannelOptions{})
	if err := m.Subscribe("s"); err != nil {
		t.Fatal(err)
	}
	if err := m.AddPresence("p", ClientInfo{Client: "x"}); err != nil {
		t.Fatal(err)
	}
	// A read creates no stream at all.
	if _, r, _ := m.History("r", nil, 0); r != (Position{}) {
		t.Fatalf("a read of a channel with no stream gave %+v", r)
	}
	clk.Advance(time.Hour)
	m.sweep()
	for ch, want := range map[string]Position{"e": e, "s": s, "p": p} {
		if _, pos, _ := m.History(ch, nil, 0); pos != want {
			t.Fatalf("stream %s is %+v, want it kept as %+v", ch, pos, want)
		}
	}
	m.Unsubscribe("s")
	m.RemovePresence("p", "x")
	clk.Advance(time.Minute)
	m.sweep()
	for ch, old := range map[string]Position{"s": s, "p": p} {
		if _, pos, _ := m.History(ch, nil, 0); pos.Epoch == old.Epoch {
			t.Fatalf("stream %s kept after its subscription or presence went: %+v", ch, pos)
		}
	}
}

func TestMemoryRecovery(t *testing.T) {
	m := newTestMemory(t, MemoryOptions{}, nil)
	var cur Position
	for i := 1; i <= 10; i++ {
		cur = mustPublish(t, m, "c", "p"+strconv.Itoa(i), ChannelOptions{HistorySize: 5})
	}
	e := cur.Epoch
	cases := []struct {
		name  string
		since *Position
		limit int
		want  []uint64 // nil with err
		err   error
	}{
		{"all", nil, 0, span(6, 10), nil},
		{"newest 2", nil, 2, []uint64{9, 10}, nil},
		{"newest 9 of 5", nil, 9, span(6, 10), nil},
		{"at current", &Position{10, e}, 0, nil, nil},
		{"at current with limit", &Position{10, e}, 1, nil, nil},
		{"in range", &Position{7, e}, 0, []uint64{8, 9, 10}, nil},
		{"first retained next", &Position{5, e}, 0, span(6, 10), nil},
		{"limit equal", &Position{5, e}, 5, span(6, 10), nil},
		{"limit exceeded", &Position{5, e}, 4, nil, ErrUnrecoverable},
		{"limit exceeded by one", &Position{8, e}, 1, nil, ErrUnrecoverable},
		{"evicted", &Position{4, e}, 0, nil, ErrUnrecoverable},
		{"from zero", &Position{0, e}, 0, nil, ErrUnrecoverable},
		{"wrong epoch", &Position{7, "zzzzzzzz"}, 0, nil, ErrUnrecoverable},
		{"empty epoch", &Position{10, ""}, 0, nil, ErrUnrecoverable},
		{"from the future", &Position{11, e}, 0, nil, ErrUnrecoverable},
	}
	for _, c := range cases {
		pubs, pos, err := m.History("c", c.since, c.limit)
		if err != c.err || pos != cur || !equalOffsets(offsets(pubs), c.want) {
			t.Errorf("%s: History = %v, %+v, %v; want %v, %+v, %v", c.name, offsets(pubs), pos, err, c.want, cur, c.err)
			continue
		}
		for _, p := range pubs {
			if want := "p" + strconv.Itoa(int(p.Offset)); string(p.Data) != want {
				t.Errorf("%s: publication %d has data %q, want %q", c.name, p.Offset, p.Data, want)
			}
		}
	}
}

func TestMemoryHistoryOfUnknownChannel(t *testing.T) {
	m := newTestMemory(t, MemoryOptions{MaxChannels: 2}, nil)
	// Reads of channels with no stream create none, so made-up names
	// take no room under MaxChannels.
	for i := range 10 {
		pubs, pos, err := m.History("x"+strconv.Itoa(i), nil, 0)
		if err != nil || pubs != nil || pos != (Position{}) {
			t.Fatalf("History of an unknown channel = %v, %+v, %v", pubs, pos, err)
		}
	}
	if st := m.Stats(); st.Channels != 0 || st.Streams != 0 {
		t.Fatalf("reads created state: %+v", st)
	}
	// {0, ""} recovers from the stream's first publication on.
	p1 := mustPublish(t, m, "c", "1", ChannelOptions{HistorySize: 1})
	if p1.Offset != 1 || p1.Epoch == "" {
		t.Fatalf("first publication at %+v", p1)
	}
	if pubs, pos, err := m.History("c", &Position{}, 0); err != nil || pos != p1 || !equalOffsets(offsets(pubs), []uint64{1}) {
		t.Fatalf("recovery from {0, \"\"} = %v, %+v, %v", offsets(pubs), pos, err)
	}
	mustPublish(t, m, "c", "2", ChannelOptions{HistorySize: 1}) // 1 is evicted
	if _, _, err := m.History("c", &Position{}, 0); err != ErrUnrecoverable {
		t.Fatalf("recovery from {0, \"\"} past an eviction: %v", err)
	}
	// A real position on a channel with no stream cannot be recovered.
	if _, cur, err := m.History("d", &Position{3, "abcdefgh"}, 0); err != ErrUnrecoverable || cur != (Position{}) {
		t.Fatalf("recovery on an unknown channel = %+v, %v", cur, err)
	}
	if _, _, err := m.History("d", &Position{}, 0); err != nil {
		t.Fatalf("recovery from {0, \"\"} on an unknown channel: %v", err)
	}
	mustPublish(t, m, "e", "1", ChannelOptions{}) // the second channel: the reads left room
	if _, err := m.Publish("f", []byte("1"), ChannelOptions{}); !errors.Is(err, ErrTooManyChannels) {
		t.Fatalf("third channel past MaxChannels 2: %v", err)
	}
	if st := m.Stats(); st.Channels != 2 || st.Streams != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// TestMemoryMaxHistoryBytesRandom publishes random sizes to random channels
// with a small MaxHistoryBytes and checks after every publication that the
// cap holds, that the counters match the histories, and that recovery from
// any position gives exactly the missing publications or ErrUnrecoverable.
func TestMemoryMaxHistoryBytesRandom(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		t.Run(strconv.FormatUint(seed, 10), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 0x5eed))
			max := int64(1000 + rng.IntN(9000))
			m := newTestMemory(t, MemoryOptions{MaxHistoryBytes: max}, nil)
			const channels = 6
			sizes := []int{0, 1, 2, 5, 20, 100}
			data := map[string]map[uint64]string{} // channel → offset → data
			cur := map[string]Position{}
			kept := 0
			for op := range 1500 {
				ch := "c" + strconv.Itoa(rng.IntN(channels))
				n := rng.IntN(600)
				if rng.IntN(50) == 0 {
					n = int(max) + rng.IntN(100) - 50 // around the whole cap
				}
				payload := make([]byte, n)
				for i := range payload {
					payload[i] = byte('a' + rng.IntN(26))
				}
				before := m.Stats().NotRetained
				pos, err := m.Publish(ch, payload, ChannelOptions{HistorySize: sizes[rng.IntN(len(sizes))]})
				if err != nil {
					t.Fatal(err)
				}
				if prev, ok := cur[ch]; ok && (pos.Epoch != prev.Epoch || pos.Offset != prev.Offset+1) {
					t.Fatalf("op %d: %s went from %+v to %+v", op, ch, prev, pos)
				}
				cur[ch] = pos
				if data[ch] == nil {
					data[ch] = map[uint64]string{}
				}
				data[ch][pos.Offset] = string(payload)
				st := m.Stats()
				if st.HistoryBytes > max || st.HistoryBytes < 0 {
					t.Fatalf("op %d: history bytes %d, cap %d", op, st.HistoryBytes, max)
				}
				if st.NotRetained != before {
					kept++
					if pubs, _, _ := m.History(ch, nil, 0); len(pubs) != 0 {
						t.Fatalf("op %d: a publication was not kept but its channel still has %v", op, offsets(pubs))
					}
				}
				checkRecovery(t, m, ch, pos, data[ch], rng)
				if op%50 == 0 {
					checkTotals(t, m, channels)
				}
			}
			checkTotals(t, m, channels)
			t.Logf("cap %d: %d publications not kept, stats %+v", max, kept, m.Stats())
		})
	}
}

// checkRecovery recovers ch from every position of its current epoch (or
// a sample of them) and from the one before the oldest retained.
func checkRecovery(t *testing.T, m *Memory, ch string, cur Position, data map[uint64]string, rng *rand.Rand) {
	t.Helper()
	retained, pos, err := m.History(ch, nil, 0)
	if err != nil || pos != cur {
		t.Fatalf("%s: History = %+v, %v; want position %+v", ch, pos, err, cur)
	}
	if len(retained) > 0 {
		if last := retained[len(retained)-1].Offset; last != cur.Offset {
			t.Fatalf("%s: newest retained %d, current %d", ch, last, cur.Offset)
		}
		if !equalOffsets(offsets(retained), span(retained[0].Offset, cur.Offset)) {
			t.Fatalf("%s: retained offsets not contiguous: %v", ch, offsets(retained))
		}
	}
	var tries []uint64
	if cur.Offset <= 40 {
		tries = span(0, cur.Offset)
	} else {
		for range 40 {
			tries = append(tries, uint64(rng.IntN(int(cur.Offset)+1)))
		}
	}
	if len(retained) > 0 {
		// Everything History(nil) shows must be recoverable.
		tries = append(tries, retained[0].Offset-1)
	}
	for _, since := range tries {
		pubs, _, err := m.History(ch, &Position{since, cur.Epoch}, 0)
		if err == ErrUnrecoverable {
			if len(retained) > 0 && since >= retained[0].Offset-1 {
				t.Fatalf("%s: recovery from %d refused with %v retained", ch, since, offsets(retained))
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if want := span(since+1, cur.Offset); since < cur.Offset && !equalOffsets(offsets(pubs), want) {
			t.Fatalf("%s: recovery from %d gave %v, want %v", ch, since, offsets(pubs), want)
		} else if since == cur.Offset && len(pubs) != 0 {
			t.Fatalf("%s: recovery from the current position gave %v", ch, offsets(pubs))
		}
		for _, p := range pubs {
			if string(p.Data) != data[p.Offset] {
				t.Fatalf("%s: publication %d has data of %d bytes, want %d bytes", ch, p.Offset, len(p.Data), len(data[p.Offset]))
			}
		}
	}
}

// checkTotals compares the counters with the histories.
func checkTotals(t *testing.T, m *Memory, channels int) {
	t.Helper()
	var sum, n int64
	for c := range channels {
		pubs, _, err := m.History("c"+strconv.Itoa(c), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pubs {
			sum += int64(len(p.Data))
		}
		n += int64(len(pubs))
	}
	if st := m.Stats(); st.HistoryBytes != sum || st.HistoryPublications != n {
		t.Fatalf("stats say %d bytes in %d publications, histories hold %d in %d", st.HistoryBytes, st.HistoryPublications, sum, n)
	}
}

func TestMemoryMaxHistoryBytesConcurrent(t *testing.T) {
	// Publishers of different channels keep the total at the cap, so they
	// reserve bytes against each other all the time.
	const max, goroutines = 10_000, 8
	m := newTestMemory(t, MemoryOptions{MaxHistoryBytes: max}, nil)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			ch := "c" + strconv.Itoa(g)
			data := make([]byte, 3000)
			for range 20_000 {
				if _, err := m.Publish(ch, data[:rng.IntN(len(data))], ChannelOptions{HistorySize: 1 + rng.IntN(30)}); err != nil {
					t.Error(err)
					return
				}
				if b := m.bytes.Load(); b > max || b < 0 {
					t.Errorf("history bytes %d, cap %d", b, max)
					return
				}
			}
		})
	}
	wg.Wait()
	checkTotals(t, m, goroutines)
	if st := m.Stats(); st.EvictedByBytes == 0 || st.NotRetained == 0 {
		t.Fatalf("the cap was never reached: %+v", st)
	}
}

func TestMemoryPublicationLargerThanTheCap(t *testing.T) {
	rec := &recorder{}
	m := newTestMemory(t, MemoryOptions{MaxHistoryBytes: 100}, rec)
	m.Subscribe("c")
	opts := ChannelOptions{HistorySize: 10}
	p1 := mustPublish(t, m, "c", string(make([]byte, 50)), opts)
	big := string(bytes.Repeat([]byte("x"), 200))
	p2 := mustPublish(t, m, "c", big, opts)
	if p2.Offset != 2 {
		t.Fatalf("offset %d, want 2", p2.Offset)
	}
	if ev := rec.take(); len(ev) != 2 || ev[1].data != big || ev[1].offset != 2 {
		t.Fatalf("delivered %d events, want both publications", len(ev))
	}
	if pubs, _, _ := m.History("c", nil, 0); len(pubs) != 0 {
		t.Fatalf("history %v, want it emptied", offsets(pubs))
	}
	if _, _, err := m.History("c", &p1, 0); err != ErrUnrecoverable {
		t.Fatalf("recovery over a publication not kept: %v", err)
	}
	if pubs, _, err := m.History("c", &p2, 0); err != nil || len(pubs) != 0 {
		t.Fatalf("recovery from the current position: %v, %v", offsets(pubs), err)
	}
	p3 := mustPublish(t, m, "c", "small", opts)
	if pubs, _, err := m.History("c", &p2, 0); err != nil || !equalOffsets(offsets(pubs), []uint64{p3.Offset}) {
		t.Fatalf("recovery after it: %v, %v", offsets(pubs), err)
	}
	if st := m.Stats(); st.NotRetained != 1 || st.EvictedByBytes != 1 || st.HistoryBytes != 5 {
		t.Fatalf("stats %+v", st)
	}

	// Another channel's publication that does not fit evicts only its own
	// channel's history.
	mustPublish(t, m, "d", string(make([]byte, 96)), opts)
	if pubs, _, _ := m.History("c", nil, 0); len(pubs) != 1 {
		t.Fatalf("c's history %v after d's publication", offsets(pubs))
	}
	if pubs, _, _ := m.History("d", nil, 0); len(pubs) != 0 {
		t.Fatalf("d's history %v, want nothing (5 + 96 bytes would pass 100)", offsets(pubs))
	}
}

func TestMemoryMaxChannels(t *testing.T) {
	clk := newClock()
	m := newTestMemory(t, MemoryOptions{MaxChannels: 3, Now: clk.Now}, nil)
	for _, ch := range []string{"a", "b"} {
		mustPublish(t, m, ch, "1", ChannelOptions{HistorySize: 1})
	}
	if err := m.AddPresence("c", ClientInfo{Client: "x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Publish("d", []byte("1"), ChannelOptions{}); !errors.Is(err, ErrTooManyChannels) {
		t.Fatalf("Publish on a 4th channel: %v", err)
	}
	if err := m.AddPresence("d", ClientInfo{Client: "x"}); !errors.Is(err, ErrTooManyChannels) {
		t.Fatalf("AddPresence on a 4th channel: %v", err)
	}
	// Existing channels go on; a subscription does not count.
	mustPublish(t, m, "a", "2", ChannelOptions{HistorySize: 1})
	mustPublish(t, m, "c", "1", ChannelOptions{}) // c has presence: same channel
	if err := m.AddPresence("a", ClientInfo{Client: "y"}); err != nil {
		t.Fatal(err)
	}
	if err := m.Subscribe("d"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Publish("d", []byte("1"), ChannelOptions{}); !errors.Is(err, ErrTooManyChannels) {
		t.Fatalf("Publish on a subscribed 4th channel: %v", err)
	}
	if st := m.Stats(); st.Channels != 3 || st.ChannelsRefused != 3 {
		t.Fatalf("stats %+v", st)
	}
	// c's presence goes and its stream expires: d fits, and its refused
	// publications took no offset.
	m.RemovePresence("c", "x")
	if st := m.Stats(); st.Channels != 3 {
		t.Fatalf("channels %d, want 3 (c still has a stream)", st.Channels)
	}
	clk.Advance(time.Hour)
	m.sweep()
	if st := m.Stats(); st.Channels != 2 {
		t.Fatalf("channels %d after c expired, want 2", st.Channels)
	}
	if pos := mustPublish(t, m, "d", "1", ChannelOptions{}); pos.Offset != 1 {
		t.Fatalf("d's first publication got offset %d", pos.Offset)
	}
	if st := m.Stats(); st.Channels != 3 {
		t.Fatalf("stats %+v", st)
	}
}

func TestMemoryPresence(t *testing.T) {
	m := newTestMemory(t, MemoryOptions{}, nil)
	info := []byte(`{"name":"ann"}`)
	if err := m.AddPresence("c", ClientInfo{Client: "c2", User: "ann", Info: info}); err != nil {
		t.Fatal(err)
	}
	copy(info, `{"name":"bob"}`) // the broker has its own copy
	if err := m.AddPresence("c", ClientInfo{Client: "c1", User: "carl"}); err != nil {
		t.Fatal(err)
	}
	got, err := m.Presence("c")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Client != "c1" || got[1].Client != "c2" || got[1].User != "ann" || string(got[1].Info) != `{"name":"ann"}` || got[0].Info != nil {
		t.Fatalf("presence %+v", got)
	}
	got[0].User = "changed" // a fresh slice
	// Replace.
	if err := m.AddPresence("c", ClientInfo{Client: "c2", User: "dan"}); err != nil {
		t.Fatal(err)
	}
	got, _ = m.Presence("c")
	if len(got) != 2 || got[0].User != "carl" || got[1].User != "dan" || got[1].Info != nil {
		t.Fatalf("after replacing c2: %+v", got)
	}
	if err := m.RemovePresence("c", "nobody"); err != nil {
		t.Fatalf("removing an unknown client: %v", err)
	}
	if err := m.RemovePresence("unknown", "c1"); err != nil {
		t.Fatalf("removing from an unknown channel: %v", err)
	}
	if got, err := m.Presence("unknown"); err != nil || len(got) != 0 {
		t.Fatalf("presence of an unknown channel: %v, %v", got, err)
	}
	m.RemovePresence("c", "c2")
	if got, _ := m.Presence("c"); len(got) != 1 || got[0].Client != "c1" {
		t.Fatalf("after removing c2: %+v", got)
	}
	if st := m.Stats(); st.Channels != 1 {
		t.Fatalf("stats %+v", st)
	}
	m.RemovePresence("c", "c1")
	if got, _ := m.Presence("c"); len(got) != 0 {
		t.Fatalf("after removing all: %+v", got)
	}
	if st := m.Stats(); st.Channels != 0 || st.Streams != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestMemoryDelivery(t *testing.T) {
	rec := &recorder{}
	m := newTestMemory(t, MemoryOptions{}, rec)
	opts := ChannelOptions{HistorySize: 10}
	mustPublish(t, m, "c", "before", opts)
	m.PublishJoin("c", ClientInfo{Client: "x"})
	if ev := rec.take(); len(ev) != 0 {
		t.Fatalf("delivered to a channel nobody subscribed to: %+v", ev)
	}
	if err := m.Subscribe("c"); err != nil {
		t.Fatal(err)
	}
	if err := m.PublishJoin("c", ClientInfo{Client: "x"}); err != nil {
		t.Fatal(err)
	}
	pos := mustPublish(t, m, "c", "one", opts)
	if err := m.PublishLeave("c", ClientInfo{Client: "x"}); err != nil {
		t.Fatal(err)
	}
	mustPublish(t, m, "other", "no", opts)
	want := []event{
		{kind: "join", channel: "c", client: "x"},
		{kind: "pub", channel: "c", offset: 2, epoch: pos.Epoch, data: "one"},
		{kind: "leave", channel: "c", client: "x"},
	}
	if ev := rec.take(); fmt.Sprint(ev) != fmt.Sprint(want) {
		t.Fatalf("events %+v, want %+v", ev, want)
	}
	if err := m.Unsubscribe("c"); err != nil {
		t.Fatal(err)
	}
	mustPublish(t, m, "c", "after", opts)
	if ev := rec.take(); len(ev) != 0 {
		t.Fatalf("delivered after Unsubscribe: %+v", ev)
	}
	if pubs, _, _ := m.History("c", nil, 0); !equalOffsets(offsets(pubs), []uint64{1, 2, 3}) {
		t.Fatalf("history %v, want publications delivered or not", offsets(pubs))
	}
	// A publication that is not kept is delivered all the same.
	m.Subscribe("c")
	mustPublish(t, m, "c", "unkept", ChannelOptions{})
	if ev := rec.take(); len(ev) != 1 || ev[0].data != "unkept" || ev[0].offset != 4 {
		t.Fatalf("events %+v", ev)
	}
}

// reentrant is a Handler that calls the broker for another channel, which
// the contract allows (whatever shard that channel is in).
type reentrant struct {
	m     *Memory
	calls int
}

func (r *reentrant) HandlePublication(ch string, pub *Publication, pos Position) {
	r.calls++
	if ch == "src" {
		for i := range 200 { // some of these share src's shard
			if _, err := r.m.Publish("dst"+strconv.Itoa(i), pub.Data, ChannelOptions{HistorySize: 1}); err != nil {
				panic(err)
			}
		}
	}
}
func (r *reentrant) HandleJoin(string, ClientInfo)  {}
func (r *reentrant) HandleLeave(string, ClientInfo) {}

func TestMemoryHandlerCallsOtherChannels(t *testing.T) {
	m := NewMemory(MemoryOptions{})
	h := &reentrant{m: m}
	if err := m.Run(h); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.Subscribe("src")
	for i := range 200 {
		m.Subscribe("dst" + strconv.Itoa(i))
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		mustPublish(t, m, "src", "1", ChannelOptions{})
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("deadlock: a handler publishing to other channels")
	}
	if h.calls != 201 {
		t.Fatalf("handler called %d times, want 201", h.calls)
	}
}

func TestMemoryPublishCopiesData(t *testing.T) {
	m := newTestMemory(t, MemoryOptions{}, nil)
	data := []byte(`{"a":1}`)
	mustPublish(t, m, "c", string(data), ChannelOptions{HistorySize: 1})
	pos, _ := m.Publish("c", data, ChannelOptions{HistorySize: 2})
	copy(data, `{"b":2}`)
	pubs, _, _ := m.History("c", &Position{pos.Offset - 1, pos.Epoch}, 0)
	if len(pubs) != 1 || string(pubs[0].Data) != `{"a":1}` {
		t.Fatalf("history has %v after the caller changed its buffer", pubs)
	}
}

func TestMemoryInvalidOptions(t *testing.T) {
	m := newTestMemory(t, MemoryOptions{}, nil)
	for _, opts := range []ChannelOptions{{HistorySize: -1}, {HistorySize: 1, HistoryTTL: -time.Second}} {
		if _, err := m.Publish("c", []byte("1"), opts); err == nil {
			t.Fatalf("Publish with %+v: no error", opts)
		}
	}
	if pos := mustPublish(t, m, "c", "1", ChannelOptions{}); pos.Offset != 1 {
		t.Fatalf("offset %d after refused publications, want 1", pos.Offset)
	}
}

func TestMemoryRun(t *testing.T) {
	m := NewMemory(MemoryOptions{})
	if err := m.Run(nil); err == nil {
		t.Fatal("Run(nil): no error")
	}
	if err := m.Run(nopHandler{}); err != nil {
		t.Fatal(err)
	}
	if err := m.Run(nopHandler{}); err == nil {
		t.Fatal("second Run: no error")
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Run(nopHandler{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run after Close: %v", err)
	}
	// Close without Run.
	if err := NewMemory(MemoryOptions{}).Close(); err != nil {
		t.Fatal(err)
	}
}

func TestMemoryJanitor(t *testing.T) {
	clk := newClock()
	m := NewMemory(MemoryOptions{Now: clk.Now, StreamIdle: time.Second})
	m.sweepEvery = 5 * time.Millisecond
	if err := m.Run(nopHandler{}); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	mustPublish(t, m, "c", "1", ChannelOptions{HistorySize: 5, HistoryTTL: 2 * time.Second})
	clk.Advance(2 * time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for m.Stats().StreamsExpired != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the janitor did not expire the stream: %+v", m.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	if st := m.Stats(); st.EvictedByAge != 1 || st.HistoryBytes != 0 || st.Channels != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestMemoryClose(t *testing.T) {
	var closed atomic.Bool
	var late atomic.Int64
	h := handlerFunc(func() {
		if closed.Load() {
			late.Add(1)
		}
		time.Sleep(10 * time.Microsecond)
	})
	m := NewMemory(MemoryOptions{})
	m.sweepEvery = time.Millisecond
	if err := m.Run(h); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 4 {
		ch := "c" + strconv.Itoa(g)
		m.Subscribe(ch)
		wg.Go(func() {
			for {
				_, err := m.Publish(ch, []byte("1"), ChannelOptions{HistorySize: 10})
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	time.Sleep(20 * time.Millisecond)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	closed.Store(true)
	wg.Wait()
	if n := late.Load(); n != 0 {
		t.Fatalf("%d Handler calls after Close returned", n)
	}
	select {
	case <-m.done:
	default:
		t.Fatal("the janitor still runs after Close")
	}
	info := ClientInfo{Client: "x"}
	checks := map[string]error{
		"Close":          m.Close(),
		"Run":            m.Run(h),
		"PublishJoin":    m.PublishJoin("c0", info),
		"PublishLeave":   m.PublishLeave("c0", info),
		"Subscribe":      m.Subscribe("c0"),
		"Unsubscribe":    m.Unsubscribe("c0"),
		"AddPresence":    m.AddPresence("c0", info),
		"RemovePresence": m.RemovePresence("c0", "x"),
	}
	_, checks["Publish"] = m.Publish("c0", []byte("1"), ChannelOptions{})
	_, _, checks["History"] = m.History("c0", nil, 0)
	_, checks["Presence"] = m.Presence("c0")
	for name, err := range checks {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: %v", name, err)
		}
	}
	if st := m.Stats(); st.Channels != 0 || st.HistoryBytes != 0 || st.HistoryPublications != 0 || st.Streams != 0 {
		t.Fatalf("stats after Close %+v", st)
	}
}

type handlerFunc func()

func (f handlerFunc) HandlePublication(string, *Publication, Position) { f() }
func (f handlerFunc) HandleJoin(string, ClientInfo)                    { f() }
func (f handlerFunc) HandleLeave(string, ClientInfo)                   { f() }

func BenchmarkMemoryPublish(b *testing.B) {
	m := newTestMemory(b, MemoryOptions{}, nopHandler{})
	m.Subscribe("bench")
	data := bytes.Repeat([]byte("x"), 100)
	opts := ChannelOptions{HistorySize: 100}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Publish("bench", data, opts); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMemoryPublishParallel publishes from every processor at once,
// each goroutine to 8 channels of its own.
func BenchmarkMemoryPublishParallel(b *testing.B) {
	m := newTestMemory(b, MemoryOptions{}, nopHandler{})
	data := bytes.Repeat([]byte("x"), 100)
	opts := ChannelOptions{HistorySize: 100}
	var next atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		g := next.Add(1)
		names := make([]string, 8)
		for i := range names {
			names[i] = "bench" + strconv.FormatInt(g, 10) + "." + strconv.Itoa(i)
			m.Subscribe(names[i])
		}
		i := 0
		for pb.Next() {
			i++
			if _, err := m.Publish(names[i%len(names)], data, opts); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
