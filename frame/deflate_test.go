package frame

import (
	"bytes"
	stdflate "compress/flate"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestDeflateRoundTrip(t *testing.T) {
	z := NewDeflater(1)
	var f Inflater
	rng := rand.New(rand.NewPCG(5, 6))
	inputs := [][]byte{
		{},
		[]byte("a"),
		[]byte(strings.Repeat("Hello, compression! ", 500)),
	}
	random := make([]byte, 100000)
	for i := range random {
		random[i] = byte(rng.IntN(256))
	}
	inputs = append(inputs, random)
	for _, in := range inputs {
		for bits := 8; bits <= 15; bits++ {
			c, err := z.Deflate(nil, in, bits)
			if err != nil {
				t.Fatalf("Deflate(%d bytes, %d bits): %v", len(in), bits, err)
			}
			out, err := f.Inflate(nil, c, 1<<20)
			if err != nil || !bytes.Equal(out, in) {
				t.Fatalf("round trip of %d bytes at %d bits: %d bytes back, err %v", len(in), bits, len(out), err)
			}
			// Interoperates with the standard library's inflater.
			std, err := io.ReadAll(stdflate.NewReader(io.MultiReader(bytes.NewReader(c), bytes.NewReader(inflateTail))))
			if err != nil || !bytes.Equal(std, in) {
				t.Fatalf("compress/flate read %d bytes, err %v", len(std), err)
			}
		}
	}
	// Appends after what dst already holds.
	c, _ := z.Deflate([]byte("prefix"), []byte("payload"), 15)
	if !bytes.HasPrefix(c, []byte("prefix")) {
		t.Fatal("Deflate overwrote dst")
	}
	out, _ := f.Inflate([]byte("keep"), c[6:], 100)
	if string(out) != "keeppayload" {
		t.Fatalf("Inflate appended %q", out)
	}
}

// TestInflateFromStdlib checks messages compressed by another implementation
// (compress/flate, sync-flushed as RFC 7692 section 7.2.1 describes).
func TestInflateFromStdlib(t *testing.T) {
	var buf bytes.Buffer
	w, _ := stdflate.NewWriter(&buf, stdflate.BestCompression)
	want := []byte(strings.Repeat("interop ", 1000))
	w.Write(want)
	w.Flush()
	c := bytes.TrimSuffix(buf.Bytes(), deflateTail)
	var f Inflater
	got, err := f.Inflate(nil, c, 1<<20)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, err %v", len(got), err)
	}
}

func TestInflateLimit(t *testing.T) {
	z := NewDeflater(9)
	bomb, _ := z.Deflate(nil, make([]byte, 10<<20), 15) // 10 MiB of zeros: a few KiB compressed
	var f Inflater
	out, err := f.Inflate(nil, bomb, 1<<20)
	if err != ErrMessageTooBig {
		t.Fatalf("err = %v, want ErrMessageTooBig", err)
	}
	if len(out) > 1<<20+1 {
		t.Fatalf("inflated %d bytes past a 1 MiB limit", len(out))
	}
	exact := make([]byte, 1000)
	c, _ := z.Deflate(nil, exact, 15)
	if out, err := f.Inflate(nil, c, 1000); err != nil || len(out) != 1000 {
		t.Fatalf("message exactly at the limit: %d bytes, %v", len(out), err)
	}
	if _, err := f.Inflate(nil, c, 999); err != ErrMessageTooBig {
		t.Fatalf("one byte over: %v", err)
	}
}

func TestInflateCorrupt(t *testing.T) {
	var f Inflater
	if _, err := f.Inflate(nil, []byte{0xff, 0xff, 0xff, 0x00, 0x12}, 1<<20); err != ErrBadCompression {
		t.Fatalf("err = %v, want ErrBadCompression", err)
	}
	// The inflater recovers for the next message.
	c, _ := NewDeflater(1).Deflate(nil, []byte("fine"), 15)
	if out, err := f.Inflate(nil, c, 100); err != nil || string(out) != "fine" {
		t.Fatalf("after corrupt input: %q %v", out, err)
	}
}

func BenchmarkDeflate1K(b *testing.B) {
	z := NewDeflater(1)
	p := []byte(strings.Repeat(`{"type":"message","channel":"news","data":{"n":1}} `, 20))
	dst := make([]byte, 0, 4096)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		dst, _ = z.Deflate(dst[:0], p, 15)
	}
}

func BenchmarkInflate1K(b *testing.B) {
	p := []byte(strings.Repeat(`{"type":"message","channel":"news","data":{"n":1}} `, 20))
	c, _ := NewDeflater(1).Deflate(nil, p, 15)
	var f Inflater
	dst := make([]byte, 0, 4096)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		dst, _ = f.Inflate(dst[:0], c, 1<<20)
	}
}
