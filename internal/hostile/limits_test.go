package hostile

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/internal/wstest"
)

// limited is the counter of a per-connection limit that fired.
func limited(kind string) string { return `wsd_limits_fired_total{kind="` + kind + `"}` }

// expectCloseFrame reads messages until the close frame and checks it.
func expectCloseFrame(t *testing.T, c *wstest.Client, code frame.CloseCode, reason string) []string {
	t.Helper()
	var msgs []string
	for {
		_, p, err := c.ReadMessage()
		var fe *frame.Error
		if errors.As(err, &fe) {
			if fe.Code != code || !strings.Contains(fe.Reason, reason) {
				t.Fatalf("closed with %d %q, want %d %q", fe.Code, fe.Reason, code, reason)
			}
			return msgs
		}
		if err != nil {
			t.Fatalf("reading until the close frame: %v (after %q)", err, msgs)
		}
		msgs = append(msgs, string(p))
	}
}

// TestMessageFlood: past its burst a connection's messages are refused with
// RATE_LIMIT_EXCEEDED (their ids echoed, nothing done); if it goes on
// without slowing down it is closed with 1008. A client that slows down
// keeps its connection, and the others notice nothing.
func TestMessageFlood(t *testing.T) {
	s := start(t, "--max-messages-per-sec", "10", "--message-burst", "5", "--rate-limit-strikes", "3")
	other := wstest.Dial(t, s.WS, "/ws", wstest.Options{})
	c := wstest.Dial(t, s.WS, "/ws", wstest.Options{})
	var flood []byte
	for i := range 9 {
		flood = append(flood, c.Frame(true, frame.OpText, 0, fmt.Appendf(nil, `{"type":"echo","id":%d,"data":"m%d"}`, i, i))...)
	}
	if err := c.SendRaw(flood); err != nil { // one write: one read on the server, one instant
		t.Fatal(err)
	}
	msgs := expectCloseFrame(t, c, frame.ClosePolicyViolation, "message rate exceeded")
	c.Conn.Close()
	if len(msgs) != 8 {
		t.Fatalf("%d replies before the close, want 5 echoes and 3 refusals: %q", len(msgs), msgs)
	}
	for i, m := range msgs {
		want := fmt.Sprintf(`"data":"m%d"`, i)
		if i >= 5 {
			want = fmt.Sprintf(`"id":%d,"code":"RATE_LIMIT_EXCEEDED"`, i)
		}
		if !strings.Contains(m, want) {
			t.Fatalf("reply %d: %s, want %s", i, m, want)
		}
	}
	s.WaitMetric(t, limited("message_rate"), 3)
	s.WaitMetric(t, limited("message_rate_close"), 1)
	s.WaitMetric(t, `wsd_connections_closed_by_reason_total{reason="rate_limit"}`, 1)
	echoes(t, other)

	// Refused, then slower: the connection stays.
	p := wstest.Dial(t, s.WS, "/ws", wstest.Options{})
	flood = flood[:0]
	for i := range 6 {
		flood = append(flood, p.Frame(true, frame.OpText, 0, fmt.Appendf(nil, `{"type":"echo","id":%d}`, i))...)
	}
	if err := p.SendRaw(flood); err != nil {
		t.Fatal(err)
	}
	for range 6 {
		if _, _, err := p.ReadMessage(); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(300 * time.Millisecond) // 3 tokens back at 10/s
	echoes(t, p)
}

// TestInboundByteFlood: a connection sending more bytes per second than
// allowed (here in messages well under the size limit) is closed with
// 1008, counted as a violation of its address; the others are unaffected.
func TestInboundByteFlood(t *testing.T) {
	s := start(t, "--max-inbound-bytes-per-sec", "65536", "--max-message-bytes", "65536")
	other := wstest.Dial(t, s.WS, "/ws", wstest.Options{})
	c := wstest.Dial(t, s.WS, "/ws", wstest.Options{})
	msg := []byte(`{"type":"echo","data":"` + strings.Repeat("b", 30<<10) + `"}`)
	var flood []byte
	for range 3 { // 90 KiB at once: past a burst of 64 KiB
		flood = append(flood, c.Frame(true, frame.OpText, 0, msg)...)
	}
	if err := c.SendRaw(flood); err != nil {
		t.Fatal(err)
	}
	expectCloseFrame(t, c, frame.ClosePolicyViolation, "inbound byte rate exceeded")
	c.Conn.Close()
	s.WaitMetric(t, limited("inbound_bytes"), 1)
	echoes(t, other)
}

// TestIdleTimeout: a connection that sends no data message for the idle
// timeout is closed with 1000, even though it answers pings and sends its
// own; one that keeps talking stays.
func TestIdleTimeout(t *testing.T) {
	s := start(t, "--idle-timeout", "1s", "--ping-interval", "200ms")
	quiet := wstest.Dial(t, s.WS, "/ws", wstest.Options{})
	talker := wstest.Dial(t, s.WS, "/ws", wstest.Options{})
	talked := make(chan error, 1)
	go func() { // an echo every 100 ms, for twice the idle timeout
		for range 20 {
			if err := talker.Send(frame.OpText, []byte(`{"type":"echo","id":1}`)); err != nil {
				talked <- err
				return
			}
			if _, _, err := talker.ReadMessage(); err != nil {
				talked <- err
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		talked <- nil
	}()
	go func() {
		for range 40 {
			if quiet.Send(frame.OpPing, []byte("x")) != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	start := time.Now()
	expectCloseFrame(t, quiet, frame.CloseNormal, "idle timeout")
	if d := time.Since(start); d < time.Second {
		t.Fatalf("closed after %v, before the idle timeout", d)
	}
	if err := <-talked; err != nil {
		t.Fatalf("the connection that kept talking: %v", err)
	}
	s.WaitMetric(t, limited("idle_timeout"), 1)
}

// TestVanishedClient: a client process that stops (SIGSTOP: its socket
// stays open, nothing answers) is dropped after the missed-pong limit.
func TestVanishedClient(t *testing.T) {
	s := start(t, "--ping-interval", "200ms", "--max-missed-pongs", "3")
	cmd := exec.Command(os.Args[0], "-test.run", "^TestHelperClient$")
	cmd.Env = append(os.Environ(), "WSD_HOSTILE_CLIENT="+s.WS)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "connected") {
		t.Fatalf("helper client: %q, %v", line, err)
	}
	time.Sleep(500 * time.Millisecond) // pings come and go: the helper answers them
	if n := s.Metric(t, "wsd_heartbeat_timeouts_total"); n != 0 {
		t.Fatalf("%d heartbeat timeouts while the client was running", n)
	}
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	s.WaitMetric(t, "wsd_heartbeat_timeouts_total", 1)
	s.WaitMetric(t, `wsd_connections_closed_by_reason_total{reason="ping_timeout"}`, 1)
	s.WaitMetric(t, "wsd_connections_open", 0)
	echoes(t, wstest.Dial(t, s.WS, "/ws", wstest.Options{}))
	_ = cmd.Process.Signal(syscall.SIGCONT)
}

// TestHelperClient is the client process of TestVanishedClient: it
// connects, says so, and answers pings until it is stopped or killed.
func TestHelperClient(t *testing.T) {
	addr := os.Getenv("WSD_HOSTILE_CLIENT")
	if addr == "" {
		t.Skip("run by TestVanishedClient")
	}
	conn, _, _, err := ws.Dial(t.Context(), "ws://"+addr+"/ws")
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("connected")
	for {
		// ReadServerData answers pings and returns on data or close.
		if _, _, err := wsutil.ReadServerData(conn); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			return
		}
	}
}
