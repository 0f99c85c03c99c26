package engine

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/session"
)

// relay broadcasts every message it gets, and "left <id>" from OnClose,
// recording any callback that starts while another is running.
type relay struct {
	running int
	nested  []string
	closed  []CloseInfo
}

func (r *relay) in(what string) {
	if r.running > 0 {
		r.nested = append(r.nested, what)
	}
	r.running++
}

func (r *relay) OnOpen(Conn) { r.in("OnOpen"); r.running-- }

func (r *relay) OnMessage(c Conn, op frame.OpCode, data []byte) {
	r.in("OnMessage")
	defer func() { r.running-- }()
	_ = c.Broadcast(op, data)
}

func (r *relay) OnClose(c Conn, info CloseInfo) {
	r.in("OnClose")
	defer func() { r.running-- }()
	r.closed = append(r.closed, info)
	_ = c.Broadcast(frame.OpText, []byte(fmt.Sprintf("left %x", c.ID())))
}

// TestCallbacksNeverNestAndOrder: a broadcast whose delivery hits
// connections that fail to write (gnet closes them inside Write, calling
// OnClose) must not run OnClose inside the callback that broadcast, and
// the "left" broadcasts OnClose makes must reach every receiver, on every
// loop, in one order: after the broadcast that was being delivered.
func TestCallbacksNeverNestAndOrder(t *testing.T) {
	h := &relay{}
	s, els := fakeServer(t, Config{}, 2, route{path: "/r", handler: h})
	a, b := s.loops[0].Load(), s.loops[1].Load()
	// Loop a: receivers and broken connections interleaved, the publisher last.
	ra1, _ := openFake(s, a, 0)
	x1, _ := openFake(s, a, 0)
	ra2, _ := openFake(s, a, 0)
	x2, _ := openFake(s, a, 0)
	pub, _ := openFake(s, a, 0)
	rb1, _ := openFake(s, b, 0)
	rb2, _ := openFake(s, b, 0)
	x1.broken, x2.broken = true, true

	sendFake(s, pub, frame.OpText, "m1")
	sendFake(s, pub, frame.OpText, "m2")
	els[0].run()
	els[1].run()

	if len(h.nested) > 0 {
		t.Fatalf("callbacks nested: %v", h.nested)
	}
	if len(h.closed) != 2 || h.closed[0].Code != frame.CloseAbnormal || h.closed[0].Reason != ReasonConnectionLost {
		t.Fatalf("OnClose saw %v, want two 1006 connection_lost", h.closed)
	}
	want := ra1.frames(t)
	if len(want) != 4 || want[0] != "m1" || want[3] != "m2" {
		t.Fatalf("receiver got %q, want m1, two left messages, m2", want)
	}
	for name, c := range map[string]*fakeConn{"ra2": ra2, "pub": pub, "rb1": rb1, "rb2": rb2} {
		if got := c.frames(t); !slices.Equal(got, want) {
			t.Errorf("%s got %q, ra1 got %q", name, got, want)
		}
	}
	if a.slab.Len() != 3 || len(a.members[0]) != 3 {
		t.Fatalf("loop a has %d sessions, %d members after two closed, want 3", a.slab.Len(), len(a.members[0]))
	}
}

