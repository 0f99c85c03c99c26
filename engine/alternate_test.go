package engine

import (
	"bytes"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/protocol/mpjson"
	"github.com/wsdproject/wsd/session"
)

// countingMsgpack is the real wsd.msgpack encoding, counting its calls.
type countingMsgpack struct{ calls atomic.Int64 }

func (c *countingMsgpack) encode(dst, src []byte) ([]byte, error) {
	c.calls.Add(1)
	return mpjson.ToMsgpack(dst, src)
}

// twoEncodings is a fake server with two loops whose route speaks "json"
// and "msgpack" (the Alternate), and n connections of each on each loop.
func twoEncodings(tb testing.TB, n int, cfg Config) (*Server, []*fakeLoop, *countingMsgpack, [2][]*fakeConn) {
	tb.Helper()
	enc := &countingMsgpack{}
	alt := &Alternate{Subprotocol: "msgpack", Op: frame.OpBinary, Encode: enc.encode}
	s, els := fakeServer(tb, cfg, 2, route{path: "/r", handler: Echo{}, protocols: []string{"json", "msgpack"}, alt: alt})
	var conns [2][]*fakeConn
	for i := range 2 {
		for range n {
			for proto := range uint8(2) {
				c, ss := openFake(s, s.loops[i].Load(), 0)
				ss.Proto = proto + 1
				conns[proto] = append(conns[proto], c)
			}
		}
	}
	return s, els, enc, conns
}

// wireFrames parses what the server wrote into opcodes and payloads.
func wireFrames(t testing.TB, c *fakeConn) (ops []frame.OpCode, payloads [][]byte) {
	t.Helper()
	b := c.wire
	for len(b) > 0 {
		h, n, err := frame.ParseHeader(b)
		if err != nil || n == 0 || len(b) < n+int(h.Length) {
			t.Fatalf("bad frame in what was written: %v", err)
		}
		ops = append(ops, h.OpCode)
		payloads = append(payloads, b[n:n+int(h.Length)])
		b = b[n+int(h.Length):]
	}
	return ops, payloads
}

