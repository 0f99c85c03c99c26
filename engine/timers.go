package engine

import (
	"github.com/wsdproject/wsd/internal/gnet"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/session"
)

// tick advances the timing wheel to the current time and refreshes the
// outbound gauges.
func (l *loop) tick() {
	l.wheel.Advance(l.srv.now(), l.fireFn)
	l.sweepBacklog()
	l.slabCap.Store(int64(l.slab.Cap()))
}

// fire acts on a session whose timer came due.
func (l *loop) fire(idx int32) {
	ss := l.slab.At(idx)
	c := ss.Conn
	var out session.Outbound
	if ss.State == session.Open {
		// How far the peer has read: the ping is out once the bytes written
		// since it cover everything still buffered.
		queued := c.OutboundBuffered()
		out.Backlog = queued > 0
		out.PingFlushed = ss.Sent-ss.PingMark >= uint32(queued)
	}
	if ss.State == session.Open && !ss.Has(session.FlagCloseSent) && l.idleFor(ss) {
		l.metrics.limitsFired[limitIdle].inc()
		l.debug("idle timeout: closing with 1000", ss)
		setReason(ss, ReasonIdle)
		l.sendClose(ss, frame.CloseNormal, "idle timeout")
		return
	}
	switch l.srv.timeouts.Expire(l.wheel, idx, out) {
	case session.Rescheduled:
	case session.SendPing:
		l.metrics.pings.inc()
		_ = l.sendRaw(ss, classControl, pingFrame)
		ss.PingMark = ss.Sent
	case session.HeartbeatTimeout:
		l.metrics.heartbeatTimeouts.inc()
		l.debug("heartbeat timeout", ss, "missed", ss.Missed)
		setReason(ss, ReasonPingTimeout)
		ss.CloseCode = frame.CloseGoingAway
		ss.Flags |= session.FlagCloseSent
		_ = l.sendRaw(ss, classControl, pingTimeoutClose)
		_ = l.el.Close(c)
	case session.HandshakeTimeout:
		ss.Flags |= session.FlagCloseSent
		l.metrics.handshakeFailures[failTimeout].inc()
		l.debug("handshake timeout", ss, "remote", c.RemoteAddr())
		l.metrics.bytesOut.add(uint64(len(respTimeout)))
		_, _ = c.Write(respTimeout)
		_ = l.el.Close(c)
	case session.Expired:
		if h, ok := l.srv.routes[ss.Endpoint].handler.(ExpiryHandler); ok {
			l.callExpire(h, ss)
		}
	case session.CloseDue:
		if int32(l.wheel.Now()-ss.Deadline) >= 0 {
			_ = l.el.Close(c)
			return
		}
		if l.finish(c, ss) == gnet.Close {
			_ = l.el.Close(c)
		}
	}
}
