package session

// Timeouts are the heartbeat and handshake rules, in wheel ticks.
type Timeouts struct {
	Handshake uint32 // from accept to a complete upgrade request
	Ping      uint32 // idle time before a ping; also the wait for its answer
	MaxMissed uint8  // pings left unanswered before the connection is dropped
}

// Verdict is what a fired timer asks the owner of a session to do.
type Verdict uint8

const (
	// Rescheduled: the session was active; its timer is set again.
	Rescheduled Verdict = iota
	// SendPing: a ping is due (the session was idle for a ping interval,
	// or has output the peer is not reading, or its last ping is still
	// unanswered); the timer is set again to wait for an answer.
	SendPing
	// HeartbeatTimeout: MaxMissed pings went unanswered: drop the connection.
	HeartbeatTimeout
	// HandshakeTimeout: the upgrade request did not arrive in time.
	HandshakeTimeout
	// CloseDue: a Closing session's timer fired; the owner decides (its
	// decision depends on the connection's outbound buffer).
	CloseDue
	// Expired: an Open session's Expiry has come (and is cleared). The
	// heartbeat goes on; the owner closes the session or sets a new expiry.
	Expired
)

// Outbound is what the owner tells Expire about a connection's outbound
// side: whether bytes are waiting in user space for the peer to read, and
// whether the last heartbeat ping has left the server.
type Outbound struct {
	Backlog     bool
	PingFlushed bool
}

// Touch records inbound activity at tick now. It only stamps the session;
// the timer moves lazily when it fires, which decides whether the activity
// answers an outstanding ping.
func Touch(s *Session, now uint32) {
	s.LastSeen = now
}

// Opened starts the heartbeat of a session whose handshake just completed.
func (t *Timeouts) Opened(w *Wheel, idx int32) {
	s := w.slab.At(idx)
	s.State = Open
	s.LastSeen = w.now
	s.Missed = 0
	s.Deadline = 0
	w.Schedule(idx, w.now+t.Ping+1)
}

// SetExpiry sets (or with at == 0 clears) the tick at which an Open
// session expires, and brings its timer forward if the expiry comes first.
// An expiry at or before the current tick fires at the next one.
func (t *Timeouts) SetExpiry(w *Wheel, idx int32, at uint32) {
	s := w.slab.At(idx)
	if at == 0 {
		s.Deadline = 0
		return
	}
	if int32(at-w.now) <= 0 {
		at = w.now + 1
	}
	s.Deadline = at
	if due, ok := w.Scheduled(idx); !ok || int32(at-due) < 0 {
		w.Schedule(idx, at)
	}
}

// schedule sets an Open session's timer for due, or for its expiry if
// that comes first.
func schedule(w *Wheel, s *Session, idx int32, due uint32) {
	if s.Deadline != 0 && int32(s.Deadline-due) < 0 {
		due = s.Deadline
	}
	w.Schedule(idx, due)
}

// Expire decides what the fired timer of session idx means at the wheel's
// current tick, rescheduling it when the session lives on.
//
// Heartbeat rules for an open session: a ping goes out when the peer has
// been silent for more than a ping interval, or when bytes wait for it to
// read (a peer that writes but never reads is alive only on paper). A ping
// counts as answered only if it has left the server (a ping stuck behind
// unread bytes cannot be seen, so the peer's own traffic proves nothing)
// and the peer has sent anything since it went out. MaxMissed unanswered
// pings in a row drop the connection. Intervals are measured in whole ticks
// plus one, so a ping or a timeout never comes early.
func (t *Timeouts) Expire(w *Wheel, idx int32, out Outbound) Verdict {
	s := w.slab.At(idx)
	switch s.State {
	case Handshaking:
		return HandshakeTimeout
	case Open:
		now := w.now
		if s.Deadline != 0 && int32(now-s.Deadline) >= 0 {
			// The expiry may have cut a heartbeat wait short; resume it,
			// never early (a ping's wait restarts in full).
			s.Deadline = 0
			if s.Missed > 0 {
				w.Schedule(idx, now+t.Ping+1)
			} else {
				w.Schedule(idx, s.LastSeen+t.Ping+1)
			}
			return Expired
		}
		if s.Missed > 0 {
			// The last ping went out when this timer was set, Ping+1 ticks ago.
			sent := now - t.Ping - 1
			if !out.PingFlushed || int32(s.LastSeen-sent) < 0 {
				if s.Missed >= t.MaxMissed {
					return HeartbeatTimeout
				}
				s.Missed++
				schedule(w, s, idx, now+t.Ping+1)
				return SendPing
			}
			s.Missed = 0
		}
		if !out.Backlog && now-s.LastSeen <= t.Ping {
			schedule(w, s, idx, s.LastSeen+t.Ping+1)
			return Rescheduled
		}
		s.Missed = 1
		schedule(w, s, idx, now+t.Ping+1)
		return SendPing
	default:
		return CloseDue
	}
}
