package engine

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/wsdproject/wsd/internal/gnet"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/session"
)

// fakeConn is the part of gnet.Conn the engine uses, over memory: it lets
// tests and benchmarks run the real per-connection paths (decode, dispatch,
// handler, batched write, broadcast) without a socket, and deterministically
// reproduce what gnet does on a failed write (close the connection, calling
// OnClose, inside Write).
type fakeConn struct {
	gnet.Conn // methods the paths must not use panic through the nil interface
	in        []byte
	off       int
	written   int
	record    bool   // keep what is written in wire
	wire      []byte // bytes written, when record is set
	queued    int    // what OutboundBuffered reports
	broken    bool   // writes fail and close the connection, as gnet does
	closed    bool
	ctx       any
	srv       *Server
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
func (c *fakeConn) OutboundBuffered() int { return c.queued }
func (c *fakeConn) RemoteAddr() net.Addr  { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 9), Port: 9} }
func (c *fakeConn) LocalAddr() net.Addr   { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080} }
func (c *fakeConn) Context() any          { return c.ctx }
func (c *fakeConn) SetContext(v any)      { c.ctx = v }
func (c *fakeConn) Fd() int               { return -1 }

func (c *fakeConn) Write(p []byte) (int, error) {
	if c.closed {
		return 0, errors.New("fake: write on a closed connection")
	}
	if c.broken {
		c.gnetClose(syscall.EPIPE)
		return 0, syscall.EPIPE
	}
	c.written += len(p)
	if c.record {
		c.wire = append(c.wire, p...)
	}
	return len(p), nil
}

func (c *fakeConn) Writev(bs [][]byte) (int, error) {
	n := 0
	for _, b := range bs {
		m, err := c.Write(b)
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// gnetClose does what gnet's eventloop.close does: OnClose, then release.
func (c *fakeConn) gnetClose(err error) {
	if c.closed {
		return
	}
	c.closed = true
	if c.srv != nil {
		c.srv.OnClose(c, err)
	}
}

// frames parses what the server wrote (unmasked server frames).
func (c *fakeConn) frames(t testing.TB) []string {
	t.Helper()
	var out []string
	b := c.wire
	for len(b) > 0 {
		h, n, err := frame.ParseHeader(b)
		if err != nil || n == 0 || len(b) < n+int(h.Length) {
			t.Fatalf("bad frame in what was written: %v (%d bytes left)", err, len(b))
		}
		out = append(out, string(b[n:n+int(h.Length)]))
		b = b[n+int(h.Length):]
	}
	return out
}

// fakeLoop is a gnet.EventLoop whose tasks run when the test says so.
type fakeLoop struct {
	gnet.EventLoop
	tasks []gnet.Runnable
}

func (f *fakeLoop) Execute(_ context.Context, r gnet.Runnable) error {
	f.tasks = append(f.tasks, r)
	return nil
}

func (f *fakeLoop) AdoptPending() {}

func (f *fakeLoop) Close(c gnet.Conn) error {
	c.(*fakeConn).gnetClose(nil)
	return nil
}

// run runs the queued tasks, in order, until none is left.
func (f *fakeLoop) run() {
	for i := 0; i < len(f.tasks); i++ {
		_ = f.tasks[i].Run(context.Background())
	}
	clear(f.tasks)
	f.tasks = f.tasks[:0]
}

// fakeServer is a Server with n loops over fakeLoops, not started.
func fakeServer(t testing.TB, cfg Config, n int, routes ...route) (*Server, []*fakeLoop) {
	t.Helper()
	cfg.Loops = n
	cfg.Logger = testLogger()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if err := s.Handle(r.path, r.handler, RouteOptions{Subprotocols: r.protocols, Alternate: r.alt}); err != nil {
			t.Fatal(err)
		}
	}
	s.start = time.Now()
	els := make([]*fakeLoop, n)
	for i := range n {
		els[i] = &fakeLoop{tasks: make([]gnet.Runnable, 0, 64)}
		s.loops[i].Store(newLoop(s, uint8(i), els[i]))
	}
	s.nloops.Store(int32(n))
	return s, els
}

// openFake opens a session for a new fakeConn on loop l and route r,
// as a completed handshake would.
func openFake(s *Server, l *loop, r int) (*fakeConn, *session.Session) {
	c := &fakeConn{srv: s, record: true}
	_, ss := l.slab.Alloc()
	ss.Conn = c
	ss.Loop = l.idx
	ss.Endpoint = uint8(r)
	c.SetContext(ss)
	l.metrics.open.inc()
	s.timeouts.Opened(l.wheel, ss.Self)
	l.addMember(ss)
	return c, ss
}

// sendFake delivers a client frame to c as gnet would: OnTraffic.
func sendFake(s *Server, c *fakeConn, op frame.OpCode, payload string) gnet.Action {
	c.in = frame.AppendMaskedFrame(c.in[:0], true, op, 0, [4]byte{1, 2, 3, 4}, []byte(payload))
	c.off = 0
	return s.OnTraffic(c)
}

// testLogger discards logs unless WSD_TEST_DEBUG is set (as testserver's).
func testLogger() *slog.Logger {
	if os.Getenv("WSD_TEST_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}
