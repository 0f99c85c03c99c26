package session

// Wheel is a hashed timing wheel over the sessions of one Slab. Each
// session has at most one timer; it sits in the bucket of its due tick,
// linked through slab indices, so scheduling, rescheduling and cancelling
// are O(1) and cost no allocation. Advancing by one tick touches only the
// sessions in that tick's bucket: the cost is proportional to the timers
// due, never to the number of sessions. A timer more than one revolution
// ahead stays in its bucket until its round comes.
//
// The wheel keeps no clock: ticks are plain counters that the owner
// advances (the engine counts real time; tests count by hand). Owned by the
// same event loop as its Slab.
type Wheel struct {
	slab   *Slab
	heads  []int32 // bucket lists; the extra last one holds the tick being fired
	mask   uint32
	now    uint32
	visits uint64 // sessions examined by Advance: the wheel's whole cost
}

// MaxSlots bounds the buckets of a wheel whatever the timeouts: a timer
// further ahead than one revolution waits in its bucket for its round.
const MaxSlots = 1 << 12

// NewWheel returns a wheel over slab with at least slots buckets (rounded
// up to a power of two), starting at tick now. Size it to the longest
// common timeout in ticks so that timers rarely wait more than one
// revolution.
func NewWheel(slab *Slab, slots int, now uint32) *Wheel {
	slots = min(slots, MaxSlots)
	n := 1
	for n < slots {
		n <<= 1
	}
	w := &Wheel{slab: slab, heads: make([]int32, n+1), mask: uint32(n - 1), now: now}
	for i := range w.heads {
		w.heads[i] = -1
	}
	return w
}

// Now returns the current tick.
func (w *Wheel) Now() uint32 { return w.now }

// Slots returns the number of buckets.
func (w *Wheel) Slots() int { return len(w.heads) - 1 }

// Visits returns how many sessions Advance has examined so far: those it
// fired and those it found in a due bucket but waiting for a later round.
func (w *Wheel) Visits() uint64 { return w.visits }

// firing is the index of the list that holds the bucket being fired.
func (w *Wheel) firing() int32 { return int32(len(w.heads) - 1) }

// Schedule sets the timer of session idx to fire at tick due (moving it if
// it was set). A due tick that has passed fires at the next tick.
func (w *Wheel) Schedule(idx int32, due uint32) {
	if int32(due-w.now) <= 0 {
		due = w.now + 1
	}
	s := w.slab.At(idx)
	if s.list >= 0 {
		w.unlink(idx, s)
	}
	s.due = due
	w.link(idx, s, int32(due&w.mask))
}

// Cancel stops the timer of session idx, if set.
func (w *Wheel) Cancel(idx int32) {
	s := w.slab.At(idx)
	if s.list >= 0 {
		w.unlink(idx, s)
	}
}

// Scheduled reports whether session idx has a timer and when it is due.
func (w *Wheel) Scheduled(idx int32) (due uint32, ok bool) {
	s := w.slab.At(idx)
	return s.due, s.list >= 0
}

// Advance moves the wheel to tick to, calling fire for each session whose
// timer comes due, in tick order. The timer is cleared before fire runs;
// fire may schedule it again, cancel or free any session, including others
// due in the same tick.
func (w *Wheel) Advance(to uint32, fire func(idx int32)) {
	for int32(to-w.now) > 0 {
		w.now++
		b := int32(w.now & w.mask)
		if w.heads[b] < 0 {
			continue
		}
		// Move the bucket to the firing list, so that fire can reschedule
		// into this same bucket and cancel anything still waiting here.
		f := w.firing()
		w.heads[f] = w.heads[b]
		w.heads[b] = -1
		for i := w.heads[f]; i >= 0; i = w.slab.At(i).next {
			w.slab.At(i).list = f
		}
		for w.heads[f] >= 0 {
			idx := w.heads[f]
			s := w.slab.At(idx)
			w.unlink(idx, s)
			w.visits++
			if int32(s.due-w.now) > 0 {
				w.link(idx, s, b) // a later revolution
				continue
			}
			fire(idx)
		}
	}
}

func (w *Wheel) link(idx int32, s *Session, list int32) {
	s.list = list
	s.prev = -1
	s.next = w.heads[list]
	if s.next >= 0 {
		w.slab.At(s.next).prev = idx
	}
	w.heads[list] = idx
}

func (w *Wheel) unlink(idx int32, s *Session) {
	if s.prev >= 0 {
		w.slab.At(s.prev).next = s.next
	} else {
		w.heads[s.list] = s.next
	}
	if s.next >= 0 {
		w.slab.At(s.next).prev = s.prev
	}
	s.next, s.prev, s.list = -1, -1, -1
}
