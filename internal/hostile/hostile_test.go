// Package hostile attacks a real wsd process (the binary, built once) the
// way an anonymous client on the internet could, and measures what that
// costs the server: its resident anonymous memory, read from /proc, and
// the outcome on the wire. Each attack is bounded in bytes and time.
package hostile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/internal/wsdproc"
	"github.com/wsdproject/wsd/internal/wstest"
)

// The servers run with GOGC=25, so that their RSS follows the memory they
// hold rather than the garbage collector's headroom (with the default of
// 100 the heap may reach twice what is live before a collection).
const gogc = "25"

// markBound is what one connection at the default 1 MiB mark may cost in
// RSS: gnet keeps each unsent write in a buffer rounded up to a power of
// two (up to twice the bytes, for frames just over one), the collector's
// 25% headroom on that, and 1 MiB for everything else that moves.
const markBound = 2*MiB*5/4 + MiB

func TestMain(m *testing.M) {
	code := m.Run()
	wsdproc.Cleanup()
	os.Exit(code)
}

// server is one wsd process.
type server struct {
	*wsdproc.Proc
}

// start runs wsd with args on free loopback ports and waits until it listens.
func start(t *testing.T, args ...string) *server {
	t.Helper()
	return startCmd(t, nil, args...)
}

// startCmd is start with the command line wrapped by wrap (a shell that
// sets a resource limit, say): wrap(bin, args) returns the command to run.
func startCmd(t *testing.T, wrap func(bin string, args []string) *exec.Cmd, args ...string) *server {
	t.Helper()
	// The servers run with GOGC=25 (see gogc). The per-connection rate
	// limits are off unless a test turns them back on (a later flag wins):
	// the other attacks flood on purpose, to reach the bound each tests,
	// and a rate limit would end them first.
	return &server{wsdproc.StartWith(t, wsdproc.Options{
		Args: append([]string{"--max-messages-per-sec", "0", "--max-inbound-bytes-per-sec", "0"}, args...),
		Env:  []string{"GOGC=" + gogc},
		Wrap: wrap,
	})}
}

// readRSS returns the resident anonymous memory of process pid in bytes
// (RssAnon: heap, stacks, buffers), what a client can make the server
// hold. The rest of VmRSS is file pages, mostly the binary's own text:
// they come in as code paths first run and the kernel may drop them at
// any time (hosts with proactive reclaim, such as DAMON pageout, do, by a
// megabyte between two samples), noise no attack causes.
func readRSS(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "RssAnon:"); ok {
			kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no RssAnon", pid)
}

