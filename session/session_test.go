package session

import (
	"fmt"
	"slices"
	"testing"
	"unsafe"
)

func TestSlabAllocFree(t *testing.T) {
	s := NewSlab()
	var hs []Handle
	for i := range 3*pageSize + 5 {
		h, ss := s.Alloc()
		if h.Index != int32(i) || ss.State != Handshaking {
			t.Fatalf("alloc %d: handle %+v state %v", i, h, ss.State)
		}
		ss.Deadline = uint32(i + 1)
		hs = append(hs, h)
	}
	if s.Len() != len(hs) || s.Cap() != 4*pageSize {
		t.Fatalf("Len %d Cap %d", s.Len(), s.Cap())
	}
	// Addresses are stable across growth.
	first := s.Get(hs[0])
	for range pageSize {
		s.Alloc()
	}
	if s.Get(hs[0]) != first || first.Deadline != 1 || first.Self != 0 {
		t.Fatal("a session moved when the slab grew")
	}

	s.Free(hs[7].Index)
	if s.Get(hs[7]) != nil {
		t.Fatal("a freed handle still resolves")
	}
	h, ss := s.Alloc() // LIFO: slot 7 comes back with a new generation
	if h.Index != 7 || h.Gen == hs[7].Gen {
		t.Fatalf("reuse gave %+v after freeing %+v", h, hs[7])
	}
	if ss.Deadline != 0 || ss.Self != 7 {
		t.Fatal("reused slot not zeroed")
	}
	if s.Get(hs[7]) != nil {
		t.Fatal("a stale handle reaches the reused slot")
	}
	if s.Get(h) != ss {
		t.Fatal("the new handle does not resolve")
	}
	s.Free(h.Index)
	s.Free(h.Index) // double free is ignored
	if s.Get(Handle{Index: 1 << 30}) != nil || s.Get(Handle{Index: -1}) != nil {
		t.Fatal("out of range handle resolved")
	}
}

func TestSlabEach(t *testing.T) {
	s := NewSlab()
	for range 600 {
		s.Alloc()
	}
	for i := int32(0); i < 600; i += 3 {
		s.Free(i)
	}
	var seen []int32
	s.Each(func(idx int32, ss *Session) bool {
		seen = append(seen, idx)
		if idx == 10 { // freeing others mid-iteration is allowed
			s.Free(11)
		}
		return true
	})
	if len(seen) != 400-1 || slices.Contains(seen, 11) || slices.Contains(seen, 0) {
		t.Fatalf("Each visited %d sessions", len(seen))
	}
}

func TestSessionSize(t *testing.T) {
	// Every idle connection pays for a Session: keep it within two cache lines.
	if n := unsafe.Sizeof(Session{}); n > 128 {
		t.Fatalf("Session is %d bytes", n)
	}
}

// firings advances w to tick `to` and returns "tick:index" of each firing.
func firings(w *Wheel, to uint32, fire func(idx int32)) []string {
	var got []string
	w.Advance(to, func(idx int32) {
		got = append(got, fmt.Sprintf("%d:%d", w.Now(), idx))
		if fire != nil {
			fire(idx)
		}
	})
	return got
}

func TestWheelOrderAndRevolutions(t *testing.T) {
	s := NewSlab()
	w := NewWheel(s, 8, 0)
	for range 6 {
		s.Alloc()
	}
	w.Schedule(0, 5)
	w.Schedule(1, 2)
	w.Schedule(2, 2)
	w.Schedule(3, 13) // same bucket as 5, one revolution later
	w.Schedule(4, 30) // several revolutions
	w.Schedule(5, 0)  // in the past: next tick
	got := firings(w, 40, nil)
	want := []string{"1:5", "2:2", "2:1", "5:0", "13:3", "30:4"}
	if !slices.Equal(got, want) {
		t.Fatalf("fired %v, want %v", got, want)
	}
	for i := range int32(6) {
		if _, ok := w.Scheduled(i); ok {
			t.Fatalf("session %d still scheduled", i)
		}
	}
}

