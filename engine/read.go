package engine

import (
	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/session"
)

// readFrames decodes and dispatches every complete frame buffered for ss.
// Writes to ss meanwhile are batched in l.out: the caller must flush.
func (l *loop) readFrames(ss *session.Session) {
	l.cur = ss
	lim := frame.Limits{MaxMessage: l.srv.cfg.MaxMessageBytes, Compression: ss.Has(session.FlagDeflate)}
	for ss.State == session.Open || ss.State == session.Closing {
		if ss.Has(session.FlagDiscard) {
			_, _ = l.src.Discard(l.src.InboundBuffered())
			return
		}
		ev, err := ss.Decoder.Next(&l.src, lim)
		if err != nil {
			l.fail(ss, err)
			continue
		}
		switch ev.Kind {
		case frame.KindNone:
			return
		case frame.KindControl:
			l.control(ss, ev)
		case frame.KindMessage:
			if ss.State == session.Open {
				l.message(ss, ev)
			}
		}
	}
}

func (l *loop) control(ss *session.Session, ev frame.Event) {
	switch ev.Op {
	case frame.OpPing:
		if !ss.Has(session.FlagCloseSent) {
			// A pong answers the peer's own request: never dropped, and a
			// peer that floods pings without reading is closed by the mark.
			_ = l.sendFrame(ss, classReply, frame.OpPong, 0, ev.Payload)
		}
	case frame.OpClose:
		code, _, err := frame.ParseClose(ev.Payload)
		if err != nil {
			l.fail(ss, err)
			return
		}
		ss.Flags |= session.FlagCloseReceived | session.FlagDiscard
		if !ss.Has(session.FlagCloseSent) {
			// Echo the peer's code (RFC 6455 section 5.5.1).
			setReason(ss, ReasonPeer)
			l.sendClose(ss, code, "")
			ss.CloseCode = code
		}
	}
}

func (l *loop) message(ss *session.Session, ev frame.Event) {
	payload := ev.Payload
	if ev.Compressed {
		out, err := l.inflater.Inflate(l.zin[:0], payload, l.srv.cfg.MaxMessageBytes)
		l.zin = out
		if err == nil && ev.Op == frame.OpText && !frame.ValidUTF8(out) {
			err = frame.ErrInvalidUTF8
		}
		if err != nil {
			l.fail(ss, err)
			return
		}
		payload = out
	}
	l.metrics.messagesIn.inc()
	if l.takeMessage(ss, ev.Op, payload) {
		l.callMessage(ss, ev.Op, payload)
	}
	if cap(l.zin) > maxIdleBuffer {
		l.zin = nil
	}
}
