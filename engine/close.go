package engine

import (
	"net"

	"github.com/wsdproject/wsd/internal/gnet"
	"golang.org/x/sys/unix"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/session"
)

// fail ends a connection after a protocol violation: it sends a close frame
// with the violation's code, stops decoding, and closes once that frame is
// out.
func (l *loop) fail(ss *session.Session, err error) {
	fe, ok := err.(*frame.Error)
	if !ok {
		fe = &frame.Error{Code: frame.CloseInternalError, Reason: "internal error"}
	}
	l.debug("protocol error", ss, "code", int(fe.Code), "reason", fe.Reason)
	switch fe.Code {
	case frame.CloseMessageTooBig:
		setReason(ss, ReasonPolicy)
	case frame.CloseInternalError:
		setReason(ss, ReasonInternalError)
	default:
		setReason(ss, ReasonProtocolError)
	}
	if !ss.Has(session.FlagCloseSent) {
		l.sendClose(ss, fe.Code, fe.Reason)
	}
	ss.CloseCode = fe.Code
	ss.Flags |= session.FlagDiscard
}

// sendClose starts the close handshake from our side. Its deadline is the
// close timeout: by then TCP is closed whatever the peer does.
func (l *loop) sendClose(ss *session.Session, code frame.CloseCode, reason string) {
	if ss.Has(session.FlagCloseSent) {
		return
	}
	ss.Flags |= session.FlagCloseSent
	ss.State = session.Closing
	if ss.CloseCode == 0 {
		ss.CloseCode = code
	}
	l.tmp = frame.AppendClose(l.tmp[:0], code, reason)
	_ = l.sendRaw(ss, classControl, l.tmp)
	if ss.State == session.Gone {
		return
	}
	ss.Deadline = l.deadline(l.srv.cfg.ticks(l.srv.cfg.CloseTimeout))
	l.wheel.Schedule(ss.Self, ss.Deadline)
}

// finish takes a Closing session as far as it can go now: once the close
// handshake is done (or failed) and our bytes are out, the TCP connection
// is closed. After a clean handshake the peer has nothing more to send, so
// it is closed at once, and so is a slow consumer (FlagNoLinger); after a
// failure it is half-closed first and the peer's remaining bytes are
// drained, so that our close frame is not lost to a reset. The wheel
// enforces the close deadline.
func (l *loop) finish(c gnet.Conn, ss *session.Session) gnet.Action {
	if !ss.Has(session.FlagCloseReceived) && !ss.Has(session.FlagDiscard) {
		return gnet.None // waiting for the peer's close frame
	}
	if c.OutboundBuffered() > 0 {
		l.wheel.Schedule(ss.Self, l.wheel.Now()+1) // check again next tick
		return gnet.None
	}
	if ss.Has(session.FlagCloseReceived) || ss.Has(session.FlagNoLinger) {
		return gnet.Close
	}
	if !ss.Has(session.FlagShutdown) {
		ss.Flags |= session.FlagShutdown
		if err := unix.Shutdown(c.Fd(), unix.SHUT_WR); err != nil {
			return gnet.Close
		}
	}
	l.wheel.Schedule(ss.Self, ss.Deadline)
	return gnet.None
}

// connGone runs when gnet has closed a connection (gnet's OnClose). The
// session becomes Gone at once: nothing is written to it any more. Telling
// the handler and freeing the slot wait until the loop's current entry
// ends (settle), so that OnClose never runs inside another callback.
func (l *loop) connGone(c gnet.Conn, ss *session.Session, err error) {
	opened := ss.State == session.Open || ss.State == session.Closing
	if ss.State == session.Handshaking && !ss.Has(session.FlagCloseSent) {
		l.metrics.handshakeFailures[failAborted].inc()
	}
	if opened {
		setReason(ss, ReasonConnectionLost)
	}
	l.metrics.open.dec()
	l.releaseAdmission(c, ss)
	l.wheel.Cancel(ss.Self)
	ss.State = session.Gone
	if l.cur == ss {
		// Its batch goes with it: nothing of it may reach another connection.
		l.cur = nil
		l.out = l.out[:0]
	}
	l.gone = append(l.gone, goneConn{idx: ss.Self, opened: opened, addr: c.RemoteAddr(), err: err})
	if l.depth == 0 {
		l.enter()
		l.leave()
	}
}

// settle tells the handlers of the connections gone during the loop's
// entry and frees their slots. Handlers may close or write to other
// connections meanwhile; connections that go away because of that join
// the list and are settled in the same pass.
func (l *loop) settle() {
	for i := 0; i < len(l.gone); i++ {
		g := l.gone[i]
		ss := l.slab.At(g.idx)
		if g.opened {
			code := ss.CloseCode
			if code == 0 {
				code = frame.CloseAbnormal
			}
			reason := CloseReason(ss.Reason)
			l.metrics.closed.inc()
			l.metrics.closedByCode[closeBucket(code)].inc()
			l.metrics.closedByReason[reason].inc()
			l.debug("connection closed", ss, "code", int(code), "reason", reason.String(), "err", g.err)
			l.callClose(ss, CloseInfo{Code: code, Reason: reason})
		}
		l.removeMember(ss)
		l.setValue(g.idx, nil)
		ss.Decoder.Reset()
		l.slab.Free(g.idx)
	}
	clear(l.gone)
	l.gone = l.gone[:0]
}

// goneAddr returns the remote address of a gone connection being settled.
func (l *loop) goneAddr(idx int32) net.Addr {
	for i := range l.gone {
		if l.gone[i].idx == idx {
			return l.gone[i].addr
		}
	}
	return nil
}

// drain starts closing every connection of the loop for shutdown. Each
// gets a retry hint picked at random (see admission.drainReason), so that
// clients that honour it come back spread out rather than all at once.
func (l *loop) drain() {
	l.drainInbox() // what was fanned out before the drain goes out before the 1001
	l.slab.Each(func(_ int32, ss *session.Session) bool {
		switch ss.State {
		case session.Handshaking:
			ss.Flags |= session.FlagCloseSent
			l.metrics.handshakeFailures[failDraining].inc()
			l.metrics.bytesOut.add(uint64(len(respDraining)))
			_, _ = ss.Conn.Write(respDraining)
			_ = l.el.Close(ss.Conn)
		case session.Open:
			setReason(ss, ReasonShutdown)
			l.sendClose(ss, frame.CloseGoingAway, l.srv.admit.drainReason())
		}
		return true
	})
}
