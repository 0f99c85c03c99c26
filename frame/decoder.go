package frame

// Source is the inbound side of a connection as its event loop sees it:
// bytes already read and buffered, peeked in place and then discarded.
// gnet.Conn satisfies it. Peeked bytes stay valid until the next Discard.
type Source interface {
	Peek(n int) ([]byte, error)
	Discard(n int) (int, error)
	InboundBuffered() int
}

// initialReserve bounds the message buffer taken before payload arrives.
const initialReserve = 64 << 10

// Kind tells what Decoder.Next found.
type Kind uint8

const (
	// KindNone means the buffered bytes hold no complete event: wait for
	// more. It is not an error.
	KindNone Kind = iota
	// KindMessage is a complete data message (text or binary).
	KindMessage
	// KindControl is a ping, pong or close frame.
	KindControl
)

// Event is what Decoder.Next returns. Payload is unmasked and valid only
// until the next call to Next (it may point into the connection's inbound
// buffer: a message that arrived whole in one read is never copied).
type Event struct {
	Kind       Kind
	Op         OpCode
	Compressed bool // permessage-deflate: Payload is still compressed
	Payload    []byte
}

// Limits are the per-connection rules the decoder enforces.
type Limits struct {
	MaxMessage  int64 // largest message (compressed size) before close 1009
	Compression bool  // permessage-deflate negotiated: RSV1 allowed on a message's first frame
}

// Decoder turns the bytes of a client connection into events. It keeps
// only what a partial frame needs; the zero value is ready, and an idle
// connection's decoder holds no buffer. Not safe for concurrent use: it
// belongs to the event loop that owns the connection.
type Decoder struct {
	msg        []byte // assembled message so far; nil unless a message spans frames or reads
	remaining  int64  // payload bytes of the current frame not yet consumed
	pending    int32  // bytes to discard before parsing on: the last event's in-place payload
	mask       [4]byte
	maskPos    uint8  // offset of the next payload byte within the mask
	fin        bool   // FIN bit of the frame being consumed
	msgOp      OpCode // opcode of the message in progress, 0 when none
	compressed bool   // the message in progress has RSV1 set
	delivered  bool   // msg was handed out by the last event: recycle it
	utf8       UTF8
}

// InMessage reports whether a fragmented message is in progress.
func (d *Decoder) InMessage() bool { return d.msgOp != 0 }

// Reset releases the decoder's buffer and forgets all state.
func (d *Decoder) Reset() {
	putBuffer(d.msg)
	*d = Decoder{}
}

// Next consumes bytes from src and returns the next complete event, or an
// event of KindNone when src holds no complete event yet. A non-nil error
// is a protocol violation carrying the close code to fail the connection
// with (*Error). Call Next again until it returns KindNone: that call also
// releases the bytes of the previous event.
func (d *Decoder) Next(src Source, lim Limits) (Event, error) {
	if d.pending > 0 {
		_, _ = src.Discard(int(d.pending))
		d.pending = 0
	}
	if d.delivered {
		putBuffer(d.msg)
		d.msg = nil
		d.delivered = false
	}
	for {
		avail := src.InboundBuffered()
		if d.remaining > 0 {
			if avail == 0 {
				return Event{}, nil
			}
			n := avail
			if int64(n) > d.remaining {
				n = int(d.remaining)
			}
			p, err := src.Peek(n)
			if err != nil {
				return Event{}, nil
			}
			Cipher(p, d.mask, int(d.maskPos))
			d.maskPos = uint8((int(d.maskPos) + n) & 3)
			if d.msgOp == OpText && !d.compressed && !d.utf8.Write(p) {
				return Event{}, ErrInvalidUTF8
			}
			d.msg = d.grow(d.msg, n, lim.MaxMessage)
			d.msg = append(d.msg, p...)
			_, _ = src.Discard(n)
			d.remaining -= int64(n)
			if d.remaining > 0 {
				return Event{}, nil
			}
			if ev, err := d.endFrame(); err != nil || ev.Kind != KindNone {
				return ev, err
			}
			continue
		}

		if avail < 2 {
			return Event{}, nil
		}
		hb, err := src.Peek(min(avail, MaxHeaderSize))
		if err != nil {
			return Event{}, nil
		}
		h, hn, err := ParseHeader(hb)
		if err != nil {
			return Event{}, ErrBadLength
		}
		if hn == 0 {
			return Event{}, nil
		}
		if err := d.check(h, lim); err != nil {
			return Event{}, err
		}

		if h.OpCode.IsControl() {
			total := hn + int(h.Length)
			if avail < total {
				return Event{}, nil
			}
			p, err := src.Peek(total)
			if err != nil {
				return Event{}, nil
			}
			payload := p[hn:]
			Cipher(payload, h.Mask, 0)
			d.pending = int32(total)
			return Event{Kind: KindControl, Op: h.OpCode, Payload: payload}, nil
		}

		if h.OpCode != OpContinuation {
			d.msgOp = h.OpCode
			d.compressed = h.Rsv&Rsv1 != 0
			d.utf8.Reset()
			if h.Fin && int64(avail-hn) >= h.Length && h.Length < 1<<30 {
				// The whole message is in the buffer: unmask and deliver it in place.
				total := hn + int(h.Length)
				p, err := src.Peek(total)
				if err != nil {
					return Event{}, nil
				}
				payload := p[hn:]
				Cipher(payload, h.Mask, 0)
				ev := Event{Kind: KindMessage, Op: d.msgOp, Compressed: d.compressed, Payload: payload}
				d.msgOp, d.compressed = 0, false
				if ev.Op == OpText && !ev.Compressed && !ValidUTF8(payload) {
					return Event{}, ErrInvalidUTF8
				}
				d.pending = int32(total)
				return ev, nil
			}
		}

		// The frame is not all here, or belongs to a fragmented message:
		// consume its payload into the message buffer as it arrives.
		_, _ = src.Discard(hn)
		d.remaining = h.Length
		d.mask = h.Mask
		d.maskPos = 0
		d.fin = h.Fin
		if d.msg == nil && h.Length > 0 {
			// Reserve what a fragmented message likely needs, but never more
			// than initialReserve up front: a peer that announces a large
			// frame and sends it slowly only costs what it has sent.
			hint := h.Length
			if !h.Fin && hint < 4096 {
				hint = 4096
			}
			d.msg = d.grow(nil, int(min(hint, lim.MaxMessage, initialReserve)), lim.MaxMessage)
		}
		if d.remaining == 0 {
			if ev, err := d.endFrame(); err != nil || ev.Kind != KindNone {
				return ev, err
			}
		}
	}
}

