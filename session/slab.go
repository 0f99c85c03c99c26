package session

const (
	pageBits = 8
	pageSize = 1 << pageBits // sessions per page: ~30 KiB pages
	pageMask = pageSize - 1
)

// Slab stores the sessions of one event loop in fixed-size pages. A page is
// never moved or freed, so a *Session stays valid for the life of its slot,
// and memory grows by one page at a time rather than by doubling a slice.
// Free slots form an intrusive LIFO list. Owned by one event loop.
type Slab struct {
	pages []*[pageSize]Session
	free  int32 // head of the free list, -1 when empty
	slots int32 // slots ever handed out
	live  int
}

// NewSlab returns an empty slab.
func NewSlab() *Slab { return &Slab{free: -1} }

// Len returns the number of live sessions.
func (s *Slab) Len() int { return s.live }

// Cap returns the number of slots allocated (live or free).
func (s *Slab) Cap() int { return len(s.pages) * pageSize }

// Alloc takes a free slot and returns its handle and session, which is
// zeroed but for its generation, with State Handshaking.
func (s *Slab) Alloc() (Handle, *Session) {
	idx := s.free
	if idx >= 0 {
		s.free = s.At(idx).next
	} else {
		if int(s.slots) == len(s.pages)*pageSize {
			s.pages = append(s.pages, new([pageSize]Session))
		}
		idx = s.slots
		s.slots++
	}
	ss := s.At(idx)
	gen := ss.gen
	*ss = Session{gen: gen, next: -1, prev: -1, list: -1, Self: idx, State: Handshaking, Member: -1}
	s.live++
	return Handle{Index: idx, Gen: gen}, ss
}

// Free releases the slot of idx. The caller must have removed it from the
// wheel and released its decoder. Handles to it stop resolving.
func (s *Slab) Free(idx int32) {
	ss := s.At(idx)
	if ss.State == Free {
		return
	}
	if ss.list >= 0 {
		panic("session: freeing a session whose timer is still set")
	}
	gen := ss.gen + 1
	*ss = Session{gen: gen, next: s.free, prev: -1, list: -1}
	s.free = idx
	s.live--
}

// At returns the session in slot idx, live or not.
func (s *Slab) At(idx int32) *Session {
	return &s.pages[idx>>pageBits][idx&pageMask]
}

// Get returns the session h refers to, or nil if it has been freed since.
func (s *Slab) Get(h Handle) *Session {
	if h.Index < 0 || h.Index >= s.slots {
		return nil
	}
	ss := s.At(h.Index)
	if ss.gen != h.Gen || ss.State == Free {
		return nil
	}
	return ss
}

// HandleOf returns the handle of the live session in slot idx.
func (s *Slab) HandleOf(idx int32) Handle {
	return Handle{Index: idx, Gen: s.At(idx).gen}
}

// Each calls f for every live session in slot order until f returns false.
// f may free sessions (its own or others); it sees each slot at most once.
func (s *Slab) Each(f func(idx int32, ss *Session) bool) {
	for p, page := range s.pages {
		base := int32(p << pageBits)
		for i := range page {
			idx := base + int32(i)
			if idx >= s.slots {
				return
			}
			if page[i].State != Free && !f(idx, &page[i]) {
				return
			}
		}
	}
}
