package engine

import (
	"testing"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/session"
)

// benchLoop returns a loop (of a one-loop server over fakes) with n open
// sessions on route 0, writing nowhere but counting bytes.
func benchLoop(tb testing.TB, h Handler, n int) (*loop, []*session.Session, []*fakeConn) {
	s, _ := fakeServer(tb, Config{}, 1, route{path: "/bench", handler: h})
	l := s.loops[0].Load()
	var ss []*session.Session
	var cs []*fakeConn
	for range n {
		c, sess := openFake(s, l, 0)
		c.record = false
		ss = append(ss, sess)
		cs = append(cs, c)
	}
	return l, ss, cs
}

var echoPayload = []byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")

// echoOnce runs one 64-byte masked text frame through the whole
// per-connection path, as gnet delivers it: OnTraffic, decode and unmask in
// place, UTF-8 check, the Echo handler, the reply batched and written.
func echoOnce(l *loop, c *fakeConn, wire []byte) {
	copy(c.in, wire)
	c.off = 0
	l.srv.OnTraffic(c)
}

func BenchmarkEngineEcho64(b *testing.B) {
	l, _, cs := benchLoop(b, Echo{}, 1)
	wire := frame.AppendMaskedFrame(nil, true, frame.OpText, 0, [4]byte{1, 2, 3, 4}, echoPayload)
	c := cs[0]
	c.in = make([]byte, len(wire))
	b.SetBytes(int64(len(wire)))
	b.ReportAllocs()
	for b.Loop() {
		echoOnce(l, c, wire)
	}
	if c.written != b.N*(len(echoPayload)+2) {
		b.Fatalf("wrote %d bytes for %d echoes", c.written, b.N)
	}
}

var broadcastPayload = []byte(`{"type":"broadcast","data":{"price":101.25,"symbol":"WSD"}}`)

// BenchmarkEngineBroadcast1000 delivers one broadcast to 1,000 connections
// of one loop: one frame encoded once (into a pooled buffer), the same
// bytes written to each.
func BenchmarkEngineBroadcast1000(b *testing.B) {
	l, _, cs := benchLoop(b, Echo{}, 1000)
	b.ReportAllocs()
	for b.Loop() {
		_ = l.srv.broadcast(l, 0, frame.OpText, broadcastPayload)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(cs)), "ns/delivery")
	if cs[999].written == 0 {
		b.Fatal("nothing delivered")
	}
}

// BenchmarkEngineBroadcastCrossLoop1000 is a broadcast from one loop to
// 1,000 connections on another: posted to its inbox, delivered by its task.
func BenchmarkEngineBroadcastCrossLoop1000(b *testing.B) {
	s, els := fakeServer(b, Config{}, 2, route{path: "/bench", handler: Echo{}})
	a, other := s.loops[0].Load(), s.loops[1].Load()
	var last *fakeConn
	for range 1000 {
		last, _ = openFake(s, other, 0)
		last.record = false
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = s.broadcast(a, 0, frame.OpText, broadcastPayload)
		els[1].run()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*1000), "ns/delivery")
	if last.written == 0 {
		b.Fatal("nothing delivered")
	}
}