// TestBroadcastNotToLaterConnection: a connection whose handshake completes
// after Broadcast has returned does not get it, even when its loop has not
// delivered it yet; the connections open before do.
func TestBroadcastNotToLaterConnection(t *testing.T) {
	s, els := fakeServer(t, Config{}, 2, route{path: "/r", handler: &relay{}})
	b := s.loops[1].Load()
	before, _ := openFake(s, b, 0)
	if err := s.Broadcast("/r", frame.OpText, []byte("early")); err != nil {
		t.Fatal(err)
	}
	// A new connection upgrades on loop b before b has run its inbox task.
	later := &fakeConn{srv: s, record: true}
	later.in = []byte("GET /r HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	if _, act := b.open(later); act != 0 {
		t.Fatal("open refused")
	}
	s.OnTraffic(later)
	if ss := later.Context().(*session.Session); ss.State != session.Open {
		t.Fatalf("handshake left the session %v", ss.State)
	}
	els[1].run()
	if got := before.frames(t); !slices.Equal(got, []string{"early"}) {
		t.Fatalf("connection open before the broadcast got %q", got)
	}
	later.wire = later.wire[len("HTTP/1.1 101"):]
	if i := indexCRLF2(later.wire); i >= 0 && len(later.wire) > i+4 {
		t.Fatalf("connection opened after the broadcast got %q", later.wire[i+4:])
	}
	// A broadcast after it opened reaches both.
	_ = s.Broadcast("/r", frame.OpText, []byte("late"))
	els[1].run()
	if got := before.frames(t); !slices.Equal(got, []string{"early", "late"}) {
		t.Fatalf("first connection got %q", got)
	}
}

func indexCRLF2(b []byte) int {
	for i := 0; i+4 <= len(b); i++ {
		if string(b[i:i+4]) == "\r\n\r\n" {
			return i
		}
	}
	return -1
}

