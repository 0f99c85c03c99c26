package frame

import "testing"

// BenchmarkEcho64 is the hot path of an echo server: parse and unmask a
// 64-byte masked text frame from the inbound buffer, validate it, and
// append the reply frame to the outbound buffer. It must not allocate.
func BenchmarkEcho64(b *testing.B) {
	payload := []byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	wire := AppendMaskedFrame(nil, true, OpText, 0, testMask, payload)
	var (
		d   Decoder
		src memSource
		out = make([]byte, 0, 256)
	)
	src.buf = make([]byte, 0, 256)
	b.SetBytes(int64(len(wire)))
	b.ReportAllocs()
	for b.Loop() {
		src.buf = append(src.buf[:0], wire...)
		src.off = 0
		ev, err := d.Next(&src, defaultLimits)
		if err != nil || ev.Kind != KindMessage {
			b.Fatal(ev, err)
		}
		out = AppendFrame(out[:0], ev.Op, 0, ev.Payload)
		if ev, _ := d.Next(&src, defaultLimits); ev.Kind != KindNone {
			b.Fatal("extra event")
		}
	}
}

// BenchmarkEcho64Fragmented is the same message in four fragments, which
// is assembled in a pooled buffer.
func BenchmarkEcho64Fragmented(b *testing.B) {
	payload := "0123456789abcdef"
	wire := cat(cf(false, OpText, payload), cf(false, OpContinuation, payload), cf(false, OpContinuation, payload), cf(true, OpContinuation, payload))
	var (
		d   Decoder
		src memSource
		out = make([]byte, 0, 256)
	)
	src.buf = make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		src.buf = append(src.buf[:0], wire...)
		src.off = 0
		// The cipher ran in place on the last iteration's copy; re-copying
		// restores the masked bytes.
		ev, err := d.Next(&src, defaultLimits)
		if err != nil || ev.Kind != KindMessage || len(ev.Payload) != 64 {
			b.Fatal(ev, err)
		}
		out = AppendFrame(out[:0], ev.Op, 0, ev.Payload)
		d.Next(&src, defaultLimits)
	}
}

func BenchmarkAppendFrame64(b *testing.B) {
	payload := make([]byte, 64)
	out := make([]byte, 0, 256)
	b.SetBytes(64)
	b.ReportAllocs()
	for b.Loop() {
		out = AppendFrame(out[:0], OpBinary, 0, payload)
	}
}

func BenchmarkAppendClose(b *testing.B) {
	out := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		out = AppendClose(out[:0], CloseGoingAway, "server shutting down")
	}
}

func BenchmarkParseHeader(b *testing.B) {
	wire := AppendMaskedFrame(nil, true, OpBinary, 0, testMask, make([]byte, 1000))
	b.ReportAllocs()
	for b.Loop() {
		if _, n, _ := ParseHeader(wire); n != 8 {
			b.Fatal(n)
		}
	}
}

// TestZeroAllocs enforces the "0 allocs" claims of the frame hot paths:
// echo (parse, unmask, validate, append the reply), a message assembled
// from fragments (pooled buffer), and writing a frame.
func TestZeroAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under the race detector; make test runs this without it")
	}
	payload := []byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	whole := AppendMaskedFrame(nil, true, OpText, 0, testMask, payload)
	p16 := string(payload[:16])
	fragmented := cat(cf(false, OpText, p16), cf(false, OpContinuation, p16), cf(false, OpContinuation, p16), cf(true, OpContinuation, p16))
	var (
		d   Decoder
		src memSource
		out = make([]byte, 0, 256)
	)
	src.buf = make([]byte, 0, 256)
	for name, wire := range map[string][]byte{"whole": whole, "fragmented": fragmented} {
		n := testing.AllocsPerRun(1000, func() {
			src.buf = append(src.buf[:0], wire...)
			src.off = 0
			ev, err := d.Next(&src, defaultLimits)
			if err != nil || ev.Kind != KindMessage || len(ev.Payload) != 64 {
				t.Fatal(ev, err)
			}
			out = AppendFrame(out[:0], ev.Op, 0, ev.Payload)
			d.Next(&src, defaultLimits)
		})
		if n != 0 {
			t.Errorf("echo of a %s 64-byte message: %v allocs", name, n)
		}
	}
	if n := testing.AllocsPerRun(1000, func() { out = AppendFrame(out[:0], OpBinary, 0, payload) }); n != 0 {
		t.Errorf("AppendFrame: %v allocs", n)
	}
}
