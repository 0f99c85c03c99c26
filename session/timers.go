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
	// SendPing: the session was idle for a ping interval; a ping is due and
	// the timer is set again to wait for an answer.
	SendPing
	// HeartbeatTimeout: MaxMissed pings went unanswered: drop the connection.
	HeartbeatTimeout
	// HandshakeTimeout: the upgrade request did not arrive in time.
	HandshakeTimeout
	// CloseDue: a Closing session's timer fired; the owner decides (its
	// decision depends on the connection's outbound buffer).
	CloseDue
)

// Touch records inbound activity at tick now: it postpones the next ping
// and forgives missed ones. It only stamps the session; the timer moves
// lazily when it fires.
func Touch(s *Session, now uint32) {
	s.LastSeen = now
	s.Missed = 0
}

// Opened starts the heartbeat of a session whose handshake just completed.
func (t *Timeouts) Opened(w *Wheel, idx int32) {
	s := w.slab.At(idx)
	s.State = Open
	s.LastSeen = w.now
	s.Missed = 0
	w.Schedule(idx, w.now+t.Ping)
}

// Expire decides what the fired timer of session idx means at the wheel's
// current tick, rescheduling it when the session lives on.
func (t *Timeouts) Expire(w *Wheel, idx int32) Verdict {
	s := w.slab.At(idx)
	switch s.State {
	case Handshaking:
		return HandshakeTimeout
	case Open:
		now := w.now
		if idle := now - s.LastSeen; idle < t.Ping {
			w.Schedule(idx, s.LastSeen+t.Ping)
			return Rescheduled
		}
		if s.Missed >= t.MaxMissed {
			return HeartbeatTimeout
		}
		s.Missed++
		w.Schedule(idx, now+t.Ping)
		return SendPing
	default:
		return CloseDue
	}
}