// TestBroadcastWalksMembers: a broadcast on a route visits that route's
// connections only, whatever else the loop holds.
func TestBroadcastWalksMembers(t *testing.T) {
	s, _ := fakeServer(t, Config{}, 1, route{path: "/big", handler: Echo{}}, route{path: "/small", handler: Echo{}})
	l := s.loops[0].Load()
	var big []*fakeConn
	for range 1000 {
		c, _ := openFake(s, l, 0)
		big = append(big, c)
	}
	small, ss := openFake(s, l, 1)
	if len(l.members[0]) != 1000 || len(l.members[1]) != 1 {
		t.Fatalf("members %d and %d", len(l.members[0]), len(l.members[1]))
	}
	if err := s.broadcast(l, 1, frame.OpText, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if small.written == 0 {
		t.Fatal("the /small connection got nothing")
	}
	for _, c := range big {
		if c.written != 0 {
			t.Fatal("a /big connection got a /small broadcast")
		}
	}
	// Closing takes it off the list.
	l.enter()
	small.gnetClose(nil)
	l.leave()
	if len(l.members[1]) != 0 || ss.State != session.Free {
		t.Fatalf("after close: %d members, state %v", len(l.members[1]), ss.State)
	}
}

// TestBroadcastAfterShutdown: once Shutdown has begun, Broadcast says so.
func TestBroadcastAfterShutdown(t *testing.T) {
	s, _ := fakeServer(t, Config{}, 1, route{path: "/r", handler: Echo{}})
	s.draining.Store(true)
	if err := s.Broadcast("/r", frame.OpText, []byte("x")); err != ErrServerClosed {
		t.Fatalf("Broadcast after shutdown: %v, want ErrServerClosed", err)
	}
	if err := s.Broadcast("/nope", frame.OpText, nil); err == nil {
		t.Fatal("Broadcast to an unknown path did not fail")
	}
}

// TestStaleConnFake: a Conn kept past its connection's end writes nowhere,
// even once the slot serves a new connection.
func TestStaleConnFake(t *testing.T) {
	s, _ := fakeServer(t, Config{}, 1, route{path: "/r", handler: Echo{}})
	l := s.loops[0].Load()
	old, ss := openFake(s, l, 0)
	kept := l.conn(ss)
	id := kept.ID()
	l.enter()
	old.gnetClose(nil)
	l.leave()
	fresh, ss2 := openFake(s, l, 0)
	if ss2 != ss {
		t.Fatal("the slot was not reused (the test needs it to be)")
	}
	if err := kept.WriteText([]byte("for the old one")); err != ErrClosed {
		t.Fatalf("write on a stale Conn: %v, want ErrClosed", err)
	}
	if err := kept.Close(4000, ""); err != ErrClosed {
		t.Fatalf("close on a stale Conn: %v", err)
	}
	if err := kept.Broadcast(frame.OpText, []byte("x")); err != ErrClosed {
		t.Fatalf("broadcast on a stale Conn: %v", err)
	}
	if fresh.written != 0 || kept.RemoteAddr() != nil || kept.Path() != "" || kept.ID() != id {
		t.Fatalf("stale Conn reached the new connection (written %d) or changed identity", fresh.written)
	}
	if l.conn(ss2).ID() == id {
		t.Fatal("the new connection has the old one's id")
	}
}

// TestOutboundMarkFake checks the admission rules with a connection whose
// buffer the test sets: a push over the mark is dropped (policy drop) or
// closes (policy close); a reply over the mark closes whatever the policy;
// control frames always go; an empty buffer takes one oversized frame.
func TestOutboundMarkFake(t *testing.T) {
	for _, policy := range []SlowConsumerPolicy{SlowConsumerDrop, SlowConsumerClose} {
		t.Run(policy.String(), func(t *testing.T) {
			s, _ := fakeServer(t, Config{MaxOutboundBytes: 4096, SlowConsumer: policy}, 1, route{path: "/r", handler: Echo{}})
			l := s.loops[0].Load()
			c, ss := openFake(s, l, 0)
			big := make([]byte, 10000)
			if err := l.conn(ss).Write(frame.OpBinary, big); err != nil {
				t.Fatalf("one frame over the mark to an empty buffer: %v", err)
			}
			c.queued = 4000
			err := l.conn(ss).Write(frame.OpBinary, make([]byte, 100))
			if policy == SlowConsumerDrop {
				if err != ErrDropped || ss.State != session.Open {
					t.Fatalf("push over the mark: %v, state %v", err, ss.State)
				}
				if l.metrics.droppedFrames.get() != 1 || l.metrics.slowDrop.get() != 1 {
					t.Fatal("drop not counted")
				}
				_ = l.conn(ss).Write(frame.OpBinary, make([]byte, 100))
				if l.metrics.droppedFrames.get() != 2 || l.metrics.slowDrop.get() != 1 {
					t.Fatal("a second drop in the same episode counted as a new slow consumer")
				}
				c.queued = 0
				if err := l.conn(ss).Write(frame.OpBinary, make([]byte, 100)); err != nil {
					t.Fatalf("after draining: %v", err)
				}
				// A reply over the mark closes even under drop.
				c.queued = 4000
				c.in = frame.AppendMaskedFrame(nil, true, frame.OpPing, 0, [4]byte{}, make([]byte, 125))
				c.off = 0
				s.OnTraffic(c)
			} else if err != ErrSlowConsumer {
				t.Fatalf("push over the mark: %v", err)
			}
			if ss.State != session.Closing || !ss.Has(session.FlagNoLinger) || CloseReason(ss.Reason) != ReasonSlowConsumer {
				t.Fatalf("state %v reason %v after a slow consumer", ss.State, CloseReason(ss.Reason))
			}
			got := c.frames(t)
			last := got[len(got)-1]
			if code, reason, _ := frame.ParseClose([]byte(last)); code != frame.CloseTryAgainLater || string(reason) != "slow consumer" {
				t.Fatalf("last frame %q, want close 1013", last)
			}
			if l.metrics.slowClose.get() != 1 {
				t.Fatal("close not counted")
			}
			// Once the peer has read everything, TCP is closed without waiting for its close frame.
			c.queued = 0
			l.enter()
			l.fire(ss.Self)
			l.leave()
			if !c.closed || ss.State != session.Free {
				t.Fatalf("slow consumer not closed once its bytes were out (state %v)", ss.State)
			}
		})
	}
}

// TestHeartbeatPingNotFlushed: the heartbeat of a connection whose bytes
// the peer does not read counts its pings as missed even though the peer
// keeps sending, and closes it with 1001, which the handler and the
// metrics see.
func TestHeartbeatPingNotFlushed(t *testing.T) {
	h := &relay{}
	s, _ := fakeServer(t, Config{PingInterval: time.Second, MaxMissedPongs: 2}, 1, route{path: "/r", handler: h})
	l := s.loops[0].Load()
	c, _ := openFake(s, l, 0)
	c.queued = 1 << 20 // never read
	for tick := range uint32(20) {
		if c.closed {
			break
		}
		sendFake(s, c, frame.OpPong, "") // the peer writes all the time
		s.start = s.start.Add(-time.Second)
		l.enter()
		l.tick()
		l.leave()
		_ = tick
	}
	if !c.closed {
		t.Fatal("a peer that never reads was not dropped by the heartbeat")
	}
	if len(h.closed) != 1 || h.closed[0].Code != frame.CloseGoingAway || h.closed[0].Reason != ReasonPingTimeout {
		t.Fatalf("OnClose saw %v, want 1001 ping_timeout", h.closed)
	}
	if l.metrics.closedByCode[closeBucket(1001)].get() != 1 || l.metrics.closedByReason[ReasonPingTimeout].get() != 1 {
		t.Fatal("metrics do not count the close as 1001 / ping_timeout")
	}
}

// TestHandlerPanicFake: a panic in a callback closes that connection with
// 1011 and nothing else.
func TestHandlerPanicFake(t *testing.T) {
	s, _ := fakeServer(t, Config{}, 1, route{path: "/r", handler: panicker{}})
	l := s.loops[0].Load()
	c, ss := openFake(s, l, 0)
	other, _ := openFake(s, l, 0)
	sendFake(s, c, frame.OpText, "boom")
	if ss.State != session.Closing || CloseReason(ss.Reason) != ReasonInternalError {
		t.Fatalf("after a panic: state %v reason %v", ss.State, CloseReason(ss.Reason))
	}
	if code, _, _ := frame.ParseClose([]byte(c.frames(t)[0])); code != frame.CloseInternalError {
		t.Fatalf("close code %d, want 1011", code)
	}
	sendFake(s, other, frame.OpText, "hi")
	if got := other.frames(t); !slices.Equal(got, []string{"hi"}) {
		t.Fatalf("another connection after the panic got %q", got)
	}
	if l.metrics.handlerPanics.get() != 1 {
		t.Fatal("panic not counted")
	}
}

// panicker echoes, but panics on "boom".
type panicker struct{ Echo }

func (panicker) OnMessage(c Conn, op frame.OpCode, data []byte) {
	if string(data) == "boom" {
		panic("boom")
	}
	_ = c.Write(op, data)
}

// TestWheelBounded: whatever the timeouts, a loop's wheel stays small.
func TestWheelBounded(t *testing.T) {
	s, _ := fakeServer(t, Config{PingInterval: 1000 * time.Hour, HandshakeTimeout: 10 * time.Millisecond}, 1,
		route{path: "/r", handler: Echo{}})
	if n := s.loops[0].Load().wheel.Slots(); n > session.MaxSlots {
		t.Fatalf("wheel of %d buckets", n)
	}
}

// TestZeroAllocs enforces the "0 allocs" claims of the hot paths.
func TestZeroAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under the race detector; make test runs this without it")
	}
	t.Run("echo", func(t *testing.T) {
		l, _, cs := benchLoop(t, Echo{}, 1)
		wire := frame.AppendMaskedFrame(nil, true, frame.OpText, 0, [4]byte{1, 2, 3, 4}, echoPayload)
		cs[0].in = make([]byte, len(wire))
		if n := testing.AllocsPerRun(1000, func() { echoOnce(l, cs[0], wire) }); n != 0 {
			t.Fatalf("echo path: %v allocs", n)
		}
	})
	t.Run("broadcast on the loop", func(t *testing.T) {
		l, _, cs := benchLoop(t, Echo{}, 1000)
		if n := testing.AllocsPerRun(200, func() { _ = l.srv.broadcast(l, 0, frame.OpText, broadcastPayload) }); n != 0 {
			t.Fatalf("broadcast to 1,000: %v allocs", n)
		}
		if cs[999].written == 0 {
			t.Fatal("nothing delivered")
		}
	})
	t.Run("broadcast across loops", func(t *testing.T) {
		s, els := twoLoopsOf500(t)
		a := s.loops[0].Load()
		if n := testing.AllocsPerRun(200, func() {
			_ = s.broadcast(a, 0, frame.OpText, broadcastPayload)
			els[1].run()
		}); n != 0 {
			t.Fatalf("broadcast to 500 + 500 on two loops: %v allocs", n)
		}
	})
	t.Run("fanout across loops", func(t *testing.T) {
		s, els := twoLoopsOf500(t)
		to := &allOfRoute{s: s}
		if n := testing.AllocsPerRun(200, func() {
			_ = s.Fanout(to, "k", 1, frame.OpText, broadcastPayload)
			els[0].run()
			els[1].run()
		}); n != 0 {
			t.Fatalf("fanout to 500 + 500 on two loops: %v allocs", n)
		}
		if to.n == 0 {
			t.Fatal("nothing delivered")
		}
	})
	t.Run("fanout in two encodings across loops", func(t *testing.T) {
		s, els, enc, conns := twoEncodings(t, 250, Config{})
		for _, proto := range conns {
			for _, c := range proto {
				c.record = false
			}
		}
		to := &allOfRoute{s: s}
		if n := testing.AllocsPerRun(200, func() {
			_ = s.Fanout(to, "k", 1, frame.OpText, broadcastPayload)
			els[0].run()
			els[1].run()
		}); n != 0 {
			t.Fatalf("fanout to 250 JSON + 250 MessagePack on each of two loops: %v allocs", n)
		}
		if conns[0][0].written == 0 || conns[1][0].written == 0 || enc.calls.Load() == 0 {
			t.Fatal("nothing delivered")
		}
	})
	t.Run("broadcast from outside", func(t *testing.T) {
		s, els := fakeServer(t, Config{}, 2, route{path: "/r", handler: Echo{}})
		for i := range 2 {
			c, _ := openFake(s, s.loops[i].Load(), 0)
			c.record = false
		}
		if n := testing.AllocsPerRun(200, func() {
			_ = s.Broadcast("/r", frame.OpText, broadcastPayload)
			els[0].run()
			els[1].run()
		}); n != 0 {
			t.Fatalf("broadcast from outside the loops: %v allocs", n)
		}
	})
}

