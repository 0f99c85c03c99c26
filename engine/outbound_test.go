package engine_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wsdproject/wsd/engine"
	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/internal/testserver"
	"github.com/wsdproject/wsd/internal/wstest"
)

// broadcaster broadcasts every message it receives to its route.
type broadcaster struct{ engine.Echo }

func (broadcaster) OnMessage(c engine.Conn, op frame.OpCode, data []byte) { _ = c.Broadcast(op, data) }

// metric returns the value of one sample of the server's metrics.
func metric(t testing.TB, s *engine.Server, sample string) int {
	t.Helper()
	var b bytes.Buffer
	s.WriteMetrics(&b)
	for _, line := range strings.Split(b.String(), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return n
		}
	}
	t.Fatalf("no metric %s", sample)
	return 0
}

// waitMetric waits (bounded) until a metric reaches want; the count it
// waits for is already decided, only its bookkeeping may lag.
func waitMetric(t testing.TB, s *engine.Server, sample string, want int) {
	t.Helper()
	deadline := time.Now().Add(wstest.Timeout)
	for metric(t, s, sample) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s = %d, want %d", sample, metric(t, s, sample), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// seqMsg is a broadcast numbered i, padded to size.
func seqMsg(i, size int) []byte {
	b := make([]byte, max(size, 4))
	binary.BigEndian.PutUint32(b, uint32(i))
	return b
}

// reader reads numbered broadcasts on c until it has want of them, or its
// connection ends, and reports them.
func reader(c *wstest.Client, want int) (<-chan uint32, <-chan error) {
	seqs := make(chan uint32, want+64)
	done := make(chan error, 1)
	go func() {
		for n := 0; n < want; n++ {
			_, p, err := c.ReadMessage()
			if err != nil {
				done <- err
				return
			}
			seqs <- binary.BigEndian.Uint32(p)
		}
		done <- nil
	}()
	return seqs, done
}

// publish sends n numbered broadcasts of size bytes from pub, at most
// window ahead of what every one of the readers has received (so that
// the readers, which read as fast as they can, are never the slow ones).
func publish(t *testing.T, pub *wstest.Client, from, n, size, window int, readers ...<-chan uint32) {
	t.Helper()
	got := make([]int, len(readers))
	// wait takes reader r's numbers, checking their order, until it has k.
	wait := func(r, k int) {
		for got[r] < k {
			select {
			case seq := <-readers[r]:
				if int(seq) != from+got[r] {
					t.Fatalf("reader %d got broadcast %d, want %d", r, seq, from+got[r])
				}
				got[r]++
			case <-time.After(wstest.Timeout):
				t.Fatalf("reader %d stuck at %d of %d", r, got[r], n)
			}
		}
	}
	for i := from; i < from+n; i++ {
		for r := range readers {
			wait(r, i-from-window)
		}
		if err := pub.Send(frame.OpBinary, seqMsg(i, size)); err != nil {
			t.Fatal(err)
		}
	}
	for r := range readers {
		wait(r, n)
	}
}

const mark = 256 << 10

// TestSlowConsumerClose: a client that never reads while 1,000 broadcasts
// of 16 KiB go out is closed with 1013 (policy close), while a fast reader
// on the same loop gets every broadcast.
func TestSlowConsumerClose(t *testing.T) {
	s := testserver.Start(t, engine.Config{Loops: 1, MaxOutboundBytes: mark, CloseTimeout: 30 * time.Second},
		testserver.Route{Path: "/b", Handler: broadcaster{}})
	addr := s.Addr().String()
	slow := wstest.Dial(t, addr, "/b", wstest.Options{RecvBuffer: 32 << 10})
	fast := wstest.Dial(t, addr, "/b", wstest.Options{})
	pub := wstest.Dial(t, addr, "/b", wstest.Options{})
	fastSeqs, _ := reader(fast, 1000)
	pubSeqs, _ := reader(pub, 1000)
	publish(t, pub, 0, 1000, 16<<10, 8, fastSeqs, pubSeqs)

	// The slow client reads what was queued for it, then the close frame.
	n := 0
	for {
		_, p, err := slow.ReadMessage()
		if err != nil {
			fe, ok := err.(*frame.Error)
			if !ok || fe.Code != frame.CloseTryAgainLater || fe.Reason != "slow consumer" {
				t.Fatalf("after %d broadcasts: %v, want close 1013 slow consumer", n, err)
			}
			break
		}
		if seq := binary.BigEndian.Uint32(p); int(seq) != n {
			t.Fatalf("slow client got broadcast %d, want %d", seq, n)
		}
		n++
	}
	slow.ExpectEOF(t) // closed without waiting for our close frame
	t.Logf("the slow client got %d of 1000 broadcasts, then 1013", n)
	if n >= 1000 {
		t.Fatal("the slow client got every broadcast: it was never over its mark")
	}
	waitMetric(t, s, `wsd_connections_closed_by_reason_total{reason="slow_consumer"}`, 1)
	if metric(t, s, `wsd_slow_consumer_total{action="close"}`) != 1 || metric(t, s, `wsd_connections_closed_by_code_total{code="1013"}`) != 1 {
		t.Fatal("slow consumer close not counted")
	}
}

// TestSlowConsumerDrop: under the drop policy a client that stops reading
// keeps at most its mark queued, the frames it misses are counted, and
// once it has read what was queued it gets the broadcasts that follow.
func TestSlowConsumerDrop(t *testing.T) {
	s := testserver.Start(t, engine.Config{Loops: 1, MaxOutboundBytes: mark, SlowConsumer: engine.SlowConsumerDrop},
		testserver.Route{Path: "/b", Handler: broadcaster{}})
	addr := s.Addr().String()
	slow := wstest.Dial(t, addr, "/b", wstest.Options{RecvBuffer: 32 << 10})
	fast := wstest.Dial(t, addr, "/b", wstest.Options{})
	pub := wstest.Dial(t, addr, "/b", wstest.Options{})
	fastSeqs, _ := reader(fast, 1<<20)
	pubSeqs, _ := reader(pub, 1<<20)
	publish(t, pub, 0, 1000, 16<<10, 8, fastSeqs, pubSeqs)
	if q := metric(t, s, "wsd_outbound_buffered_bytes"); q > mark+(16<<10)+64 {
		t.Fatalf("%d bytes queued for the slow client, mark %d", q, mark)
	}
	dropped := metric(t, s, `wsd_outbound_dropped_frames_total{reason="slow_consumer"}`)
	// Usually one episode; a host whose tcp_wmem max is above the kernel's
	// default lets the send buffer grow in steps, each taking part of the
	// queue under the mark and ending an episode.
	if episodes := metric(t, s, `wsd_slow_consumer_total{action="drop"}`); dropped == 0 || episodes < 1 {
		t.Fatalf("dropped %d frames in %d slow-consumer episodes; want some, in at least one", dropped, episodes)
	}

	// Now the slow client reads. Small numbered markers follow until one
	// reaches it: by then it has read everything that was queued.
	slowSeqs, slowDone := reader(slow, 1<<20)
	var got []uint32
	sent := 1000
	for caughtUp := false; !caughtUp; {
		if sent > 1000+500 {
			t.Fatalf("the slow client never caught up (got %d)", len(got))
		}
		publish(t, pub, sent, 1, 16, 0, fastSeqs, pubSeqs)
		sent++
		for drained := false; !drained; {
			select {
			case seq := <-slowSeqs:
				got = append(got, seq)
				caughtUp = caughtUp || seq >= 1000
			case err := <-slowDone:
				t.Fatalf("slow client: %v", err)
			case <-time.After(20 * time.Millisecond):
				drained = true
			}
		}
	}
	// From here on it gets everything, in order.
	publish(t, pub, sent, 20, 1000, 4, fastSeqs, pubSeqs)
	for i := range 20 {
		select {
		case seq := <-slowSeqs:
			if int(seq) != sent+i {
				t.Fatalf("after catching up the slow client got %d, want %d", seq, sent+i)
			}
			got = append(got, seq)
		case <-time.After(wstest.Timeout):
			t.Fatalf("after catching up the slow client got only %d of 20", i)
		}
	}
	sent += 20
	for i := 1; i < len(got); i++ {
		if got[i] <= got[i-1] {
			t.Fatalf("slow client got %d after %d", got[i], got[i-1])
		}
	}
	// Every broadcast either reached it or was counted as dropped.
	if d := metric(t, s, `wsd_outbound_dropped_frames_total{reason="slow_consumer"}`); d != sent-len(got) {
		t.Fatalf("%d broadcasts, %d received by the slow client, %d counted as dropped", sent, len(got), d)
	}
	t.Logf("slow client: %d of %d broadcasts received, %d dropped", len(got), sent, sent-len(got))
}

// TestPingFlood: a client that floods pings and never reads is closed with
// 1013 by the pongs it asks for, even under the drop policy (a reply is
// never dropped).
func TestPingFlood(t *testing.T) {
	s := testserver.Start(t, engine.Config{Loops: 1, MaxOutboundBytes: mark, SlowConsumer: engine.SlowConsumerDrop,
		CloseTimeout: 30 * time.Second}, testserver.Route{Path: "/echo", Handler: engine.Echo{}})
	c := wstest.Dial(t, s.Addr().String(), "/echo", wstest.Options{RecvBuffer: 32 << 10})
	ping := c.Frame(true, frame.OpPing, 0, bytes.Repeat([]byte("p"), 125))
	batch := bytes.Repeat(ping, (64<<10)/len(ping))
	for sent := 0; sent < 16<<20; sent += len(batch) { // 16 MiB of pings: bounded
		if err := c.SendRaw(batch); err != nil {
			t.Fatalf("after %d bytes of pings: %v", sent, err)
		}
	}
	pongs := 0
	for {
		h, p, err := c.ReadFrame()
		if err != nil {
			t.Fatalf("after %d pongs: %v", pongs, err)
		}
		if h.OpCode == frame.OpPong {
			pongs++
			continue
		}
		if code, _, _ := frame.ParseClose(p); h.OpCode != frame.OpClose || code != frame.CloseTryAgainLater {
			t.Fatalf("after %d pongs: %v %q, want close 1013", pongs, h.OpCode, p)
		}
		break
	}
	c.ExpectEOF(t)
	t.Logf("%d pongs, then 1013", pongs)
	waitMetric(t, s, `wsd_connections_closed_by_reason_total{reason="slow_consumer"}`, 1)
}

// TestBytesOutCountsHandshake: the 101 response is counted as bytes out.
func TestBytesOutCountsHandshake(t *testing.T) {
	s := startServer(t, engine.Config{}, nil)
	r := wstest.RawRequest(t, s.Addr().String(), wstest.UpgradeRequest("/echo"))
	if r.Status != 101 {
		t.Fatalf("status %d", r.Status)
	}
	var head bytes.Buffer
	_ = writeHead(&head, r)
	if got := metric(t, s, "wsd_bytes_out_total"); got != head.Len() {
		t.Fatalf("wsd_bytes_out_total %d after a %d-byte 101", got, head.Len())
	}
}

// writeHead re-renders a response head as the server wrote it.
func writeHead(w io.Writer, r *wstest.HTTPResponse) error {
	fmt.Fprintf(w, "HTTP/1.1 101 Switching Protocols\r\n")
	for k, vs := range r.Header {
		for _, v := range vs {
			fmt.Fprintf(w, "%s: %s\r\n", k, v)
		}
	}
	_, err := io.WriteString(w, "\r\n")
	return err
}

// boom panics on "boom" and echoes anything else.
type boom struct{ engine.Echo }

func (boom) OnMessage(c engine.Conn, op frame.OpCode, data []byte) {
	if string(data) == "boom" {
		panic("handler bug")
	}
	_ = c.Write(op, data)
}

// TestHandlerPanic: a panicking handler closes its connection with 1011,
// logs the panic with the connection's id, and the server goes on.
func TestHandlerPanic(t *testing.T) {
	var logs testserver.SyncBuffer
	s := testserver.Start(t, engine.Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))},
		testserver.Route{Path: "/boom", Handler: boom{}})
	addr := s.Addr().String()
	c := wstest.Dial(t, addr, "/boom", wstest.Options{})
	c.Send(frame.OpText, []byte("boom"))
	c.ExpectCloseReply(t, frame.CloseInternalError)
	other := wstest.Dial(t, addr, "/boom", wstest.Options{})
	other.Send(frame.OpText, []byte("still up"))
	if _, p, err := other.ReadMessage(); err != nil || string(p) != "still up" {
		t.Fatalf("after a panic: %q %v", p, err)
	}
	if !regexp.MustCompile(`level=ERROR msg="handler panicked.*conn=\d+ .*panic="handler bug"`).MatchString(logs.String()) {
		t.Fatalf("log lacks the panic with its conn id:\n%s", logs.String())
	}
	waitMetric(t, s, `wsd_connections_closed_by_reason_total{reason="internal_error"}`, 1)
	if metric(t, s, "wsd_handler_panics_total") != 1 {
		t.Fatal("panic not counted")
	}
}