func TestWheelRescheduleAndCancel(t *testing.T) {
	s := NewSlab()
	w := NewWheel(s, 4, 0)
	for range 4 {
		s.Alloc()
	}
	w.Schedule(0, 3)
	w.Schedule(0, 6) // moves
	w.Schedule(1, 3)
	w.Schedule(2, 3)
	w.Schedule(3, 3)
	w.Cancel(3)
	got := firings(w, 10, func(idx int32) {
		switch idx {
		case 2: // cancel and free a session due in the same tick
			w.Cancel(1)
			s.Free(1)
		}
	})
	// 1 and 2 share tick 3; whichever fires first, 1 must not fire after
	// 2 cancelled it.
	if !slices.Equal(got, []string{"3:2", "6:0"}) && !slices.Equal(got, []string{"3:1", "3:2", "6:0"}) {
		t.Fatalf("fired %v", got)
	}
	// Rescheduling from inside fire into the same bucket fires next revolution.
	w.Schedule(0, 11)
	got = firings(w, 20, func(idx int32) {
		if w.Now() == 11 {
			w.Schedule(idx, 15)
		}
	})
	if !slices.Equal(got, []string{"11:0", "15:0"}) {
		t.Fatalf("fired %v", got)
	}
}

// TestWheelCostPerTick checks that advancing by a tick examines only the
// sessions in that tick's bucket (those due, and those waiting there for a
// later revolution), never the rest.
func TestWheelCostPerTick(t *testing.T) {
	s := NewSlab()
	w := NewWheel(s, 64, 0)
	for i := range int32(10000) {
		s.Alloc()
		w.Schedule(i, 1+uint32(i)%60)
	}
	// 100 more in tick 1's bucket, but 1 to 3 revolutions later.
	for i := range int32(100) {
		_, ss := s.Alloc()
		w.Schedule(ss.Self, 1+64*(1+uint32(i)%3))
	}
	fired := 0
	w.Advance(1, func(idx int32) { fired++ })
	due := 10000/60 + 1
	if fired != due {
		t.Fatalf("tick 1 fired %d sessions, want %d", fired, due)
	}
	if v := w.Visits(); v != uint64(due+100) {
		t.Fatalf("tick 1 examined %d sessions, want %d (the due ones and the 100 sharing their bucket)", v, due+100)
	}
	// Ticks with empty buckets cost nothing.
	for i := range int32(10100) {
		w.Cancel(i)
	}
	before := w.Visits()
	w.Advance(1000, func(int32) { t.Fatal("fired a cancelled timer") })
	if w.Visits() != before {
		t.Fatalf("advancing over empty buckets examined %d sessions", w.Visits()-before)
	}
}

// TestWheelSlotsBounded: the bucket array stays small whatever timeout it
// is sized for.
func TestWheelSlotsBounded(t *testing.T) {
	w := NewWheel(NewSlab(), 100_000_000, 0)
	if w.Slots() > MaxSlots {
		t.Fatalf("%d buckets, want at most %d", w.Slots(), MaxSlots)
	}
	s := w.slab
	s.Alloc()
	w.Schedule(0, 3*MaxSlots+7) // several revolutions ahead still fires on time
	got := firings(w, 4*MaxSlots, nil)
	if len(got) != 1 || got[0] != fmt.Sprintf("%d:0", 3*MaxSlots+7) {
		t.Fatalf("fired %v", got)
	}
}

func TestWheelTickWraparound(t *testing.T) {
	s := NewSlab()
	w := NewWheel(s, 8, 0)
	w.now = ^uint32(0) - 2
	s.Alloc()
	w.Schedule(0, w.now+5) // wraps past zero
	got := firings(w, w.now+10, nil)
	if len(got) != 1 || got[0] != "2:0" {
		t.Fatalf("fired %v", got)
	}
}

// TestHeartbeat drives the ping/pong rules with a fake clock: an idle
// session is pinged once it has been silent for more than an interval,
// activity postpones pings, and the session is dropped after MaxMissed
// unanswered pings.
func TestHeartbeat(t *testing.T) {
	s := NewSlab()
	w := NewWheel(s, 64, 0)
	tm := Timeouts{Handshake: 5, Ping: 30, MaxMissed: 3}
	s.Alloc()
	idx := int32(0)
	tm.Opened(w, idx)

	var events []string
	out := Outbound{PingFlushed: true}
	step := func(to uint32) {
		w.Advance(to, func(i int32) {
			v := tm.Expire(w, i, out)
			events = append(events, fmt.Sprintf("%d:%d", w.Now(), v))
			if v == HeartbeatTimeout {
				s.At(i).State = Closing
			}
		})
	}
	// Traffic at 10 and 25: the timer fires at 31, finds activity, and
	// moves to 25+31.
	step(10)
	Touch(s.At(idx), 10)
	step(25)
	Touch(s.At(idx), 25)
	step(55)
	if !slices.Equal(events, []string{"31:0"}) {
		t.Fatalf("events %v", events)
	}
	// Idle from 25: pings at 56, 87, 118 (more than 30 ticks apart each);
	// dropped at 149.
	step(200)
	want := []string{"31:0", "56:1", "87:1", "118:1", "149:2"}
	if !slices.Equal(events, want) {
		t.Fatalf("events %v, want %v", events, want)
	}

	// A pong after the second ping forgives the misses.
	events = nil
	h2, _ := s.Alloc()
	base := w.Now()
	tm.Opened(w, h2.Index)
	step(base + 62) // pings at +31 and +62
	Touch(s.At(h2.Index), base+63)
	step(base + 200)
	want = []string{
		fmt.Sprintf("%d:1", base+31), fmt.Sprintf("%d:1", base+62),
		fmt.Sprintf("%d:0", base+93), // the pong at +63 answers; idle since then
		fmt.Sprintf("%d:1", base+94), fmt.Sprintf("%d:1", base+125), fmt.Sprintf("%d:1", base+156),
		fmt.Sprintf("%d:2", base+187),
	}
	if !slices.Equal(events, want) {
		t.Fatalf("events %v, want %v", events, want)
	}

	// A handshake that never completes.
	events = nil
	h, _ := s.Alloc()
	w.Schedule(h.Index, w.Now()+tm.Handshake)
	step(w.Now() + 10)
	if len(events) != 1 || events[0] != fmt.Sprintf("%d:%d", w.Now()-5, HandshakeTimeout) {
		t.Fatalf("events %v", events)
	}
}

