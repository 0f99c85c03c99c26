package frame

import "unicode/utf8"

// UTF8 validates UTF-8 text that arrives in pieces: a piece may end inside
// a multi-byte sequence (a fragment or read boundary may split a code
// point). Write reports false as soon as the bytes seen cannot be the start
// of valid UTF-8, so a bad fragment fails fast. The zero value is ready.
type UTF8 struct {
	state uint8
}

const (
	utf8Accept = 0
	utf8Reject = 12
)

// utf8Class maps a byte to its character class and utf8Trans maps
// (state + class) to the next state: Bjoern Hoehrmann's UTF-8 DFA, which
// accepts exactly RFC 3629 UTF-8 (no overlongs, no surrogates, nothing past
// U+10FFFF), the same language as unicode/utf8.Valid.
var utf8Class = [256]uint8{
	0x80: 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
	0x90: 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9,
	0xa0: 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
	0xb0: 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
	0xc0: 8, 8, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
	0xd0: 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
	0xe0: 10, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 4, 3, 3,
	0xf0: 11, 6, 6, 6, 5, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8,
}

var utf8Trans = [108]uint8{
	0, 12, 24, 36, 60, 96, 84, 12, 12, 12, 48, 72,
	12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12,
	12, 0, 12, 12, 12, 12, 12, 0, 12, 0, 12, 12,
	12, 24, 12, 12, 12, 12, 12, 24, 12, 24, 12, 12,
	12, 12, 12, 12, 12, 12, 12, 24, 12, 12, 12, 12,
	12, 24, 12, 12, 12, 12, 12, 12, 12, 24, 12, 12,
	12, 12, 12, 12, 12, 12, 12, 36, 12, 36, 12, 12,
	12, 36, 12, 12, 12, 12, 12, 36, 12, 36, 12, 12,
	12, 36, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12,
}

// Reset forgets any partial sequence.
func (v *UTF8) Reset() { v.state = utf8Accept }

// Complete reports whether the text seen so far ends on a code point
// boundary (a message may only end there).
func (v *UTF8) Complete() bool { return v.state == utf8Accept }

// Write feeds p and reports whether the text so far is still a valid
// prefix of UTF-8 text.
func (v *UTF8) Write(p []byte) bool {
	if v.state == utf8Reject {
		return false
	}
	i := 0
	// Finish a sequence left open by the previous piece.
	for ; i < len(p) && v.state != utf8Accept; i++ {
		v.state = utf8Trans[v.state+utf8Class[p[i]]]
		if v.state == utf8Reject {
			return false
		}
	}
	if i == len(p) {
		return true
	}
	// The bulk goes through the standard library (fast ASCII path); only a
	// sequence cut off at the end of p goes through the automaton.
	tail := incompleteTail(p[i:])
	if !utf8.Valid(p[i : len(p)-tail]) {
		v.state = utf8Reject
		return false
	}
	for _, b := range p[len(p)-tail:] {
		v.state = utf8Trans[v.state+utf8Class[b]]
		if v.state == utf8Reject {
			return false
		}
	}
	return true
}

// incompleteTail returns how many bytes at the end of p form the start of a
// multi-byte sequence that p does not complete (0 to 3).
func incompleteTail(p []byte) int {
	n := len(p)
	for k := 1; k <= 3 && k <= n; k++ {
		b := p[n-k]
		if b < 0x80 {
			return 0
		}
		if b >= 0xc0 { // a lead byte: how long should its sequence be?
			need := 2
			switch {
			case b >= 0xf0:
				need = 4
			case b >= 0xe0:
				need = 3
			}
			if need > k {
				return k
			}
			return 0
		}
	}
	return 0
}

// ValidUTF8 reports whether p is complete, valid UTF-8.
func ValidUTF8(p []byte) bool { return utf8.Valid(p) }
