// Package mpjson transcodes between JSON and MessagePack for the
// wsd.msgpack subprotocol. wsd's data model is JSON's: the broker keeps a
// publication's data as JSON, and a MessagePack message is the same value
// in another encoding. So a MessagePack client's message is turned into
// JSON on the way in (and then read like a JSON client's), and a message
// for a MessagePack client is turned into MessagePack on the way out (a
// publication once for all such subscribers, by the engine).
//
// The mapping, chosen so that a value survives JSON → MessagePack → JSON
// and MessagePack → JSON → MessagePack unchanged:
//
//   - null, true, false ⇄ nil, true, false
//   - a JSON number without fraction or exponent that fits 64 bits ⇄ a
//     MessagePack integer (the smallest encoding); any other JSON number ⇄ a
//     float (float32 when that holds the value exactly, else float64). A
//     float written as JSON always has a '.' or an exponent, so it comes back
//     as a float: 5.0 stays 5.0, not 5.
//   - string ⇄ str (valid UTF-8 only, both ways: encoding/json's
//     json.Valid does not check it, ToMsgpack does), array ⇄ array,
//     object ⇄ map whose keys are all str.
//   - JSON -0 is an integer, and becomes MessagePack's integer 0 (no sign:
//     as JSON.stringify(-0) gives "0"); -0.0 stays a float.
//
// Refused from JSON (ToMsgpack, Check): strings that are not UTF-8 and
// numbers beyond float64's range (1e400), which MessagePack could carry
// only as an infinity, with no way back to JSON.
//
// Refused from a peer, because JSON has no way to say them: bin and ext
// values (timestamps included), non-string map keys, NaN and infinities,
// str that is not UTF-8, nesting deeper than MaxDepth, and anything after
// the first value.
//
// Neither direction allocates once its per-P scratch has grown (a
// sync.Pool), and neither trusts a length it reads: a container's count is
// only ever decremented while values are read, never used to size
// anything, so a header that claims 2^32 entries fails at the end of the
// input having cost nothing.
package mpjson

import (
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"sync"
	"unicode/utf8"
	"unsafe"

	"github.com/tinylib/msgp/msgp"
)

// MaxDepth bounds the nesting of arrays and maps, as encoding/json's
// json.Valid does (which is what JSON clients' data passes through), so
// that whatever one kind of client may publish the other can receive.
const MaxDepth = 10000

// Errors, worded for the client that sent the message.
var (
	ErrType     = errors.New("MessagePack bin and ext values cannot be carried (wsd's data is JSON): send str, numbers, arrays and maps")
	ErrKey      = errors.New("MessagePack map keys must be str")
	ErrFloat    = errors.New("NaN and infinities cannot be carried")
	ErrUTF8     = errors.New("a string is not valid UTF-8")
	ErrDepth    = errors.New("arrays and maps nested too deep")
	ErrMsgpack  = errors.New("not a complete MessagePack value")
	ErrTrailing = errors.New("bytes after the MessagePack value")
	ErrTooLarge = errors.New("the message as JSON is over the message size limit")
	ErrJSON     = errors.New("not valid JSON")
	ErrRange    = errors.New("a JSON number beyond float64's range")
)

// level is an open container while transcoding from MessagePack: how many
// values it still owes (a map owes two per entry) and how many it has given.
type level struct {
	left uint64
	n    uint64
	obj  bool
}

type scratch struct {
	stack  []level  // MessagePack → JSON: the open containers
	counts []uint32 // JSON → MessagePack: element count of each container, in order of opening
	open   []int32  // JSON → MessagePack: the open containers' indices in counts
	str    []byte   // a JSON string unescaped
}

var pool = sync.Pool{New: func() any { return new(scratch) }}

func getScratch() *scratch { return pool.Get().(*scratch) }

// putScratch keeps the scratch unless a large message left it outsized.
func putScratch(s *scratch) {
	if cap(s.stack) > 1024 {
		s.stack = nil
	}
	if cap(s.counts) > 4096 {
		s.counts = nil
	}
	if cap(s.open) > 1024 {
		s.open = nil
	}
	if cap(s.str) > 64<<10 {
		s.str = nil
	}
	pool.Put(s)
}