// rss returns the server's resident anonymous memory in bytes.
func (s *server) rss(t testing.TB) int {
	t.Helper()
	n, err := readRSS(s.PID())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// watchRSS samples the server's RSS every 20ms until stop is called, which
// returns the highest sample.
func (s *server) watchRSS(t testing.TB) (stop func() int) {
	peak := s.rss(t)
	stopSampling := every(20*time.Millisecond, func() bool {
		n, err := readRSS(s.PID())
		if err != nil {
			return false
		}
		peak = max(peak, n)
		return true
	})
	return func() int {
		stopSampling()
		return max(peak, s.rss(t))
	}
}

// every calls f every period on a goroutine of its own until f returns
// false or stop is called. stop returns once f has returned for the last
// time, so that what f wrote may then be read without a lock.
func every(period time.Duration, f func() bool) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(period)
		defer tk.Stop()
		for {
			select {
			case <-done:
				return
			case <-tk.C:
				if !f() {
					return
				}
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}

// warm makes the server allocate what any busy server holds anyway (loop
// scratch buffers, pools), so that growth measured after it is the attack's.
func warm(t *testing.T, s *server) {
	t.Helper()
	c := wstest.Dial(t, s.WS, "/ws", wstest.Options{})
	msg := []byte(`{"type":"echo","data":"` + strings.Repeat("w", 100<<10) + `"}`)
	for range 20 {
		if err := c.Send(frame.OpText, msg); err != nil {
			t.Fatal(err)
		}
		if _, _, err := c.ReadMessage(); err != nil {
			t.Fatal(err)
		}
	}
	c.Conn.Close()
	time.Sleep(200 * time.Millisecond)
}

const MiB = 1 << 20

// TestLengthOverflowStream: a continuation frame announcing a length near
// 2^63 after a first fragment once wrapped the message-size check; the
// client then streamed 64 MiB and the server kept all of it. Now the
// connection is failed with 1009 at the header and the server's RSS does
// not follow the stream.
func TestLengthOverflowStream(t *testing.T) {
	s := start(t)
	warm(t, s)
	c := wstest.Dial(t, s.WS, "/ws", wstest.Options{})
	before := s.rss(t)
	stop := s.watchRSS(t)
	mask := [4]byte{1, 2, 3, 4}
	wire := frame.AppendMaskedFrame(nil, false, frame.OpBinary, 0, mask, []byte("12345"))
	wire = frame.AppendHeader(wire, frame.Header{OpCode: frame.OpContinuation, Fin: true, Masked: true, Mask: mask, Length: 1<<63 - 5})
	if err := c.SendRaw(wire); err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("A"), 64<<10)
	streamed := 0
	for streamed < 64*MiB {
		if err := c.SendRaw(chunk); err != nil {
			break // the server closed after its close timeout: fine
		}
		streamed += len(chunk)
	}
	_, _, err := c.ReadMessage()
	peak := stop()
	var fe *frame.Error
	if !errors.As(err, &fe) || fe.Code != frame.CloseMessageTooBig {
		t.Fatalf("after the overflowing header and %d MiB: %v, want close 1009", streamed/MiB, err)
	}
	growth := peak - before
	t.Logf("streamed %d MiB after the header; server anonymous RSS %.1f MiB before, peak growth %.2f MiB", streamed/MiB, float64(before)/MiB, float64(growth)/MiB)
	if growth >= 4*MiB {
		t.Fatalf("server RSS grew by %.1f MiB under the stream, want < 4 MiB", float64(growth)/MiB)
	}
	c.Conn.Close() // our FIN ends the server's drain of the half-closed connection
	s.WaitMetric(t, `wsd_connections_closed_by_code_total{code="1009"}`, 1)
}

// TestPingFloodRSS: a client that floods pings and never reads is closed
// with 1013 once the pongs it asked for pass --max-outbound-bytes, and the
// server holds no more than that mark for it meanwhile.
func TestPingFloodRSS(t *testing.T) {
	s := start(t, "--close-timeout", "30s")
	warm(t, s)
	c := wstest.Dial(t, s.WS, "/ws", wstest.Options{RecvBuffer: 32 << 10})
	before := s.rss(t)
	stop := s.watchRSS(t)
	ping := frame.AppendMaskedFrame(nil, true, frame.OpPing, 0, [4]byte{9, 9, 9, 9}, bytes.Repeat([]byte("p"), 125))
	batch := bytes.Repeat(ping, (64<<10)/len(ping))
	for sent := 0; sent < 64*MiB; sent += len(batch) {
		if err := c.SendRaw(batch); err != nil {
			t.Fatalf("after %d MiB of pings: %v", sent/MiB, err)
		}
	}
	peakFlood := stop()
	code := readUntilClose(t, c)
	if code != frame.CloseTryAgainLater {
		t.Fatalf("close %d, want 1013", code)
	}
	c.ExpectEOF(t)
	growth := peakFlood - before
	t.Logf("64 MiB of pings; server anonymous RSS %.1f MiB before, peak growth %.2f MiB (mark 1 MiB)", float64(before)/MiB, float64(growth)/MiB)
	if growth >= markBound {
		t.Fatalf("server RSS grew by %.1f MiB under the flood, want under %.1f MiB for a 1 MiB mark", float64(growth)/MiB, float64(markBound)/MiB)
	}
	s.WaitMetric(t, `wsd_connections_closed_by_reason_total{reason="slow_consumer"}`, 1)
}

// readUntilClose reads frames until a close frame and returns its code.
func readUntilClose(t *testing.T, c *wstest.Client) frame.CloseCode {
	t.Helper()
	for {
		h, p, err := c.ReadFrame()
		if err != nil {
			t.Fatalf("waiting for a close frame: %v", err)
		}
		if h.OpCode == frame.OpClose {
			code, _, err := frame.ParseClose(p)
			if err != nil {
				t.Fatal(err)
			}
			return code
		}
	}
}

// channel is the channel TestNonReaderRSS publishes to.
const channel = "bench"

// TestNonReaderRSS: 1,000 publications of 16 KiB go out on one channel
// while one of its subscribers never reads. With --slow-consumer close it
// is closed with 1013; with drop it keeps at most the mark queued and the
// frames it misses are counted. Either way the fast subscribers on the
// same loop (a reader and the publisher) get every publication, in order,
// and the server's RSS grows by less than one connection's markBound over
// what the same publications cost without the non-reader (a first round,
// run before it subscribes, that also brings the heap to its working
// size).
//
// The server runs with --allow-client-publish (the publisher is an
// anonymous client) and --history-size 0. The default history would keep
// the channel's last 100 publications (1.6 MiB here): live heap whose
// collector headroom absorbs part of what the non-reader costs (the
// growth measured is lower with it, by a few tenths of a MiB), and a copy
// of every publication turned over as garbage. Without it the rounds
// weigh delivery alone, and the bound is as strict as it was before
// channels had history.
func TestNonReaderRSS(t *testing.T) {
	for _, policy := range []string{"close", "drop"} {
		t.Run(policy, func(t *testing.T) {
			s := start(t, "--loops", "1", "--slow-consumer", policy, "--close-timeout", "30s",
				"--allow-client-publish", "--history-size", "0")
			fast := wstest.Dial(t, s.WS, "/ws", wstest.Options{})
			subscribe(t, fast)
			pub := wstest.Dial(t, s.WS, "/ws", wstest.Options{})
			subscribe(t, pub)
			const n = 1000
			publishRound(t, pub, fast, 0, n)
			before := s.rss(t)

			slow := wstest.Dial(t, s.WS, "/ws", wstest.Options{RecvBuffer: 32 << 10})
			subscribe(t, slow) // its ack is the last thing it reads
			stop := s.watchRSS(t)
			publishRound(t, pub, fast, n, n)
			// The outbound gauge is refreshed every tick (1 s): wait for the
			// non-reader to show in it.
			deadline := time.Now().Add(wstest.Timeout)
			for policy == "drop" && s.Metric(t, "wsd_outbound_backlogged_connections") != 1 {
				if time.Now().After(deadline) {
					t.Fatal("the non-reader never shows in wsd_outbound_backlogged_connections")
				}
				time.Sleep(50 * time.Millisecond)
			}
			queued := s.Metric(t, "wsd_outbound_buffered_bytes")
			peak := stop()
			growth := peak - before
			t.Logf("server anonymous RSS %.1f MiB after a round without the non-reader; peak growth %.2f MiB in the round with it; %d bytes queued",
				float64(before)/MiB, float64(growth)/MiB, queued)
			if growth >= markBound {
				t.Fatalf("server RSS grew by %.1f MiB, want under %.1f MiB for a 1 MiB mark", float64(growth)/MiB, float64(markBound)/MiB)
			}
			if policy == "close" {
				if code := readUntilClose(t, slow); code != frame.CloseTryAgainLater {
					t.Fatalf("close %d, want 1013", code)
				}
				s.WaitMetric(t, `wsd_connections_closed_by_code_total{code="1013"}`, 1)
				return
			}
			// The mark, plus the frame that crossed it: 16 KiB of data, its
			// number and the message envelope (channel, offset, epoch).
			if queued > MiB+(16<<10)+256 {
				t.Fatalf("%d bytes queued for the non-reader, mark 1 MiB", queued)
			}
			dropped := s.Metric(t, `wsd_outbound_dropped_frames_total{reason="slow_consumer"}`)
			// Usually one episode; a host whose tcp_wmem max is above the
			// kernel's default lets the send buffer grow in steps, each
			// taking part of the queue under the mark and ending one.
			if episodes := s.Metric(t, `wsd_slow_consumer_total{action="drop"}`); dropped == 0 || episodes < 1 {
				t.Fatalf("%d frames dropped in %d episodes, want some, in at least one", dropped, episodes)
			}
			// What it reads is the publications that were not dropped, in order.
			got, last := 0, -1
			for got < n-dropped {
				_, p, err := slow.ReadMessage()
				if err != nil {
					t.Fatalf("after %d: %v", got, err)
				}
				seq, err := messageSeq(p)
				if err != nil {
					t.Fatalf("after %d: %v", got, err)
				}
				if seq <= last || seq < n {
					t.Fatalf("publication %d after %d", seq, last)
				}
				last = seq
				got++
			}
			t.Logf("non-reader: %d received, %d dropped", got, dropped)
		})
	}
}

// subscribe subscribes c to the channel and reads the ack.
func subscribe(t *testing.T, c *wstest.Client) {
	t.Helper()
	if err := c.Send(frame.OpText, []byte(`{"type":"subscribe","channel":"`+channel+`","id":"sub"}`)); err != nil {
		t.Fatal(err)
	}
	_, p, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	var ack struct{ Type, ID, Channel string }
	if err := json.Unmarshal(p, &ack); err != nil || ack.Type != "ack" || ack.ID != "sub" || ack.Channel != channel {
		t.Fatalf("subscribe answered %s", p)
	}
}

// publishRound publishes n numbered publications of 16 KiB from pub,
// starting at from, at most 8 ahead of what pub and fast (subscribers
// both, which read as fast as they can) have received, pub its ack and
// the publication, and waits until both have all of them. Any error
// answer, SERVER_BUSY included, fails the test: with at most 8 in flight
// the loop's backlog stays far below --max-broadcast-backlog.
func publishRound(t *testing.T, pub, fast *wstest.Client, from, n int) {
	t.Helper()
	// The publisher first: a refused publication is reported at once, not
	// after fast's wait for it.
	seen := []<-chan seen{readPublisher(pub, from, n), readMessages(fast, from, n)}
	data := strings.Repeat("b", 16<<10)
	for i := from; i < from+n; i++ {
		for _, ch := range seen {
			if i-8 >= from {
				waitSeen(t, ch, i-8)
			}
		}
		msg := fmt.Sprintf(`{"type":"publish","channel":"%s","id":%d,"data":"%06d%s"}`, channel, i, i, data)
		if err := pub.Send(frame.OpText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	for _, ch := range seen {
		waitSeen(t, ch, from+n-1)
	}
}

// seen is a reader's report: publication i arrived (or was acknowledged),
// or, as the last report before the channel closes, why it stopped.
type seen struct {
	i   int
	err error
}

// readMessages reads n numbered publications on c (a subscriber) in the
// background and reports the number of each as it arrives; it stops after
// the last, or at the first error, gap or other message (which waitSeen
// then reports).
func readMessages(c *wstest.Client, from, n int) <-chan seen {
	return readStream(c, from, n, false)
}

// readPublisher reads what the publisher c, a subscriber too, gets for n
// numbered publications: each one's ack and the publication itself, each
// kind in order (the two interleave as they may). It reports i once both
// of i have arrived, and stops as readMessages does (an error answer to a
// publication is the error it stops with).
func readPublisher(c *wstest.Client, from, n int) <-chan seen {
	return readStream(c, from, n, true)
}

func readStream(c *wstest.Client, from, n int, acks bool) <-chan seen {
	out := make(chan seen, n+1)
	go func() {
		defer close(out)
		nextMsg, nextAck, reported := from, from, from-1
		if !acks {
			nextAck = from + n
		}
		for nextMsg < from+n || nextAck < from+n {
			_, p, err := c.ReadMessage()
			if err == nil {
				if bytes.HasPrefix(p, messagePrefix) {
					err = expect(p, "publication", messageSeq, &nextMsg, from+n)
				} else {
					err = expect(p, "ack of publication", ackID, &nextAck, from+n)
				}
			}
			if err != nil {
				out <- seen{err: fmt.Errorf("after %d: %w", reported, err)}
				return
			}
			for ; reported < min(nextMsg, nextAck)-1; reported++ {
				out <- seen{i: reported + 1}
			}
		}
	}()
	return out
}

// expect checks that p, parsed, is the next of its kind (below end).
func expect(p []byte, what string, parse func([]byte) (int, error), next *int, end int) error {
	got, err := parse(p)
	switch {
	case err != nil:
		return err
	case got != *next || got >= end:
		return fmt.Errorf("%s %d, want %d", what, got, *next)
	}
	*next++
	return nil
}

// ackID returns the id of a publication's ack, or why p is not one.
func ackID(p []byte) (int, error) {
	var ack struct {
		Type, Channel, Code, Message string
		ID                           int
	}
	if err := json.Unmarshal(p, &ack); err != nil {
		return 0, fmt.Errorf("%w: %.120s", err, p)
	}
	if ack.Type == "error" {
		return 0, fmt.Errorf("publication %d refused: %s: %s", ack.ID, ack.Code, ack.Message)
	}
	if ack.Type != "ack" || ack.Channel != channel {
		return 0, fmt.Errorf("not an ack of a publication: %.120s", p)
	}
	return ack.ID, nil
}

// messagePrefix begins every publication the channel's subscribers get:
// {"type":"message","channel":…,"offset":N,"epoch":…,"data":…}.
var messagePrefix = []byte(`{"type":"message","channel":"` + channel + `",`)

// messageSeq returns the number at the start of a publication's data.
func messageSeq(p []byte) (int, error) {
	const field = `,"data":"`
	i := bytes.Index(p, []byte(field))
	if !bytes.HasPrefix(p, messagePrefix) || i < 0 || len(p) < i+len(field)+6 {
		return 0, fmt.Errorf("not a publication of the channel: %.120s", p)
	}
	return strconv.Atoi(string(p[i+len(field):][:6]))
}

// waitSeen waits until a reader has reported i (bounded).
func waitSeen(t *testing.T, ch <-chan seen, i int) {
	t.Helper()
	if i < 0 {
		return
	}
	for {
		select {
		case s, ok := <-ch:
			if !ok {
				t.Fatalf("a reader stopped before publication %d", i)
			}
			if s.err != nil {
				t.Fatal(s.err)
			}
			if s.i >= i {
				return
			}
		case <-time.After(wstest.Timeout):
			t.Fatalf("a reader did not get publication %d (or its ack) in %v", i, wstest.Timeout)
		}
	}
}
