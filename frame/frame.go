// Package frame is the RFC 6455 codec of wsd: it parses frame headers from
// bytes that are already buffered (too few bytes means "wait", never an
// error), unmasks payloads in place, assembles fragmented messages under a
// size cap with incremental UTF-8 validation, validates close frames, and
// appends frames to a caller's buffer without allocating.
//
// It builds on the value types of github.com/gobwas/ws (Header, OpCode,
// StatusCode) and on its masking cipher, but never on its blocking readers:
// a reader that blocks on a partial frame would freeze a whole event loop.
package frame

import (
	"encoding/binary"
	"errors"

	"github.com/gobwas/ws"
)

// Header is a WebSocket frame header (gobwas/ws's plain value type).
type Header = ws.Header

// OpCode is a frame opcode.
type OpCode = ws.OpCode

// Opcodes defined by RFC 6455 section 5.2.
const (
	OpContinuation = ws.OpContinuation
	OpText         = ws.OpText
	OpBinary       = ws.OpBinary
	OpClose        = ws.OpClose
	OpPing         = ws.OpPing
	OpPong         = ws.OpPong
)

// Rsv1 is the RSV1 bit as stored in Header.Rsv; permessage-deflate uses it
// to mark a compressed message (RFC 7692 section 6).
const Rsv1 byte = 0x04

// MaxHeaderSize is the largest frame header: 2 bytes, 8 of extended
// length and 4 of mask.
const MaxHeaderSize = 14

// MaxControlPayload is the largest payload a control frame may carry.
const MaxControlPayload = 125

// ErrNonMinimalLength reports a length not encoded in the fewest bytes,
// which RFC 6455 section 5.2 forbids.
var ErrNonMinimalLength = errors.New("frame: payload length not minimally encoded")

// ErrLengthOverflow reports a 64-bit length with its most significant bit set.
var ErrLengthOverflow = errors.New("frame: payload length has the most significant bit set")

// ParseHeader decodes the frame header at the start of b. It returns the
// header and its encoded size n. When b holds too few bytes for the whole
// header it returns n == 0 and a nil error: the caller waits for more bytes.
// Errors are violations of the length encoding rules only; the semantic
// checks (masking, opcodes, control frame rules) are the Decoder's.
func ParseHeader(b []byte) (h Header, n int, err error) {
	if len(b) < 2 {
		return h, 0, nil
	}
	b0, b1 := b[0], b[1]
	h.Fin = b0&0x80 != 0
	h.Rsv = (b0 & 0x70) >> 4
	h.OpCode = OpCode(b0 & 0x0f)
	h.Masked = b1&0x80 != 0

	n = 2
	switch l := b1 & 0x7f; l {
	case 126:
		if len(b) < 4 {
			return h, 0, nil
		}
		h.Length = int64(binary.BigEndian.Uint16(b[2:4]))
		if h.Length < 126 {
			return h, 0, ErrNonMinimalLength
		}
		n = 4
	case 127:
		if len(b) < 10 {
			return h, 0, nil
		}
		u := binary.BigEndian.Uint64(b[2:10])
		if u>>63 != 0 {
			return h, 0, ErrLengthOverflow
		}
		if u <= 0xffff {
			return h, 0, ErrNonMinimalLength
		}
		h.Length = int64(u)
		n = 10
	default:
		h.Length = int64(l)
	}
	if h.Masked {
		if len(b) < n+4 {
			return h, 0, nil
		}
		copy(h.Mask[:], b[n:n+4])
		n += 4
	}
	return h, n, nil
}

// HeaderSize returns the encoded size of a header with the given payload
// length, masked or not.
func HeaderSize(length int, masked bool) int {
	n := 2
	switch {
	case length > 0xffff:
		n = 10
	case length > 125:
		n = 4
	}
	if masked {
		n += 4
	}
	return n
}

// AppendHeader appends the encoding of h to dst.
func AppendHeader(dst []byte, h Header) []byte {
	b0 := byte(h.OpCode) | h.Rsv<<4
	if h.Fin {
		b0 |= 0x80
	}
	var b1 byte
	if h.Masked {
		b1 = 0x80
	}
	switch l := h.Length; {
	case l > 0xffff:
		dst = append(dst, b0, b1|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(l))
	case l > 125:
		dst = append(dst, b0, b1|126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(l))
	default:
		dst = append(dst, b0, b1|byte(l))
	}
	if h.Masked {
		dst = append(dst, h.Mask[:]...)
	}
	return dst
}

// AppendFrame appends one unmasked, final frame (the form a server sends)
// carrying payload to dst. rsv is 0 or Rsv1 for a compressed message.
func AppendFrame(dst []byte, op OpCode, rsv byte, payload []byte) []byte {
	dst = AppendHeader(dst, Header{Fin: true, Rsv: rsv, OpCode: op, Length: int64(len(payload))})
	return append(dst, payload...)
}

// AppendMaskedFrame appends one masked frame (the form a client sends) to
// dst, masking a copy of payload with mask; payload itself is not changed.
func AppendMaskedFrame(dst []byte, fin bool, op OpCode, rsv byte, mask [4]byte, payload []byte) []byte {
	dst = AppendHeader(dst, Header{Fin: fin, Rsv: rsv, OpCode: op, Masked: true, Mask: mask, Length: int64(len(payload))})
	start := len(dst)
	dst = append(dst, payload...)
	Cipher(dst[start:], mask, 0)
	return dst
}

// Cipher applies (or removes: the operation is its own inverse) the mask to
// payload in place; offset is the position of payload[0] within the frame's
// payload, so a payload can be unmasked in pieces as it arrives.
func Cipher(payload []byte, mask [4]byte, offset int) {
	ws.Cipher(payload, mask, offset)
}
