package engine

import (
	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/session"
)

// Frames sent as they are.
var (
	pingFrame        = frame.AppendFrame(nil, frame.OpPing, 0, nil)
	pingTimeoutClose = frame.AppendClose(nil, frame.CloseGoingAway, "ping timeout")
)

// bigWrite is the payload size from which a frame is written with writev
// (header and payload as they are) instead of being copied into a batch.
const bigWrite = 16 << 10

// batchFlush is the size at which the batch of the connection being served
// is written out before its callback ends, so that the high-water mark
// always judges bytes the kernel has had a chance to take.
const batchFlush = 64 << 10

// writeClass tells the outbound path whose bytes a frame carries, which
// decides what happens when the connection is over its mark.
type writeClass uint8

const (
	// classReply: an answer to the connection's own request (a reply
	// written in its callback, a pong). Never dropped: over the mark, the
	// connection is closed with 1013 whatever the policy.
	classReply writeClass = iota
	// classPush: a broadcast or a write from another connection's
	// callback. Over the mark the slow-consumer policy applies.
	classPush
	// classControl: our own pings and close frames. Always queued: at most
	// one ping per interval and one close per connection.
	classControl
)

// admit decides whether a frame of n bytes may be queued for ss. Queued
// means gnet's outbound buffer (what the kernel did not take) plus, for
// the connection being served, the batch not yet written. A connection
// whose gnet buffer is empty may take any one frame, or a batch (the
// kernel gets it first), so what it holds is at most the larger of the
// mark and one frame or batch.
func (l *loop) admit(ss *session.Session, class writeClass, n int) error {
	if class == classControl {
		return nil
	}
	queued := ss.Conn.OutboundBuffered()
	if queued > 0 && ss == l.cur {
		queued += len(l.out)
	}
	if queued == 0 || queued <= l.srv.cfg.MaxOutboundBytes-n {
		if ss.Flags&session.FlagDropping != 0 && class == classPush {
			ss.Flags &^= session.FlagDropping
		}
		return nil
	}
	return l.overMark(ss, class, queued)
}

// overMark applies the slow-consumer policy to a frame that would take ss
// past its mark.
func (l *loop) overMark(ss *session.Session, class writeClass, queued int) error {
	if class == classPush && l.srv.cfg.SlowConsumer == SlowConsumerDrop {
		l.metrics.droppedFrames.inc()
		if !ss.Has(session.FlagDropping) {
			ss.Flags |= session.FlagDropping
			l.metrics.slowDrop.inc()
			l.debug("slow consumer: dropping frames while over the mark", ss, "queued", queued)
		}
		return ErrDropped
	}
	l.metrics.slowClose.inc()
	l.debug("slow consumer: closing", ss, "queued", queued, "reply", class == classReply)
	setReason(ss, ReasonSlowConsumer)
	// Read nothing more, and close TCP once the close frame is out (or at
	// the close deadline): the peer's answer is not awaited.
	ss.Flags |= session.FlagNoLinger | session.FlagDiscard
	l.sendClose(ss, frame.CloseTryAgainLater, "slow consumer")
	if ss.State == session.Closing {
		// Look every tick for the moment the close frame is out.
		l.wheel.Schedule(ss.Self, l.wheel.Now()+1)
	}
	return ErrSlowConsumer
}

// account counts n bytes queued for ss.
func (l *loop) account(ss *session.Session, n int) {
	ss.Sent += uint32(n)
	l.metrics.bytesOut.add(uint64(n))
}