// ToJSON appends the MessagePack value src as JSON to dst. src must be one
// whole value and nothing else, and its JSON at most max bytes (JSON can be
// six times the size of MessagePack: a 1-byte nil is "null,", a control
// character "\u0001"; what a peer sends is bounded by the message limit,
// and so, with max, is what it turns into). On error dst is returned with
// whatever was appended so far: the caller discards it.
func ToJSON(dst, src []byte, max int) ([]byte, error) {
	start := len(dst)
	s := getScratch()
	defer putScratch(s)
	stack := s.stack[:0]
	defer func() { s.stack = stack[:0] }()
	b := src
	for {
		// A step appends at most 32 bytes (a string's size is checked
		// before it is written), so dst never holds more than max+32.
		if len(dst)-start > max {
			return dst, ErrTooLarge
		}
		key := false
		if n := len(stack); n > 0 {
			top := &stack[n-1]
			if top.left == 0 {
				if top.obj {
					dst = append(dst, '}')
				} else {
					dst = append(dst, ']')
				}
				stack = stack[:n-1]
				if len(stack) == 0 {
					break
				}
				continue
			}
			if top.n > 0 {
				if top.obj && top.n&1 == 1 {
					dst = append(dst, ':')
				} else {
					dst = append(dst, ',')
				}
			}
			key = top.obj && top.n&1 == 0
			top.left--
			top.n++
		}
		t := msgp.NextType(b)
		if key && t != msgp.StrType {
			if t == msgp.InvalidType {
				return dst, ErrMsgpack
			}
			return dst, ErrKey
		}
		var err error
		switch t {
		case msgp.StrType:
			var v []byte
			if v, b, err = msgp.ReadStringZC(b); err == nil {
				if !utf8.Valid(v) {
					return dst, ErrUTF8
				}
				if quotedLen(v) > max-(len(dst)-start) {
					return dst, ErrTooLarge
				}
				dst = AppendString(dst, v)
			}
		case msgp.MapType, msgp.ArrayType:
			if len(stack) >= MaxDepth {
				return dst, ErrDepth
			}
			var sz uint32
			if t == msgp.MapType {
				sz, b, err = msgp.ReadMapHeaderBytes(b)
				dst = append(dst, '{')
				stack = append(stack, level{left: 2 * uint64(sz), obj: true})
			} else {
				sz, b, err = msgp.ReadArrayHeaderBytes(b)
				dst = append(dst, '[')
				stack = append(stack, level{left: uint64(sz)})
			}
		case msgp.NilType:
			b, err = msgp.ReadNilBytes(b)
			dst = append(dst, "null"...)
		case msgp.BoolType:
			var v bool
			v, b, err = msgp.ReadBoolBytes(b)
			dst = strconv.AppendBool(dst, v)
		case msgp.IntType:
			var v int64
			v, b, err = msgp.ReadInt64Bytes(b)
			dst = strconv.AppendInt(dst, v, 10)
		case msgp.UintType:
			var v uint64
			v, b, err = msgp.ReadUint64Bytes(b)
			dst = strconv.AppendUint(dst, v, 10)
		case msgp.Float64Type:
			var v float64
			if v, b, err = msgp.ReadFloat64Bytes(b); err == nil {
				if dst, err = appendFloat(dst, v); err != nil {
					return dst, err
				}
			}
		case msgp.Float32Type:
			var v float32
			if v, b, err = msgp.ReadFloat32Bytes(b); err == nil {
				// Written as the float64 it is exactly, the value a
				// JavaScript client reading the MessagePack would see.
				if dst, err = appendFloat(dst, float64(v)); err != nil {
					return dst, err
				}
			}
		case msgp.InvalidType:
			return dst, ErrMsgpack
		default:
			return dst, ErrType
		}
		if err != nil {
			return dst, ErrMsgpack
		}
		if len(stack) == 0 {
			break
		}
	}
	if len(b) != 0 {
		return dst, ErrTrailing
	}
	if len(dst)-start > max {
		return dst, ErrTooLarge
	}
	return dst, nil
}

// appendFloat writes a float so that it reads back as a float: with a '.'
// or an exponent.
func appendFloat(dst []byte, f float64) ([]byte, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return dst, ErrFloat
	}
	start := len(dst)
	dst = strconv.AppendFloat(dst, f, 'g', -1, 64)
	for _, c := range dst[start:] {
		if c == '.' || c == 'e' {
			return dst, nil
		}
	}
	return append(dst, ".0"...), nil
}