// TestBroadcastOrderAcrossLoops: a broadcast made on loop b, then one made
// on loop a after the first returned, reach a's connections in that order
// even though a has not run its inbox task in between.
func TestBroadcastOrderAcrossLoops(t *testing.T) {
	s, els := fakeServer(t, Config{}, 2, route{path: "/r", handler: &relay{}})
	a, b := s.loops[0].Load(), s.loops[1].Load()
	recv, _ := openFake(s, a, 0)
	pubA, _ := openFake(s, a, 0)
	pubB, _ := openFake(s, b, 0)
	sendFake(s, pubB, frame.OpText, "first")
	sendFake(s, pubA, frame.OpText, "second")
	els[0].run()
	els[1].run()
	for name, c := range map[string]*fakeConn{"receiver": recv, "publisher a": pubA, "publisher b": pubB} {
		if got := c.frames(t); !slices.Equal(got, []string{"first", "second"}) {
			t.Errorf("%s got %q", name, got)
		}
	}
}

// TestBroadcastBacklog: broadcasts for a loop that does not get to deliver
// them queue up to MaxBroadcastBacklog bytes; the next one is refused
// everywhere (nothing sent, counted), and once the loop has delivered,
// broadcasts flow again. Every broadcast that was accepted is delivered.
func TestBroadcastBacklog(t *testing.T) {
	const limit = 256 << 10
	s, els := fakeServer(t, Config{MaxBroadcastBacklog: limit}, 2, route{path: "/r", handler: Echo{}})
	a, b := s.loops[0].Load(), s.loops[1].Load()
	ca, _ := openFake(s, a, 0)
	cb, _ := openFake(s, b, 0)
	ca.record, cb.record = false, false
	payload := make([]byte, 16<<10)
	accepted := 0
	var err error
	for range 100 {
		if err = s.broadcast(a, 0, frame.OpBinary, payload); err != nil {
			break
		}
		accepted++
	}
	if err != ErrBacklog {
		t.Fatalf("after %d broadcasts: %v, want ErrBacklog", accepted, err)
	}
	if held := b.inbox.bytes.Load(); held > limit {
		t.Fatalf("loop b's inbox holds %d bytes, limit %d", held, limit)
	}
	if accepted < limit/(17<<10) {
		t.Fatalf("only %d broadcasts accepted under a %d-byte backlog", accepted, limit)
	}
	frameLen := len(payload) + 4
	if ca.written != accepted*frameLen {
		t.Fatalf("the refused broadcast reached loop a (%d bytes for %d accepted)", ca.written, accepted)
	}
	if s.refusedBacklog.Load() != 1 {
		t.Fatal("refusal not counted")
	}
	els[1].run()
	if cb.written != accepted*frameLen || b.inbox.bytes.Load() != 0 {
		t.Fatalf("loop b delivered %d bytes of %d accepted broadcasts; %d left in its inbox", cb.written, accepted, b.inbox.bytes.Load())
	}
	if err := s.broadcast(a, 0, frame.OpBinary, payload); err != nil {
		t.Fatalf("after loop b caught up: %v", err)
	}
}

