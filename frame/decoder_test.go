package frame

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

var testMask = [4]byte{0x37, 0xfa, 0x21, 0x3d}

// cf builds one masked client frame.
func cf(fin bool, op OpCode, payload string) []byte {
	return AppendMaskedFrame(nil, fin, op, 0, testMask, []byte(payload))
}

// cfRsv builds one masked client frame with reserved bits.
func cfRsv(fin bool, op OpCode, rsv byte, payload string) []byte {
	return AppendMaskedFrame(nil, fin, op, rsv, testMask, []byte(payload))
}

func cat(frames ...[]byte) []byte { return bytes.Join(frames, nil) }

// rawHeader builds a header by hand, for encodings AppendHeader never makes.
func rawHeader(b0, b1 byte, ext ...byte) []byte {
	out := append([]byte{b0, b1}, ext...)
	return append(out, testMask[:]...)
}

// result renders what a decoder made of the input, for comparison.
type result struct {
	events []string
	err    *Error
}

func (r result) String() string {
	parts := r.events
	if r.err != nil {
		parts = append(parts[:len(parts):len(parts)], fmt.Sprintf("!%d", r.err.Code))
	}
	return strings.Join(parts, " ")
}

func describe(ev Event) string {
	var op string
	switch ev.Op {
	case OpText:
		op = "text"
	case OpBinary:
		op = "binary"
	case OpPing:
		op = "ping"
	case OpPong:
		op = "pong"
	case OpClose:
		op = "close"
	default:
		op = fmt.Sprintf("op%d", ev.Op)
	}
	if ev.Compressed {
		op += "+z"
	}
	return fmt.Sprintf("%s(%q)", op, ev.Payload)
}

// decodeChunks feeds input to a fresh decoder in the given chunk sizes and
// collects every event until the input is used up or an error ends it.
func decodeChunks(t testing.TB, input []byte, chunks []int, lim Limits) result {
	t.Helper()
	var (
		d   Decoder
		src memSource
		r   result
	)
	defer d.Reset()
	feed := func(n int) bool {
		src.feed(input[:n])
		input = input[n:]
		for {
			ev, err := d.Next(&src, lim)
			checkHeld(t, &d, &src, lim, ev.Kind == KindNone && err == nil)
			if err != nil {
				e, ok := err.(*Error)
				if !ok {
					t.Fatalf("decoder returned %T %v, want *Error", err, err)
				}
				r.err = e
				return false
			}
			if ev.Kind == KindNone {
				return true
			}
			r.events = append(r.events, describe(ev))
		}
	}
	for _, n := range chunks {
		if n > len(input) {
			n = len(input)
		}
		if !feed(n) {
			return r
		}
	}
	if len(input) > 0 {
		feed(len(input))
	}
	return r
}

var defaultLimits = Limits{MaxMessage: 1 << 20}

// maxLeftover is the most a decoder leaves in the connection's buffer when
// it waits for more bytes: a partial header, or a partial control frame
// (a header of at most 6 bytes and 125 of payload).
const maxLeftover = 6 + MaxControlPayload

// checkHeld asserts the memory property every input must respect: the
// decoder's own buffer never exceeds the message limit, and when it waits
// for more bytes it has consumed all but a partial header or control frame.
// Together: at most MaxMessage + one header of a peer's bytes are held.
func checkHeld(t testing.TB, d *Decoder, src *memSource, lim Limits, waiting bool) {
	t.Helper()
	if int64(d.Held()) > lim.MaxMessage {
		t.Fatalf("decoder holds %d bytes, limit %d", d.Held(), lim.MaxMessage)
	}
	if waiting && src.InboundBuffered() > maxLeftover {
		t.Fatalf("decoder waits with %d bytes unconsumed (at most %d may be left)", src.InboundBuffered(), maxLeftover)
	}
}

