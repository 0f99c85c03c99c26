package frame

import (
	"math/rand/v2"
	"testing"
	"unicode/utf8"
)

// validPrefix is the reference for fail-fast validation: p can still become
// valid UTF-8 if some continuation completes its last sequence. Trying the
// ends of every continuation-byte range the grammar uses is enough to find
// a completion whenever one exists.
func validPrefix(p []byte) bool {
	if utf8.Valid(p) {
		return true
	}
	edges := []byte{0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf}
	var try func(q []byte, depth int) bool
	try = func(q []byte, depth int) bool {
		if utf8.Valid(q) {
			return true
		}
		if depth == 0 {
			return false
		}
		for _, e := range edges {
			if try(append(q[:len(q):len(q)], e), depth-1) {
				return true
			}
		}
		return false
	}
	return try(p, 3)
}

func checkUTF8Pieces(t *testing.T, p []byte, cuts []int) {
	t.Helper()
	var v UTF8
	prev := 0
	ok := true
	for _, c := range append(cuts, len(p)) {
		if c < prev {
			continue
		}
		ok = v.Write(p[prev:c])
		if want := validPrefix(p[:c]); ok != want {
			t.Fatalf("%x cut at %v: after %d bytes Write says %v, reference says %v", p, cuts, c, ok, want)
		}
		if !ok {
			return
		}
		prev = c
	}
	if got, want := ok && v.Complete(), utf8.Valid(p); got != want {
		t.Fatalf("%x cut at %v: complete=%v, utf8.Valid=%v", p, cuts, got, want)
	}
}

func TestUTF8Vectors(t *testing.T) {
	for _, s := range []string{
		"", "a", "Hello-µ@ßöäüàá-UTF-8!!", "κόσμε", "\U0010ffff", "\uffff", "\u0800", "\u07ff",
		"\xed\x9f\xbf", // U+D7FF, just below the surrogates
		"\xee\x80\x80", // U+E000, just above them
		// invalid:
		"\xed\xa0\x80",             // a surrogate
		"\xc0\xaf",                 // overlong /
		"\xe0\x80\xaf",             // overlong /
		"\xf0\x80\x80\xaf",         // overlong /
		"\xf4\x90\x80\x80",         // past U+10FFFF
		"\xf8\x88\x80\x80\x80",     // five-byte form
		"\x80",                     // lone continuation
		"\xce\xba\xe1\xbd\xb9\xcf", // truncated at the end
		"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80\x65\x64\x69\x74\x65\x64",
	} {
		p := []byte(s)
		checkUTF8Pieces(t, p, nil)
		for i := 0; i <= len(p); i++ {
			checkUTF8Pieces(t, p, []int{i})
			for j := i; j <= len(p); j++ {
				checkUTF8Pieces(t, p, []int{i, j})
			}
		}
	}
}

func TestUTF8Random(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	alphabet := []byte{'a', 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc2, 0xdf, 0xe0, 0xe1, 0xed, 0xef, 0xf0, 0xf1, 0xf4, 0xf5, 0xff}
	for range 20000 {
		n := rng.IntN(12)
		p := make([]byte, n)
		for i := range p {
			p[i] = alphabet[rng.IntN(len(alphabet))]
		}
		var cuts []int
		for range rng.IntN(4) {
			cuts = append(cuts, rng.IntN(n+1))
		}
		checkUTF8Pieces(t, p, cuts)
	}
	// Long valid text with multi-byte runs, cut anywhere: exercises the bulk path.
	text := []byte("ASCII prefix long enough for the word path; then κόσμε and 𝄞 and 中文 again ASCII")
	for i := 0; i <= len(text); i++ {
		checkUTF8Pieces(t, text, []int{i})
	}
}

func BenchmarkUTF8(b *testing.B) {
	p := []byte("Hello, world! This is a typical chat message with some ünïcödé in it: κόσμε 中文.")
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	var v UTF8
	for b.Loop() {
		v.Reset()
		if !v.Write(p) {
			b.Fatal("invalid")
		}
	}
}