// TestBigReplyAfterBatch: a client that pipelines a small message and a
// large one gets both echoes when nothing is stuck in its buffer; the
// batch ahead of the large reply does not count against the mark.
func TestBigReplyAfterBatch(t *testing.T) {
	s, _ := fakeServer(t, Config{MaxOutboundBytes: 64 << 10}, 1, route{path: "/r", handler: Echo{}})
	c, ss := openFake(s, s.loops[0].Load(), 0)
	big := strings.Repeat("b", 200<<10)
	c.in = frame.AppendMaskedFrame(nil, true, frame.OpText, 0, [4]byte{1, 2, 3, 4}, []byte("small"))
	c.in = frame.AppendMaskedFrame(c.in, true, frame.OpText, 0, [4]byte{1, 2, 3, 4}, []byte(big))
	s.OnTraffic(c)
	if ss.State != session.Open {
		t.Fatalf("state %v reason %v: closed for a reply the kernel could take", ss.State, CloseReason(ss.Reason))
	}
	if got := c.frames(t); len(got) != 2 || got[0] != "small" || got[1] != big {
		t.Fatalf("got %d frames", len(got))
	}
}

// allOfRoute is a Fanout that writes to every connection of route 0.
type allOfRoute struct {
	s *Server
	n int
}

func (a *allOfRoute) Deliver(loop int, f *Frame) {
	l := a.s.loops[loop].Load()
	for _, idx := range l.members[0] {
		if l.conn(l.slab.At(idx)).WriteFrame(f) == nil {
			a.n++
		}
	}
}

// twoLoopsOf500 is a fake server with 500 open connections (that keep no
// copy of what they are sent) on each of two loops.
func twoLoopsOf500(t *testing.T) (*Server, []*fakeLoop) {
	s, els := fakeServer(t, Config{}, 2, route{path: "/r", handler: Echo{}})
	for i := range 2 {
		for range 500 {
			c, _ := openFake(s, s.loops[i].Load(), 0)
			c.record = false
		}
	}
	return s, els
}
