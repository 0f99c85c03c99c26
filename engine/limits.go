package engine

import (
	"time"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/session"
)

// Per-connection limits keep their state in two words of the session (an
// idle connection pays 8 bytes for them): each is a bucket kept as a
// "theoretical arrival time" (GCRA) on a clock of its own.

// msgUnit is the clock of the message bucket and idle timeout: 1/16 ms, so
// that a uint32 spans 3.1 days (half of it, the reach of a signed
// difference, holds the longest idle timeout, 24 h) and a message rate of
// up to 1000/s is exact to 6%.
const msgUnit = 62500 // ns

// limitKind names a per-connection limit that fired, for metrics.
type limitKind uint8

const (
	limitMessageRate      limitKind = iota // a message refused (RATE_LIMIT_EXCEEDED)
	limitMessageRateClose                  // closed with 1008: the flood went on
	limitInboundBytes                      // closed with 1008: bytes per second
	limitIdle                              // closed with 1000: no data message for IdleTimeout
	numLimitKinds
)

var limitNames = [numLimitKinds]string{"message_rate", "message_rate_close", "inbound_bytes", "idle_timeout"}

// connLimits is Config's per-connection limits on the sessions' clocks.
type connLimits struct {
	msgOn, idleOn bool
	msgInterval   uint32 // msgUnits per message
	msgTolerance  uint32 // how far MsgTAT may run ahead of now: the burst
	msgDebt       uint32 // how much further refused messages may take it before 1008
	idle          uint32 // msgUnits

	byteOn        bool
	usPerByte     float64
	byteTolerance uint32 // µs
}

func newConnLimits(c *Config) connLimits {
	var cl connLimits
	if c.MessageRate > 0 {
		cl.msgOn = true
		cl.msgInterval = uint32(max(1, float64(time.Second)/c.MessageRate/msgUnit))
		cl.msgTolerance = uint32(c.MessageBurst-1) * cl.msgInterval
		cl.msgDebt = uint32(c.MaxRateStrikes) * cl.msgInterval
	}
	if c.IdleTimeout > 0 {
		cl.idleOn = true
		cl.idle = uint32(c.IdleTimeout / msgUnit)
	}
	if c.MaxInboundBytesPerSec > 0 {
		cl.byteOn = true
		cl.usPerByte = 1e6 / float64(c.MaxInboundBytesPerSec)
		burst := max(time.Second, time.Duration(float64(c.MaxMessageBytes)*cl.usPerByte)*time.Microsecond)
		cl.byteTolerance = uint32(burst / time.Microsecond)
	}
	return cl
}

// maxByteBurst bounds the byte bucket's burst (its clock is a uint32 of
// microseconds; half of it is the reach of a signed difference).
const maxByteBurst = 10 * time.Minute

func msgNow() uint32 { return uint32(monoNow() / msgUnit) }
func usNow() uint32  { return uint32(monoNow() / 1000) }

// startLimits sets a newly opened session's clocks.
func (l *loop) startLimits(ss *session.Session) {
	ss.MsgTAT = msgNow()
	ss.ByteTAT = usNow()
}

// takeMessage charges a data message to ss's bucket. It returns false when
// the message must not be handled (the caller has been told: a refusal
// went to the route's RateLimitHandler, or the connection is closing).
func (l *loop) takeMessage(ss *session.Session, op frame.OpCode, payload []byte) bool {
	lim := &l.srv.lim
	if !lim.msgOn && !lim.idleOn {
		return true
	}
	now := msgNow()
	if !lim.msgOn {
		ss.MsgTAT = now // dates the last message for the idle timeout
		return true
	}
	ahead := int32(ss.MsgTAT - now)
	if ahead < 0 || uint32(ahead) > lim.msgTolerance+lim.msgDebt+2*lim.msgInterval {
		// Behind now, or a difference that wrapped (silent for days).
		ss.MsgTAT, ahead = now, 0
	}
	ss.MsgTAT += lim.msgInterval // a refused message is charged too: that is the flood's debt
	if uint32(ahead) <= lim.msgTolerance {
		return true
	}
	if uint32(ahead) > lim.msgTolerance+lim.msgDebt {
		l.metrics.limitsFired[limitMessageRateClose].inc()
		l.srv.logLimited.warn(l.log, "message flood: closing with 1008", "conn", l.connID(ss), "client", l.clientAddr(ss, ss.Conn))
		l.strike(ss)
		l.policyClose(ss, ReasonRateLimit, "message rate exceeded")
		return false
	}
	l.metrics.limitsFired[limitMessageRate].inc()
	if h, ok := l.srv.routes[ss.Endpoint].handler.(RateLimitHandler); ok {
		l.callRateLimited(h, ss, op, payload)
	}
	return false
}

// chargeBytes charges n inbound bytes to ss's byte bucket; over it, the
// connection is closed with 1008.
func (l *loop) chargeBytes(ss *session.Session, n uint64) {
	lim := &l.srv.lim
	if !lim.byteOn || n == 0 || ss.State != session.Open {
		return
	}
	now := usNow()
	ahead := int32(ss.ByteTAT - now)
	if ahead < 0 || uint32(ahead) > 2*lim.byteTolerance+uint32(time.Second/time.Microsecond) {
		ss.ByteTAT, ahead = now, 0
	}
	cost := float64(n) * lim.usPerByte
	if float64(ahead)+cost > float64(lim.byteTolerance) {
		l.metrics.limitsFired[limitInboundBytes].inc()
		l.srv.logLimited.warn(l.log, "inbound byte flood: closing with 1008", "conn", l.connID(ss), "client", l.clientAddr(ss, ss.Conn), "bytes", n)
		l.strike(ss)
		l.policyClose(ss, ReasonRateLimit, "inbound byte rate exceeded")
		return
	}
	ss.ByteTAT += uint32(cost)
}

// idleFor reports whether an open session has sent no data message for
// the idle timeout (checked when its heartbeat timer fires: within a ping
// interval of the timeout, and up to a burst's worth of messages later
// when the message rate is limited too).
func (l *loop) idleFor(ss *session.Session) bool {
	lim := &l.srv.lim
	if !lim.idleOn {
		return false
	}
	last := ss.MsgTAT
	if lim.msgOn {
		last -= lim.msgInterval
	}
	since := int32(msgNow() - last)
	return since >= 0 && uint32(since) >= lim.idle
}

// policyClose closes ss with 1008 and drops what else it sent.
func (l *loop) policyClose(ss *session.Session, reason CloseReason, text string) {
	ss.Flags |= session.FlagDiscard
	setReason(ss, reason)
	l.sendClose(ss, frame.ClosePolicyViolation, text)
}
