package frame

import (
	"bytes"
	"testing"
)

// FuzzDecoder feeds arbitrary bytes to the decoder, whole and in chunks
// whose sizes come from the fuzzer too. It must never panic; after every
// call the decoder must hold at most the message limit in its own buffer
// and leave at most a partial header or control frame unconsumed (checked
// on the decoder itself by decodeChunks); and the outcome must not depend
// on how the bytes were split across reads.
func FuzzDecoder(f *testing.F) {
	for _, tc := range decoderCases {
		f.Add(tc.in, []byte{3, 7, 1}, tc.lim.Compression)
	}
	f.Add(cat(cf(false, OpText, "Hel"), cf(true, OpPing, ""), cf(true, OpContinuation, "lo")), []byte{1}, false)
	// A continuation announcing 2^63-5 bytes after a fragment: the sum of
	// the two once wrapped past the limit check.
	f.Add(cat(cf(false, OpBinary, "12345"), rawHeader(0x80, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfb), bytes.Repeat([]byte("x"), 5000)), []byte{9, 200}, false)
	f.Fuzz(func(t *testing.T, in []byte, splits []byte, compression bool) {
		lim := Limits{MaxMessage: 4096, Compression: compression}
		whole := decodeChunks(t, bytes.Clone(in), nil, lim)
		var chunks []int
		for _, s := range splits {
			chunks = append(chunks, int(s)%64+1)
		}
		split := decodeChunks(t, bytes.Clone(in), chunks, lim)
		if whole.String() != split.String() {
			t.Fatalf("outcome depends on read boundaries:\nwhole %s\nsplit %s (chunks %v)", whole, split, chunks)
		}
		for _, e := range whole.events {
			if len(e) > 3*4096+64 {
				t.Fatalf("event past the message limit: %d bytes rendered", len(e))
			}
		}
	})
}

// FuzzUTF8 checks the incremental validator against the standard library
// for arbitrary text cut at an arbitrary point.
func FuzzUTF8(f *testing.F) {
	f.Add([]byte("κόσμε"), uint8(3))
	f.Add([]byte("\xed\xa0\x80"), uint8(1))
	f.Fuzz(func(t *testing.T, p []byte, cut uint8) {
		c := int(cut)
		if c > len(p) {
			c = len(p)
		}
		checkUTF8Pieces(t, p, []int{c})
	})
}

// FuzzInflate feeds arbitrary compressed input to the inflater: it must
// fail cleanly or stay within the limit.
func FuzzInflate(f *testing.F) {
	c, _ := NewDeflater(1).Deflate(nil, []byte("hello hello hello"), 15)
	f.Add(c)
	f.Add([]byte{0x00})
	f.Fuzz(func(t *testing.T, in []byte) {
		var z Inflater
		out, err := z.Inflate(nil, in, 8192)
		if err == nil && len(out) > 8192 {
			t.Fatalf("inflated %d bytes past the limit", len(out))
		}
	})
}
