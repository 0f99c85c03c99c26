package engine

import (
	"io"
	"log/slog"
	"net"
	"testing"

	"github.com/panjf2000/gnet/v2"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/session"
)

// fakeConn is the part of gnet.Conn the read and write paths use, over
// memory: it lets a benchmark run the real per-connection path (decode,
// dispatch, handler, batched write) without a socket in the measurement.
type fakeConn struct {
	gnet.Conn // methods the paths must not use panic through the nil interface
	in        []byte
	off       int
	written   int
}

func (c *fakeConn) Peek(n int) ([]byte, error) {
	if n <= 0 {
		n = len(c.in) - c.off
	}
	if n > len(c.in)-c.off {
		return nil, io.ErrShortBuffer
	}
	return c.in[c.off : c.off+n], nil
}

func (c *fakeConn) Discard(n int) (int, error) {
	if n <= 0 || n > len(c.in)-c.off {
		n = len(c.in) - c.off
	}
	c.off += n
	return n, nil
}

func (c *fakeConn) InboundBuffered() int  { return len(c.in) - c.off }
func (c *fakeConn) OutboundBuffered() int { return 0 }
func (c *fakeConn) RemoteAddr() net.Addr  { return &net.TCPAddr{} }
func (c *fakeConn) Write(p []byte) (int, error) {
	c.written += len(p)
	return len(p), nil
}

func (c *fakeConn) Writev(bs [][]byte) (int, error) {
	n := 0
	for _, b := range bs {
		n += len(b)
	}
	c.written += n
	return n, nil
}

// benchLoop returns a loop with n open sessions on route 0 over fakeConns.
func benchLoop(b *testing.B, h Handler, n int) (*loop, []*session.Session, []*fakeConn) {
	s, err := New(Config{Loops: 1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	s.Handle("/bench", h, RouteOptions{})
	l := newLoop(s, 0, nil)
	s.loops[0].Store(l)
	s.nloops.Store(1)
	var ss []*session.Session
	var cs []*fakeConn
	for range n {
		_, sess := l.slab.Alloc()
		c := &fakeConn{}
		sess.Conn = c
		s.timeouts.Opened(l.wheel, sess.Self)
		ss = append(ss, sess)
		cs = append(cs, c)
	}
	return l, ss, cs
}

// BenchmarkEngineEcho64 runs one 64-byte masked text frame through the
// whole per-connection path: OnTraffic, decode and unmask in place, UTF-8
// check, the Echo handler, the reply frame batched and written. It must not
// allocate.
func BenchmarkEngineEcho64(b *testing.B) {
	l, ss, cs := benchLoop(b, Echo{}, 1)
	payload := []byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	wire := frame.AppendMaskedFrame(nil, true, frame.OpText, 0, [4]byte{1, 2, 3, 4}, payload)
	c := cs[0]
	c.in = make([]byte, len(wire))
	b.SetBytes(int64(len(wire)))
	b.ReportAllocs()
	for b.Loop() {
		copy(c.in, wire)
		c.off = 0
		l.traffic(c, ss[0])
	}
	if c.written != b.N*(len(payload)+2) {
		b.Fatalf("wrote %d bytes for %d echoes", c.written, b.N)
	}
}

// BenchmarkEngineBroadcast1000 delivers one broadcast to 1,000 connections
// of one loop: one frame encoded once, the same bytes written to each.
// Allocations per op are those of the shared frame, not per delivery.
func BenchmarkEngineBroadcast1000(b *testing.B) {
	l, _, cs := benchLoop(b, Echo{}, 1000)
	payload := []byte(`{"type":"broadcast","data":{"price":101.25,"symbol":"WSD"}}`)
	b.ReportAllocs()
	for b.Loop() {
		l.srv.broadcast(l, 0, frame.OpText, payload)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(cs)), "ns/delivery")
	if cs[999].written == 0 {
		b.Fatal("nothing delivered")
	}
}