// The table follows RFC 6455 sections 5 (framing) and 7 (closing; the close
// payload itself is checked by ParseClose, see close_test.go).
var decoderCases = []struct {
	name  string
	in    []byte
	lim   Limits
	want  string
	check func(t *testing.T, in []byte)
}{
	// 5.2 base framing, 5.6 data frames
	{name: "empty text", in: cf(true, OpText, ""), want: `text("")`},
	{name: "text", in: cf(true, OpText, "Hello"), want: `text("Hello")`},
	{name: "binary", in: cf(true, OpBinary, "\x00\xff\x10"), want: `binary("\x00\xff\x10")`},
	{name: "16-bit length", in: cf(true, OpBinary, strings.Repeat("a", 126)), want: `binary("` + strings.Repeat("a", 126) + `")`},
	{name: "64-bit length", in: cf(true, OpText, strings.Repeat("b", 65536)), want: `text("` + strings.Repeat("b", 65536) + `")`},
	{name: "two messages", in: cat(cf(true, OpText, "a"), cf(true, OpBinary, "b")), want: `text("a") binary("b")`},
	// 5.1 masking: a server MUST close on an unmasked frame
	{name: "unmasked", in: AppendFrame(nil, OpText, 0, []byte("x")), want: `!1002`},
	// 5.2 reserved bits without a negotiated extension
	{name: "rsv1 without extension", in: cfRsv(true, OpText, 0x4, "x"), want: `!1002`},
	{name: "rsv2", in: cfRsv(true, OpText, 0x2, "x"), want: `!1002`},
	{name: "rsv3", in: cfRsv(true, OpBinary, 0x1, "x"), want: `!1002`},
	{name: "rsv1 on ping even with extension", in: cfRsv(true, OpPing, 0x4, ""), lim: Limits{MaxMessage: 1 << 20, Compression: true}, want: `!1002`},
	{name: "rsv1 on continuation", in: cat(cfRsv(false, OpText, 0x4, "a"), cfRsv(true, OpContinuation, 0x4, "b")), lim: Limits{MaxMessage: 1 << 20, Compression: true}, want: `!1002`},
	{name: "rsv1 with extension", in: cfRsv(true, OpText, 0x4, "zz"), lim: Limits{MaxMessage: 1 << 20, Compression: true}, want: `text+z("zz")`},
	// 5.2 reserved opcodes
	{name: "opcode 3", in: cf(true, 3, ""), want: `!1002`},
	{name: "opcode 7", in: cf(true, 7, "x"), want: `!1002`},
	{name: "opcode 11", in: cf(true, 11, ""), want: `!1002`},
	{name: "opcode 15", in: cf(true, 15, "x"), want: `!1002`},
	// 5.2 length encoding
	{name: "non-minimal 16-bit", in: rawHeader(0x81, 0x80|126, 0, 5), want: `!1002`},
	{name: "non-minimal 64-bit", in: rawHeader(0x81, 0x80|127, 0, 0, 0, 0, 0, 0, 0xff, 0xff), want: `!1002`},
	{name: "64-bit MSB set", in: rawHeader(0x82, 0x80|127, 0x80, 0, 0, 0, 0, 0, 0, 0), want: `!1002`},
	// 5.4 fragmentation
	{name: "fragmented text", in: cat(cf(false, OpText, "Hel"), cf(false, OpContinuation, "lo, "), cf(true, OpContinuation, "world")), want: `text("Hello, world")`},
	{name: "empty fragments", in: cat(cf(false, OpBinary, ""), cf(false, OpContinuation, ""), cf(true, OpContinuation, "")), want: `binary("")`},
	{name: "ping between fragments", in: cat(cf(false, OpText, "a"), cf(true, OpPing, "p"), cf(true, OpContinuation, "b")), want: `ping("p") text("ab")`},
	{name: "close between fragments", in: cat(cf(false, OpText, "a"), cf(true, OpClose, "\x03\xe8")), want: `close("\x03\xe8")`},
	{name: "continuation first", in: cf(true, OpContinuation, "x"), want: `!1002`},
	{name: "continuation after final", in: cat(cf(true, OpText, "a"), cf(true, OpContinuation, "b")), want: `text("a") !1002`},
	{name: "text inside fragmented message", in: cat(cf(false, OpText, "a"), cf(true, OpText, "b")), want: `!1002`},
	{name: "binary inside fragmented message", in: cat(cf(false, OpBinary, "a"), cf(false, OpBinary, "b")), want: `!1002`},
	// 5.5 control frames
	{name: "ping", in: cf(true, OpPing, "hi"), want: `ping("hi")`},
	{name: "pong", in: cf(true, OpPong, ""), want: `pong("")`},
	{name: "ping 125", in: cf(true, OpPing, strings.Repeat("p", 125)), want: `ping("` + strings.Repeat("p", 125) + `")`},
	{name: "ping 126", in: cf(true, OpPing, strings.Repeat("p", 126)), want: `!1002`},
	{name: "fragmented ping", in: cf(false, OpPing, "x"), want: `!1002`},
	{name: "fragmented close", in: cf(false, OpClose, ""), want: `!1002`},
	// 8.1 text must be UTF-8
	{name: "utf8 text", in: cf(true, OpText, "κόσμε"), want: `text("κόσμε")`},
	{name: "invalid utf8", in: cf(true, OpText, "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64"), want: `!1007`},
	{name: "invalid utf8 binary is fine", in: cf(true, OpBinary, "\xff\xfe"), want: `binary("\xff\xfe")`},
	{name: "code point split across fragments", in: cat(cf(false, OpText, "\xce"), cf(true, OpContinuation, "\xba")), want: `text("κ")`},
	{name: "bad fragment fails before the message ends", in: cat(cf(false, OpText, "ok"), cf(false, OpContinuation, "\xc0"), cf(true, OpContinuation, "never")), want: `!1007`},
	{name: "message ends inside a code point", in: cat(cf(false, OpText, "a"), cf(true, OpContinuation, "\xe2\x82")), want: `!1007`},
	{name: "compressed text is validated after inflating", in: cfRsv(true, OpText, 0x4, "\xff"), lim: Limits{MaxMessage: 1 << 20, Compression: true}, want: `text+z("\xff")`},
	// size limit
	{name: "at limit", in: cf(true, OpBinary, "12345678"), lim: Limits{MaxMessage: 8}, want: `binary("12345678")`},
	{name: "frame over limit", in: cf(true, OpBinary, "123456789"), lim: Limits{MaxMessage: 8}, want: `!1009`},
	{name: "fragments over limit", in: cat(cf(false, OpBinary, "12345"), cf(true, OpContinuation, "6789")), lim: Limits{MaxMessage: 8}, want: `!1009`},
	// A length near 2^63 must not wrap the limit check (buffered + length).
	{name: "continuation length near 2^63", in: cat(cf(false, OpBinary, "12345"), rawHeader(0x80, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfb), []byte("streamed")), lim: Limits{MaxMessage: 8}, want: `!1009`},
	{name: "first frame length 2^63-1", in: cat(rawHeader(0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff), []byte("streamed")), lim: Limits{MaxMessage: 1 << 40}, want: `!1009`},
	{name: "control frames do not count", in: cat(cf(false, OpBinary, "1234"), cf(true, OpPing, "123456789"), cf(true, OpContinuation, "5678")), lim: Limits{MaxMessage: 8}, want: `ping("123456789") binary("12345678")`},
}