// endFrame runs when the payload of a data frame has been consumed. It
// returns the message when that frame was the last one.
func (d *Decoder) endFrame() (Event, error) {
	if !d.fin {
		return Event{}, nil
	}
	if d.msgOp == OpText && !d.compressed && !d.utf8.Complete() {
		return Event{}, ErrInvalidUTF8
	}
	ev := Event{Kind: KindMessage, Op: d.msgOp, Compressed: d.compressed, Payload: d.msg}
	if ev.Payload == nil {
		ev.Payload = []byte{}
	}
	d.msgOp, d.compressed = 0, false
	d.delivered = true
	return ev, nil
}

// check applies the rules of RFC 6455 sections 5.1-5.5 (and RFC 7692 for
// RSV1) to a client frame header.
func (d *Decoder) check(h Header, lim Limits) error {
	if !h.Masked {
		return ErrUnmasked
	}
	rsv := h.Rsv
	if rsv&Rsv1 != 0 && lim.Compression && (h.OpCode == OpText || h.OpCode == OpBinary) {
		rsv &^= Rsv1
	}
	if rsv != 0 {
		return ErrReservedBits
	}
	switch h.OpCode {
	case OpContinuation:
		if d.msgOp == 0 {
			return ErrUnexpectedCont
		}
	case OpText, OpBinary:
		if d.msgOp != 0 {
			return ErrExpectedCont
		}
	case OpClose, OpPing, OpPong:
		if !h.Fin {
			return ErrFragmentedControl
		}
		if h.Length > MaxControlPayload {
			return ErrControlTooLong
		}
		return nil
	default:
		return ErrReservedOpcode
	}
	// h.Length is the peer's number (up to 2^63-1): compare it with what
	// is left of the allowance, never add it to anything.
	if h.Length > lim.MaxMessage-int64(len(d.msg)) {
		return ErrMessageTooBig
	}
	return nil
}

// grow makes room for n more bytes in msg without its capacity ever
// passing limit: the next pool class while that fits under the limit, an
// exact allocation of the limit after (not pooled). check has already
// ensured that len(msg)+n <= limit.
func (d *Decoder) grow(msg []byte, n int, limit int64) []byte {
	need := len(msg) + n
	if need <= cap(msg) {
		return msg
	}
	size := max(2*cap(msg), need)
	if c := poolClass(size); c <= maxPoolBits-minPoolBits && int64(1)<<(c+minPoolBits) <= limit {
		size = 1 << (c + minPoolBits)
	} else {
		size = int(min(int64(size), limit))
	}
	var b []byte
	if size&(size-1) == 0 && size >= 1<<minPoolBits {
		b = getBuffer(size)
	} else {
		b = make([]byte, 0, size)
	}
	b = append(b, msg...)
	putBuffer(msg)
	return b
}

// Held returns the bytes the decoder holds for a message in assembly: the
// capacity of its buffer. It never exceeds the MaxMessage it is given.
func (d *Decoder) Held() int { return cap(d.msg) }