// quotedLen is the length of AppendString's output for s.
func quotedLen(s []byte) int {
	n := len(s) + 2
	for _, c := range s {
		switch {
		case c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t':
			n++
		case c < 0x20:
			n += 5
		}
	}
	return n
}

// AppendString appends s (valid UTF-8) as a JSON string.
func AppendString(dst, s []byte) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i, c := range s {
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&15])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// ToMsgpack appends the JSON value src as MessagePack to dst. src is
// checked whole first (json.Valid): what it writes goes to other clients,
// so malformed input must not become malformed output. Then it reads src
// twice: once to count each array's and object's elements (MessagePack
// writes the count first), once to write.
func ToMsgpack(dst, src []byte) ([]byte, error) {
	if !json.Valid(src) {
		return dst, ErrJSON
	}
	// json.Valid does not check UTF-8, and a str is UTF-8 by definition
	// (ToJSON refuses one that is not): outside strings valid JSON is
	// ASCII, so checking the whole is checking every string.
	if !utf8.Valid(src) {
		return dst, ErrUTF8
	}
	s := getScratch()
	defer putScratch(s)
	if err := s.count(src); err != nil {
		return dst, err
	}
	next := 0 // the next container's index in s.counts
	for i := 0; i < len(src); {
		c := src[i]
		var err error
		switch {
		case c == '[' || c == '{':
			if c == '[' {
				dst = msgp.AppendArrayHeader(dst, s.counts[next])
			} else {
				dst = msgp.AppendMapHeader(dst, s.counts[next])
			}
			next++
			i++
		case c == '"':
			dst, i, err = s.appendString(dst, src, i)
		case c == 't':
			dst, i = msgp.AppendBool(dst, true), i+4
		case c == 'f':
			dst, i = msgp.AppendBool(dst, false), i+5
		case c == 'n':
			dst, i = msgp.AppendNil(dst), i+4
		case c == '-' || c >= '0' && c <= '9':
			dst, i, err = appendNumber(dst, src, i)
		default: // white space, ',', ':', ']', '}'
			i++
		}
		if err != nil {
			return dst, err
		}
	}
	return dst, nil
}

// Check reports whether ToMsgpack can carry src, which must be valid JSON
// (the caller has checked it): nil, or the error ToMsgpack would return.
// Valid JSON that MessagePack cannot carry is JSON that is not UTF-8
// (ErrUTF8: encoding/json does not check it) and a number beyond
// float64's range (ErrRange). It is for where data enters (a
// publication), so that what JSON clients may send every MessagePack
// client can receive: no allocation, and only numbers with an exponent or
// more than 20 characters are parsed (no shorter one can pass float64's
// range).
func Check(src []byte) error {
	if !utf8.Valid(src) {
		return ErrUTF8
	}
	for i := 0; i < len(src); i++ {
		switch c := src[i]; {
		case c == '"':
			j, err := stringEnd(src, i)
			if err != nil {
				return ErrJSON
			}
			i = j - 1
		case c == '-' || c >= '0' && c <= '9':
			j, exp := i, false
			for ; j < len(src); j++ {
				c := src[j]
				if c == 'e' || c == 'E' {
					exp = true
				} else if !(c >= '0' && c <= '9' || c == '-' || c == '+' || c == '.') {
					break
				}
			}
			if exp || j-i > 20 {
				num := unsafe.String(unsafe.SliceData(src[i:j]), j-i) // read, never kept
				if _, err := strconv.ParseFloat(num, 64); err != nil {
					return ErrRange
				}
			}
			i = j - 1
		}
	}
	return nil
}