// TestHeartbeatBacklog: a peer that keeps writing but never reads is
// probed with pings; pings that never leave the server count as missed
// however much the peer sends, so it is dropped. One that reads (its pings
// leave) and answers stays.
func TestHeartbeatBacklog(t *testing.T) {
	s := NewSlab()
	w := NewWheel(s, 64, 0)
	tm := Timeouts{Ping: 10, MaxMissed: 2}
	for _, tc := range []struct {
		name    string
		flushed bool
		want    Verdict
	}{
		{"not reading", false, HeartbeatTimeout},
		{"reading", true, SendPing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, ss := s.Alloc()
			tm.Opened(w, h.Index)
			var verdicts []Verdict
			for range 60 {
				Touch(ss, w.Now()) // traffic every tick
				w.Advance(w.Now()+1, func(i int32) {
					v := tm.Expire(w, i, Outbound{Backlog: true, PingFlushed: tc.flushed})
					verdicts = append(verdicts, v)
					if v == HeartbeatTimeout {
						w.Cancel(i)
					}
				})
			}
			last := verdicts[len(verdicts)-1]
			if last != tc.want {
				t.Fatalf("verdicts %v, last %v want %v", verdicts, last, tc.want)
			}
			if tc.want == HeartbeatTimeout && len(verdicts) != 3 {
				// MaxMissed (2) pings that never left, then out
				t.Fatalf("verdicts %v: want 2 pings then the timeout", verdicts)
			}
			w.Cancel(h.Index)
			s.Free(h.Index)
		})
	}
}

func TestExpiry(t *testing.T) {
	s := NewSlab()
	w := NewWheel(s, 64, 0)
	tm := Timeouts{Ping: 30, MaxMissed: 3}
	h, ss := s.Alloc()
	tm.Opened(w, h.Index)
	var events []string
	out := Outbound{PingFlushed: true}
	step := func(to uint32) {
		w.Advance(to, func(i int32) {
			events = append(events, fmt.Sprintf("%d:%d", w.Now(), tm.Expire(w, i, out)))
		})
	}
	// An expiry before the heartbeat brings the timer forward; the
	// heartbeat goes on after it.
	tm.SetExpiry(w, h.Index, 12)
	step(40)
	if want := []string{"12:5", "31:1"}; !slices.Equal(events, want) {
		t.Fatalf("events %v, want %v", events, want)
	}
	if ss.Deadline != 0 {
		t.Fatalf("expiry %d after it fired", ss.Deadline)
	}
	// An expiry that cuts a ping's wait short: the wait restarts in full,
	// so the timeout is never early.
	events = nil
	tm.SetExpiry(w, h.Index, 50)
	step(200)
	if want := []string{"50:5", "81:1", "112:1", "143:2"}; !slices.Equal(events, want) {
		t.Fatalf("events %v, want %v", events, want)
	}
	// Clearing an expiry: the early wake-up it left finds nothing to do
	// and re-arms the heartbeat.
	h2, _ := s.Alloc()
	tm.Opened(w, h2.Index)
	at := w.Now() + 5
	tm.SetExpiry(w, h2.Index, at)
	tm.SetExpiry(w, h2.Index, 0)
	events = nil
	step(w.Now() + 10)
	if want := []string{fmt.Sprintf("%d:0", at)}; !slices.Equal(events, want) {
		t.Fatalf("events %v, want %v", events, want)
	}
}
