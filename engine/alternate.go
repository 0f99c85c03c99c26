package engine

import (
	"errors"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/session"
)

// Alternate is a second encoding of a route's outbound messages (wsd's
// MessagePack subprotocol beside its JSON one): the route's handler, its
// broadcasts and fan-outs write messages in the route's own encoding, and
// the engine re-encodes them for the connections that negotiated
// Subprotocol. A broadcast or Fanout frame is re-encoded at most once,
// by the first event loop that has a receiver for it, and the other loops
// write the same bytes (so a publication costs at most two encodings,
// whatever the number of subscribers). What connections send is not
// touched: the handler reads it (Conn.Subprotocol tells it which).
type Alternate struct {
	// Subprotocol selects the connections; it must be one of the route's
	// Subprotocols.
	Subprotocol string
	// Op is the opcode of the encoded messages (frame.OpBinary for a
	// binary encoding).
	Op frame.OpCode
	// Encode appends src, a message as the handler wrote it, in this
	// encoding to dst. It runs on event loops, concurrently on different
	// loops, and must not keep src or dst. A message it returns an error
	// for is not sent to the connections of this encoding (counted in
	// wsd_encode_failures_total; Conn.Send and Conn.WriteFrame return
	// ErrEncode).
	Encode func(dst, src []byte) ([]byte, error)
}

// ErrEncode: the route's Alternate could not encode the message for this
// connection; nothing was sent.
var ErrEncode = errors.New("engine: the message cannot be encoded in the connection's subprotocol")

// Send writes a message in the route's own encoding: as a text message, or
// encoded by the route's Alternate for a connection that negotiated it.
// Otherwise as Write.
func (c Conn) Send(p []byte) error {
	if err := c.usable(); err != nil {
		return err
	}
	l, ss := c.l, c.s
	r := &l.srv.routes[ss.Endpoint]
	if r.altProto == 0 || ss.Proto != r.altProto {
		return l.writeMessage(ss, frame.OpText, p)
	}
	x, err := r.alt.Encode(l.xcode[:0], p)
	l.xcode = x
	if err != nil {
		l.metrics.encodeFailures.inc()
		return ErrEncode
	}
	err = l.writeMessage(ss, r.alt.Op, x)
	if cap(l.xcode) > maxIdleBuffer {
		l.xcode = nil
	}
	return err
}

// frameFor returns the bytes of f for ss: its route's Alternate encoding
// if ss uses it, else the compressed frame if ss negotiated compression
// with a full window, else the plain one. nil: the Alternate could not
// encode f.
func (l *loop) frameFor(ss *session.Session, f *Frame) []byte {
	if r := &l.srv.routes[ss.Endpoint]; r.altProto != 0 && ss.Proto == r.altProto {
		return l.altFrame(ss, f, r)
	}
	if len(f.compressed) > 0 && ss.Has(session.FlagDeflate) && ss.Window == 15 {
		return f.compressed
	}
	return f.plain
}

// altFrame returns f in r's Alternate encoding, encoding it if no loop has
// yet. The encoded frame is kept in f for the other loops: after the
// first, a loop reads it with one atomic load, no lock. A frame delivered
// to connections of two routes with different Alternates (a Fanout across
// routes) keeps the first route's and encodes for the other each time.
func (l *loop) altFrame(ss *session.Session, f *Frame, r *route) []byte {
	want := int32(ss.Endpoint) + 1
	st := f.altState.Load()
	if st != want && st != -want {
		f.altMu.Lock()
		if st = f.altState.Load(); st == 0 {
			st = want
			if !l.encodeAlt(f, r) {
				st = -want
			}
			f.altState.Store(st)
		}
		f.altMu.Unlock()
		if st != want && st != -want {
			return l.encodeAltUnkept(f, r)
		}
	}
	if st < 0 {
		return nil
	}
	if len(f.altCompressed) > 0 && ss.Has(session.FlagDeflate) && ss.Window == 15 {
		return f.altCompressed
	}
	return f.alt
}

// encodeAlt fills f.alt (and f.altCompressed when compression is on) from
// f's payload. Under f.altMu.
func (l *loop) encodeAlt(f *Frame, r *route) bool {
	x, err := r.alt.Encode(l.xcode[:0], f.plain[f.hdr:])
	l.xcode = x
	if err != nil {
		l.metrics.encodeFailures.inc()
		return false
	}
	f.alt = frame.AppendFrame(f.alt[:0], r.alt.Op, 0, x)
	f.altCompressed = f.altCompressed[:0]
	if cfg := &l.srv.cfg; cfg.Compression && len(x) >= cfg.CompressionMinBytes {
		if c, err := l.deflater.Deflate(l.zout[:0], x, 15); err == nil {
			l.zout = c
			if len(c) < len(x) {
				f.altCompressed = frame.AppendFrame(f.altCompressed[:0], r.alt.Op, frame.Rsv1, c)
			}
		}
	}
	if cap(l.xcode) > maxIdleBuffer {
		l.xcode = nil
	}
	return true
}

// encodeAltUnkept encodes f for r into the loop's scratch (see altFrame).
func (l *loop) encodeAltUnkept(f *Frame, r *route) []byte {
	x, err := r.alt.Encode(l.xcode[:0], f.plain[f.hdr:])
	l.xcode = x
	if err != nil {
		l.metrics.encodeFailures.inc()
		return nil
	}
	l.xframe = frame.AppendFrame(l.xframe[:0], r.alt.Op, 0, x)
	return l.xframe
}