// TestAlternateFanout: one Fanout reaches the JSON connections as the text
// it was given and the MessagePack ones as the same message in
// MessagePack, on both loops, with one encoding in all.
func TestAlternateFanout(t *testing.T) {
	s, els, enc, conns := twoEncodings(t, 3, Config{})
	msg := []byte(`{"type":"message","channel":"c","offset":1,"epoch":"e","data":{"a":[1,2.5,"x"]}}`)
	want, err := mpjson.ToMsgpack(nil, msg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Fanout(&allOfRoute{s: s}, "c", 1, frame.OpText, msg); err != nil {
		t.Fatal(err)
	}
	els[0].run()
	els[1].run()
	for _, c := range conns[0] {
		if ops, p := wireFrames(t, c); len(ops) != 1 || ops[0] != frame.OpText || !bytes.Equal(p[0], msg) {
			t.Fatalf("a JSON connection got %v %q", ops, p)
		}
	}
	for _, c := range conns[1] {
		if ops, p := wireFrames(t, c); len(ops) != 1 || ops[0] != frame.OpBinary || !bytes.Equal(p[0], want) {
			t.Fatalf("a MessagePack connection got %v %x, want %x", ops, p, want)
		}
	}
	if n := enc.calls.Load(); n != 1 {
		t.Fatalf("the publication was encoded %d times for 6 MessagePack receivers on 2 loops, want once", n)
	}
}

// TestAlternateNotNeeded: with no connection of the Alternate among the
// receivers, nothing is encoded.
func TestAlternateNotNeeded(t *testing.T) {
	s, els, enc, conns := twoEncodings(t, 2, Config{})
	for _, c := range conns[1] {
		c.gnetClose(nil) // only JSON connections left
	}
	if err := s.Fanout(&allOfRoute{s: s}, "c", 1, frame.OpText, []byte(`{"a":1}`)); err != nil {
		t.Fatal(err)
	}
	els[0].run()
	els[1].run()
	if n := enc.calls.Load(); n != 0 {
		t.Fatalf("encoded %d times for no MessagePack receiver", n)
	}
	if ops, _ := wireFrames(t, conns[0][0]); len(ops) != 1 {
		t.Fatalf("a JSON connection got %d frames", len(ops))
	}
}

// TestAlternateBroadcastAndSend: route broadcasts and Conn.Send follow the
// connection's encoding too; a message the Alternate cannot encode goes to
// the JSON connections only and is counted.
func TestAlternateBroadcastAndSend(t *testing.T) {
	s, els, _, conns := twoEncodings(t, 1, Config{})
	if err := s.Broadcast("/r", frame.OpText, []byte(`[1,true]`)); err != nil {
		t.Fatal(err)
	}
	// 1e400 is valid JSON that MessagePack cannot carry back to JSON.
	if err := s.Broadcast("/r", frame.OpText, []byte(`[1e400]`)); err != nil {
		t.Fatal(err)
	}
	els[0].run()
	els[1].run()
	ops, p := wireFrames(t, conns[1][0])
	if len(ops) != 1 || ops[0] != frame.OpBinary || !bytes.Equal(p[0], []byte{0x92, 0x01, 0xc3}) {
		t.Fatalf("MessagePack connection got %v %x", ops, p)
	}
	if ops, _ := wireFrames(t, conns[0][0]); len(ops) != 2 {
		t.Fatalf("JSON connection got %d frames, want 2", len(ops))
	}
	failures := s.loops[0].Load().metrics.encodeFailures.get() + s.loops[1].Load().metrics.encodeFailures.get()
	if failures != 1 {
		t.Fatalf("encode failures counted %d, want 1 (the failure is kept with the frame, not retried per loop)", failures)
	}

	l := s.loops[0].Load()
	var jsonConn, mpConn *session.Session
	for _, idx := range l.members[0] {
		if ss := l.slab.At(idx); ss.Proto == 1 {
			jsonConn = ss
		} else {
			mpConn = ss
		}
	}
	jc, mc := jsonConn.Conn.(*fakeConn), mpConn.Conn.(*fakeConn)
	jc.wire, mc.wire = nil, nil
	if err := l.conn(jsonConn).Send([]byte(`{"k":"v"}`)); err != nil {
		t.Fatal(err)
	}
	if err := l.conn(mpConn).Send([]byte(`{"k":"v"}`)); err != nil {
		t.Fatal(err)
	}
	if err := l.conn(mpConn).Send([]byte(`{"k":1e400}`)); !errors.Is(err, ErrEncode) {
		t.Fatalf("Send of what cannot be encoded: %v", err)
	}
	if ops, p := wireFrames(t, jc); len(ops) != 1 || ops[0] != frame.OpText || string(p[0]) != `{"k":"v"}` {
		t.Fatalf("JSON Send: %v %q", ops, p)
	}
	if ops, p := wireFrames(t, mc); len(ops) != 1 || ops[0] != frame.OpBinary || !bytes.Equal(p[0], []byte{0x81, 0xa1, 'k', 0xa1, 'v'}) {
		t.Fatalf("MessagePack Send: %v %x", ops, p)
	}
}

// TestAlternateCompressed: with compression, a MessagePack connection that
// negotiated it gets the encoded frame compressed once.
func TestAlternateCompressed(t *testing.T) {
	s, els, enc, conns := twoEncodings(t, 2, Config{Compression: true, CompressionMinBytes: 16})
	for _, proto := range conns {
		for _, c := range proto {
			ss := c.ctx.(*session.Session)
			ss.Flags |= session.FlagDeflate
			ss.Window = 15
		}
	}
	msg := []byte(`{"data":"` + string(bytes.Repeat([]byte("abc"), 100)) + `"}`)
	if err := s.Fanout(&allOfRoute{s: s}, "c", 1, frame.OpText, msg); err != nil {
		t.Fatal(err)
	}
	els[0].run()
	els[1].run()
	want, _ := mpjson.ToMsgpack(nil, msg)
	for _, c := range conns[1] {
		h, n, err := frame.ParseHeader(c.wire)
		if err != nil || h.OpCode != frame.OpBinary || h.Rsv != frame.Rsv1 {
			t.Fatalf("MessagePack frame %+v %v, want compressed binary", h, err)
		}
		var inf frame.Inflater
		got, err := inf.Inflate(nil, c.wire[n:n+int(h.Length)], 1<<20)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("inflated %x (%v), want %x", got, err, want)
		}
	}
	if enc.calls.Load() != 1 {
		t.Fatalf("encoded %d times", enc.calls.Load())
	}
}

// BenchmarkFanoutOneEncoding1000 is BenchmarkFanoutTwoEncodings1000 with
// every connection on the route's own encoding: the cost of the second
// encoding is the difference.
func BenchmarkFanoutOneEncoding1000(b *testing.B) {
	s, els, enc, conns := twoEncodings(b, 250, Config{})
	for _, proto := range conns {
		for _, c := range proto {
			c.record = false
			c.ctx.(*session.Session).Proto = 1
		}
	}
	to := &allOfRoute{s: s}
	b.ReportAllocs()
	for b.Loop() {
		_ = s.Fanout(to, "k", 1, frame.OpText, broadcastPayload)
		els[0].run()
		els[1].run()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*1000), "ns/delivery")
	if enc.calls.Load() != 0 || conns[1][0].written == 0 {
		b.Fatal("encoded for nobody, or nothing delivered")
	}
}

// BenchmarkFanoutTwoEncodings1000 fans a publication out to 250 JSON and
// 250 MessagePack connections on each of two loops (1,000 in all): two
// encodings per publication, the same bytes written to each receiver of
// an encoding.
func BenchmarkFanoutTwoEncodings1000(b *testing.B) {
	s, els, _, conns := twoEncodings(b, 250, Config{})
	for _, proto := range conns {
		for _, c := range proto {
			c.record = false
		}
	}
	to := &allOfRoute{s: s}
	b.ReportAllocs()
	for b.Loop() {
		_ = s.Fanout(to, "k", 1, frame.OpText, broadcastPayload)
		els[0].run()
		els[1].run()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*1000), "ns/delivery")
	if conns[1][0].written == 0 || conns[0][0].written == 0 {
		b.Fatal("nothing delivered")
	}
}