// count fills s.counts with the number of elements of each container of
// src, in order of opening, and checks the brackets and nesting depth.
func (s *scratch) count(src []byte) error {
	s.counts, s.open = s.counts[:0], s.open[:0]
	fresh := false // the innermost container has no element yet
	for i := 0; i < len(src); i++ {
		c := src[i]
		if c == ' ' || c == '\t' || c == '\r' || c == '\n' {
			continue
		}
		if fresh && c != ']' && c != '}' {
			s.counts[s.open[len(s.open)-1]] = 1
			fresh = false
		}
		switch c {
		case '"':
			j, err := stringEnd(src, i)
			if err != nil {
				return err
			}
			i = j - 1
		case '[', '{':
			if len(s.open) >= MaxDepth {
				return ErrDepth
			}
			s.open = append(s.open, int32(len(s.counts)))
			s.counts = append(s.counts, 0)
			fresh = true
		case ']', '}':
			if len(s.open) == 0 {
				return ErrJSON
			}
			s.open = s.open[:len(s.open)-1]
			fresh = false
		case ',':
			if len(s.open) == 0 {
				return ErrJSON
			}
			s.counts[s.open[len(s.open)-1]]++
		}
	}
	if len(s.open) != 0 {
		return ErrJSON
	}
	return nil
}

// stringEnd returns the index just past the JSON string starting at src[i].
func stringEnd(src []byte, i int) (int, error) {
	for j := i + 1; j < len(src); j++ {
		switch src[j] {
		case '\\':
			j++
		case '"':
			return j + 1, nil
		}
	}
	return 0, ErrJSON
}

// appendString writes the JSON string at src[i] as a str and returns the
// index after it. A string without escapes is copied as it is.
func (s *scratch) appendString(dst, src []byte, i int) ([]byte, int, error) {
	end, err := stringEnd(src, i)
	if err != nil {
		return dst, 0, err
	}
	raw := src[i+1 : end-1]
	escaped := false
	for _, c := range raw {
		if c == '\\' {
			escaped = true
			break
		}
	}
	if !escaped {
		return msgp.AppendStringFromBytes(dst, raw), end, nil
	}
	u := s.str[:0]
	for j := 0; j < len(raw); j++ {
		c := raw[j]
		if c != '\\' {
			u = append(u, c)
			continue
		}
		j++
		if j == len(raw) {
			return dst, 0, ErrJSON
		}
		switch raw[j] {
		case '"', '\\', '/':
			u = append(u, raw[j])
		case 'b':
			u = append(u, '\b')
		case 'f':
			u = append(u, '\f')
		case 'n':
			u = append(u, '\n')
		case 'r':
			u = append(u, '\r')
		case 't':
			u = append(u, '\t')
		case 'u':
			r, ok := hex4(raw[j+1:])
			if !ok {
				return dst, 0, ErrJSON
			}
			j += 4
			if utf16IsSurrogate(r) {
				var r2 rune
				ok := false
				if j+6 < len(raw) && raw[j+1] == '\\' && raw[j+2] == 'u' {
					r2, ok = hex4(raw[j+3:])
				}
				if ok && r >= 0xd800 && r < 0xdc00 && r2 >= 0xdc00 && r2 < 0xe000 {
					r = (r-0xd800)<<10 | (r2 - 0xdc00) + 0x10000
					j += 6
				} else {
					r = utf8.RuneError // a lone surrogate, as encoding/json reads it
				}
			}
			u = utf8.AppendRune(u, r)
		default:
			return dst, 0, ErrJSON
		}
	}
	s.str = u
	return msgp.AppendStringFromBytes(dst, u), end, nil
}

func utf16IsSurrogate(r rune) bool { return r >= 0xd800 && r < 0xe000 }

func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// appendNumber writes the JSON number at src[i]: an integer when it has
// neither fraction nor exponent and fits 64 bits, else a float.
func appendNumber(dst, src []byte, i int) ([]byte, int, error) {
	j, isFloat := i, false
	for ; j < len(src); j++ {
		c := src[j]
		if c >= '0' && c <= '9' || c == '-' || c == '+' {
			continue
		}
		if c == '.' || c == 'e' || c == 'E' {
			isFloat = true
			continue
		}
		break
	}
	num := unsafe.String(unsafe.SliceData(src[i:j]), j-i) // read, never kept
	if !isFloat {
		if num[0] == '-' {
			if v, err := strconv.ParseInt(num, 10, 64); err == nil {
				return msgp.AppendInt64(dst, v), j, nil
			}
		} else if v, err := strconv.ParseUint(num, 10, 64); err == nil {
			return msgp.AppendUint64(dst, v), j, nil
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		// Valid JSON, but past float64's range (1e400): MessagePack could
		// carry it only as an infinity, which has no way back to JSON.
		return dst, 0, ErrRange
	}
	return msgp.AppendFloat(dst, f), j, nil
}