func TestDecoderTable(t *testing.T) {
	for _, tc := range decoderCases {
		t.Run(tc.name, func(t *testing.T) {
			lim := tc.lim
			if lim.MaxMessage == 0 {
				lim = defaultLimits
			}
			got := decodeChunks(t, tc.in, nil, lim).String()
			if got != tc.want {
				t.Fatalf("whole input:\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}

// TestDecoderSplits feeds every table case split at every byte boundary,
// one byte at a time, and in random chunks: a header or payload may arrive
// across any number of reads, and the outcome must not change.
func TestDecoderSplits(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range decoderCases {
		lim := tc.lim
		if lim.MaxMessage == 0 {
			lim = defaultLimits
		}
		in := tc.in
		if len(in) > 2000 {
			in = in[:0:0] // the 64 KiB case is covered by the random chunks below
		}
		for split := 1; split < len(in); split++ {
			got := decodeChunks(t, bytes.Clone(in), []int{split}, lim).String()
			if got != tc.want {
				t.Fatalf("%s split at %d:\n got %s\nwant %s", tc.name, split, got, tc.want)
			}
		}
		if len(in) > 0 {
			ones := make([]int, len(in))
			for i := range ones {
				ones[i] = 1
			}
			if got := decodeChunks(t, bytes.Clone(in), ones, lim).String(); got != tc.want {
				t.Fatalf("%s byte by byte:\n got %s\nwant %s", tc.name, got, tc.want)
			}
		}
		for range 20 {
			var chunks []int
			for n := 0; n < len(tc.in); {
				c := 1 + rng.IntN(300)
				chunks = append(chunks, c)
				n += c
			}
			if got := decodeChunks(t, bytes.Clone(tc.in), chunks, lim).String(); got != tc.want {
				t.Fatalf("%s chunks %v:\n got %s\nwant %s", tc.name, chunks, got, tc.want)
			}
		}
	}
}

// TestDecoderManyFramesOneRead checks a read holding many frames yields
// every event, in order, with payloads delivered in place.
func TestDecoderManyFramesOneRead(t *testing.T) {
	var in []byte
	var want []string
	for i := range 500 {
		p := fmt.Sprintf("msg-%d", i)
		in = append(in, cf(true, OpText, p)...)
		want = append(want, describe(Event{Kind: KindMessage, Op: OpText, Payload: []byte(p)}))
	}
	got := decodeChunks(t, in, nil, defaultLimits)
	if got.err != nil || strings.Join(got.events, " ") != strings.Join(want, " ") {
		t.Fatalf("got %v", got)
	}
}

// TestDecoderZeroCopy checks that a message arriving whole is delivered as
// a view of the inbound buffer, and one spanning reads is assembled.
func TestDecoderZeroCopy(t *testing.T) {
	var (
		d   Decoder
		src memSource
	)
	src.feed(cf(true, OpBinary, "in place"))
	ev, err := d.Next(&src, defaultLimits)
	if err != nil || ev.Kind != KindMessage {
		t.Fatalf("Next = %v, %v", ev, err)
	}
	if &ev.Payload[0] != &src.buf[src.off+6] {
		t.Fatal("a message in one read was copied")
	}
	if d.msg != nil {
		t.Fatal("decoder allocated a buffer for an in-place message")
	}
	if ev, _ := d.Next(&src, defaultLimits); ev.Kind != KindNone || src.InboundBuffered() != 0 {
		t.Fatal("the in-place message was not released")
	}

	in := cf(true, OpBinary, "split message")
	src.feed(in[:8])
	if ev, _ := d.Next(&src, defaultLimits); ev.Kind != KindNone {
		t.Fatal("event from half a frame")
	}
	if src.InboundBuffered() != 0 {
		t.Fatalf("%d bytes of a partial frame left in the inbound buffer; the decoder should consume them", src.InboundBuffered())
	}
	src.feed(in[8:])
	ev, err = d.Next(&src, defaultLimits)
	if err != nil || string(ev.Payload) != "split message" {
		t.Fatalf("Next = %v, %v", ev, err)
	}
	d.Next(&src, defaultLimits)
	if d.msg != nil {
		t.Fatal("message buffer kept after delivery")
	}
}

// TestDecoderSlowSender: announcing a large frame reserves little; memory
// follows the bytes actually sent.
func TestDecoderSlowSender(t *testing.T) {
	var (
		d   Decoder
		src memSource
	)
	defer d.Reset()
	wire := cf(true, OpBinary, strings.Repeat("s", 1<<20))
	src.feed(wire[:100])
	if ev, err := d.Next(&src, Limits{MaxMessage: 2 << 20}); ev.Kind != KindNone || err != nil {
		t.Fatalf("Next = %v, %v", ev, err)
	}
	if cap(d.msg) > initialReserve {
		t.Fatalf("reserved %d bytes for a frame of which 100 bytes arrived", cap(d.msg))
	}
	src.feed(wire[100:])
	ev, err := d.Next(&src, Limits{MaxMessage: 2 << 20})
	if err != nil || len(ev.Payload) != 1<<20 {
		t.Fatalf("got %d bytes, %v", len(ev.Payload), err)
	}
}

func TestParseHeaderIncomplete(t *testing.T) {
	for _, in := range [][]byte{
		cf(true, OpText, "x"),
		cf(true, OpBinary, strings.Repeat("y", 300)),
		cf(true, OpBinary, strings.Repeat("z", 70000)),
	} {
		h, n, err := ParseHeader(in)
		if err != nil || n == 0 {
			t.Fatalf("ParseHeader(full) = %v, %d, %v", h, n, err)
		}
		for i := 0; i < n; i++ {
			if _, m, err := ParseHeader(in[:i]); m != 0 || err != nil {
				t.Fatalf("ParseHeader of %d of %d header bytes = %d, %v; want 0, nil", i, n, m, err)
			}
		}
		if n != HeaderSize(int(h.Length), true) {
			t.Fatalf("HeaderSize(%d) = %d, parsed %d", h.Length, HeaderSize(int(h.Length), true), n)
		}
	}
}

func TestAppendHeaderRoundTrip(t *testing.T) {
	for _, h := range []Header{
		{Fin: true, OpCode: OpText, Length: 0},
		{Fin: true, OpCode: OpBinary, Length: 125},
		{Fin: false, OpCode: OpText, Rsv: Rsv1, Length: 126},
		{Fin: true, OpCode: OpContinuation, Length: 65535},
		{Fin: true, OpCode: OpBinary, Length: 65536},
		{Fin: true, OpCode: OpBinary, Length: 1 << 40, Masked: true, Mask: testMask},
		{Fin: true, OpCode: OpClose, Length: 2, Masked: true, Mask: testMask},
	} {
		b := AppendHeader(nil, h)
		got, n, err := ParseHeader(b)
		if err != nil || n != len(b) || got != h {
			t.Fatalf("round trip of %+v: got %+v, n=%d of %d, err %v", h, got, n, len(b), err)
		}
	}
}