// sendFrame queues one final frame carrying p for ss: batched if ss is the
// connection being served, written at once otherwise; large payloads go
// out with writev, after whatever is batched, so that order holds.
func (l *loop) sendFrame(ss *session.Session, class writeClass, op frame.OpCode, rsv byte, p []byte) error {
	n := frame.HeaderSize(len(p), false) + len(p)
	if len(p) >= bigWrite && ss == l.cur && len(l.out) > 0 {
		// Write the batch first: order holds, and the mark then judges what
		// the kernel did not take of it.
		l.flushOut(ss)
		if ss.State == session.Gone {
			return ErrClosed
		}
	}
	if err := l.admit(ss, class, n); err != nil {
		return err
	}
	l.account(ss, n)
	if len(p) < bigWrite {
		if ss == l.cur {
			l.out = frame.AppendFrame(l.out, op, rsv, p)
			if len(l.out) >= batchFlush {
				l.flushOut(ss)
			}
			return nil
		}
		l.tmp = frame.AppendFrame(l.tmp[:0], op, rsv, p)
		l.writeNow(ss, l.tmp)
		return nil
	}
	l.hdr = frame.AppendHeader(l.hdr[:0], frame.Header{Fin: true, Rsv: rsv, OpCode: op, Length: int64(len(p))})
	l.iov = append(l.iov[:0], l.hdr, p)
	_, _ = ss.Conn.Writev(l.iov)
	l.iov[0], l.iov[1] = nil, nil
	l.noteBacklog(ss)
	return nil
}

// sendRaw queues b, which is already one or more whole frames, for ss.
func (l *loop) sendRaw(ss *session.Session, class writeClass, b []byte) error {
	if len(b) >= bigWrite && ss == l.cur && len(l.out) > 0 {
		l.flushOut(ss) // as in sendFrame
		if ss.State == session.Gone {
			return ErrClosed
		}
	}
	if err := l.admit(ss, class, len(b)); err != nil {
		return err
	}
	l.account(ss, len(b))
	if ss == l.cur && len(b) < bigWrite {
		l.out = append(l.out, b...)
		if len(l.out) >= batchFlush {
			l.flushOut(ss)
		}
		return nil
	}
	l.writeNow(ss, b)
	return nil
}

// writeNow hands b to gnet, which writes what the socket takes and
// buffers the rest (or closes the connection on an error: that close is
// settled after the current entry).
func (l *loop) writeNow(ss *session.Session, b []byte) {
	_, _ = ss.Conn.Write(b)
	l.noteBacklog(ss)
}

// flushOut writes the batch of the connection being served.
func (l *loop) flushOut(ss *session.Session) {
	_, _ = ss.Conn.Write(l.out)
	l.out = l.out[:0]
	l.noteBacklog(ss)
}

// noteBacklog puts ss on the loop's backlog list if the kernel did not take
// all its bytes. The list is swept every tick for the outbound gauge.
func (l *loop) noteBacklog(ss *session.Session) {
	if ss.State == session.Gone || ss.Has(session.FlagBacklog) {
		return
	}
	if ss.Conn.OutboundBuffered() > 0 {
		ss.Flags |= session.FlagBacklog
		l.backlog = append(l.backlog, session.Handle{Index: ss.Self, Gen: ss.Gen()})
	}
}

// sweepBacklog drops the sessions whose outbound bytes are all gone from
// the backlog list and sums what the others hold.
func (l *loop) sweepBacklog() {
	var sum int64
	keep := l.backlog[:0]
	for _, h := range l.backlog {
		ss := l.slab.Get(h)
		if ss == nil || ss.State == session.Gone || !ss.Has(session.FlagBacklog) {
			continue
		}
		n := ss.Conn.OutboundBuffered()
		if n == 0 {
			ss.Flags &^= session.FlagBacklog
			continue
		}
		sum += int64(n)
		keep = append(keep, h)
	}
	l.backlog = keep
	l.metrics.outboundBytes.Store(sum)
	l.metrics.backlogged.Store(int64(len(keep)))
}

// writeMessage sends a data message to ss, compressed if ss negotiated
// permessage-deflate and the message is worth it: a reply if ss is the
// connection being served, a push otherwise.
func (l *loop) writeMessage(ss *session.Session, op frame.OpCode, p []byte) error {
	class := classPush
	if ss == l.cur {
		class = classReply
	}
	var rsv byte
	if ss.Has(session.FlagDeflate) && len(p) >= l.srv.cfg.CompressionMinBytes {
		z, err := l.deflater.Deflate(l.zout[:0], p, int(ss.Window))
		if err == nil {
			l.zout, p, rsv = z, z, frame.Rsv1
		}
	}
	err := l.sendFrame(ss, class, op, rsv, p)
	if err == nil {
		l.metrics.messagesOut.inc()
	}
	if cap(l.zout) > maxIdleBuffer {
		l.zout = nil
	}
	return err
}
