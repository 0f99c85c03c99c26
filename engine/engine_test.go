package engine_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/wsdproject/wsd/engine"
	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/internal/testserver"
	"github.com/wsdproject/wsd/internal/wstest"
)

// startServer starts a server with an echo route at /echo plus the given
// routes (which accept the subprotocols "wsd.json" and "chat").
func startServer(t testing.TB, cfg engine.Config, routes map[string]engine.Handler) *engine.Server {
	t.Helper()
	rs := []testserver.Route{{Path: "/echo", Handler: engine.Echo{}}}
	for p, h := range routes {
		rs = append(rs, testserver.Route{Path: p, Handler: h, Options: engine.RouteOptions{Subprotocols: []string{"wsd.json", "chat"}}})
	}
	return testserver.Start(t, cfg, rs...)
}

func TestEchoSmoke(t *testing.T) {
	s := startServer(t, engine.Config{}, nil)
	c := wstest.Dial(t, s.Addr().String(), "/echo", wstest.Options{})
	for _, n := range []int{0, 1, 125, 126, 65535, 65536, 1 << 20} {
		p := bytes.Repeat([]byte("x"), n)
		if err := c.Send(frame.OpText, p); err != nil {
			t.Fatal(err)
		}
		op, got, err := c.ReadMessage()
		if err != nil || op != frame.OpText || !bytes.Equal(got, p) {
			t.Fatalf("echo of %d bytes: op %v, %d bytes, err %v", n, op, len(got), err)
		}
	}
}

// TestPartialReads sends frames split across many TCP writes (headers and
// payloads cut anywhere) and many frames in one write.
func TestPartialReads(t *testing.T) {
	s := startServer(t, engine.Config{}, nil)
	c := wstest.Dial(t, s.Addr().String(), "/echo", wstest.Options{})
	payload := bytes.Repeat([]byte("abcdefghij"), 30) // 300 bytes: 16-bit length
	wire := c.Frame(true, frame.OpBinary, 0, payload)
	// One byte per write, with a pause so each arrives in its own read.
	for i := range wire {
		if err := c.SendRaw(wire[i : i+1]); err != nil {
			t.Fatal(err)
		}
		if i < 16 || i%50 == 0 {
			time.Sleep(2 * time.Millisecond)
		}
	}
	if _, got, err := c.ReadMessage(); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("byte-by-byte frame: %d bytes, %v", len(got), err)
	}
	// A fragmented message whose fragments straddle writes.
	var msg []byte
	msg = append(msg, c.Frame(false, frame.OpText, 0, []byte("Hello, "))...)
	msg = append(msg, c.Frame(true, frame.OpPing, 0, []byte("p"))...)
	msg = append(msg, c.Frame(true, frame.OpContinuation, 0, []byte("world"))...)
	for _, cut := range []int{3, 9, 17} {
		if err := c.SendRaw(msg[:cut]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond)
		msg = msg[cut:]
	}
	c.SendRaw(msg)
	h, p, err := c.ReadFrame()
	if err != nil || h.OpCode != frame.OpPong || string(p) != "p" {
		t.Fatalf("expected pong p, got %v %q %v", h.OpCode, p, err)
	}
	if _, got, err := c.ReadMessage(); err != nil || string(got) != "Hello, world" {
		t.Fatalf("fragmented: %q %v", got, err)
	}
	// Many frames in one write.
	var batch []byte
	for i := range 200 {
		batch = append(batch, c.Frame(true, frame.OpText, 0, []byte(fmt.Sprintf("m%03d", i)))...)
	}
	c.SendRaw(batch)
	for i := range 200 {
		_, got, err := c.ReadMessage()
		if want := fmt.Sprintf("m%03d", i); err != nil || string(got) != want {
			t.Fatalf("batched message %d: %q %v", i, got, err)
		}
	}
}

// TestPipelinedHandshake: frames sent in the same write as the upgrade
// request are processed right after the handshake.
func TestPipelinedHandshake(t *testing.T) {
	s := startServer(t, engine.Config{}, nil)
	conn, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	mask := [4]byte{9, 8, 7, 6}
	req := []byte(wstest.UpgradeRequest("/echo"))
	req = frame.AppendMaskedFrame(req, true, frame.OpText, 0, mask, []byte("first"))
	req = frame.AppendMaskedFrame(req, true, frame.OpBinary, 0, mask, []byte("second"))
	conn.Write(req)
	conn.SetReadDeadline(time.Now().Add(wstest.Timeout))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	c := &wstest.Client{Conn: conn, R: br}
	for _, want := range []string{"first", "second"} {
		if _, got, err := c.ReadMessage(); err != nil || string(got) != want {
			t.Fatalf("got %q %v, want %q", got, err, want)
		}
	}
}

// TestProtocolViolations checks that each violation closes with the right
// code and that the server then closes TCP.
func TestProtocolViolations(t *testing.T) {
	s := startServer(t, engine.Config{MaxMessageBytes: 1000}, nil)
	addr := s.Addr().String()
	mask := [4]byte{1, 2, 3, 4}
	cases := []struct {
		name string
		wire []byte
		code frame.CloseCode
	}{
		{"unmasked frame", frame.AppendFrame(nil, frame.OpText, 0, []byte("hi")), 1002},
		{"reserved bits", frame.AppendMaskedFrame(nil, true, frame.OpText, 0x2, mask, []byte("hi")), 1002},
		{"rsv1 without deflate", frame.AppendMaskedFrame(nil, true, frame.OpText, frame.Rsv1, mask, []byte("hi")), 1002},
		{"reserved opcode", frame.AppendMaskedFrame(nil, true, 5, 0, mask, nil), 1002},
		{"fragmented ping", frame.AppendMaskedFrame(nil, false, frame.OpPing, 0, mask, nil), 1002},
		{"ping over 125 bytes", frame.AppendMaskedFrame(nil, true, frame.OpPing, 0, mask, make([]byte, 126)), 1002},
		{"continuation first", frame.AppendMaskedFrame(nil, true, frame.OpContinuation, 0, mask, []byte("x")), 1002},
		{"invalid utf8", frame.AppendMaskedFrame(nil, true, frame.OpText, 0, mask, []byte{0xce, 0xba, 0xff}), 1007},
		{"message too big", frame.AppendMaskedFrame(nil, true, frame.OpBinary, 0, mask, make([]byte, 1001)), 1009},
		{"bad close code", frame.AppendMaskedFrame(nil, true, frame.OpClose, 0, mask, []byte{0x03, 0xed}), 1002},
		{"one-byte close", frame.AppendMaskedFrame(nil, true, frame.OpClose, 0, mask, []byte{0x03}), 1002},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := wstest.Dial(t, addr, "/echo", wstest.Options{})
			if err := c.SendRaw(tc.wire); err != nil {
				t.Fatal(err)
			}
			c.ExpectClose(t, tc.code)
		})
	}
}

// TestCloseHandshake covers both directions of the close handshake.
func TestCloseHandshake(t *testing.T) {
	cl := closer{writeErr: make(chan error, 1)}
	s := startServer(t, engine.Config{}, map[string]engine.Handler{"/closer": cl})
	addr := s.Addr().String()

	// Client-initiated: the server echoes the code and closes TCP.
	c := wstest.Dial(t, addr, "/echo", wstest.Options{})
	c.SendRaw(c.Frame(true, frame.OpClose, 0, []byte{0x0f, 0xa0, 'b', 'y', 'e'})) // 4000 "bye"
	c.ExpectClose(t, 4000)

	// An empty close frame is answered with an empty one.
	c = wstest.Dial(t, addr, "/echo", wstest.Options{})
	c.Send(frame.OpClose, nil)
	h, p, err := c.ReadFrame()
	if err != nil || h.OpCode != frame.OpClose || len(p) != 0 {
		t.Fatalf("reply to empty close: %v %x %v", h.OpCode, p, err)
	}
	c.ExpectEOF(t)

	// Server-initiated (a handler calls Close): the server waits for our
	// close frame, then closes TCP.
	c = wstest.Dial(t, addr, "/closer", wstest.Options{})
	c.Send(frame.OpText, []byte("close me"))
	h, p, err = c.ReadFrame()
	if err != nil || h.OpCode != frame.OpClose {
		t.Fatalf("want close frame, got %v %v", h.OpCode, err)
	}
	if code, reason, _ := frame.ParseClose(p); code != 4321 || string(reason) != "as asked" {
		t.Fatalf("close %d %q", code, reason)
	}
	if err := <-cl.writeErr; err != engine.ErrClosing {
		t.Fatalf("write after Close: %v, want ErrClosing", err)
	}
	c.Send(frame.OpText, []byte("ignored after close")) // data after a close is dropped
	c.Send(frame.OpClose, p)
	c.ExpectEOF(t)
}

// closer closes every connection that sends a message, and reports what
// a write after Close returned (handlers must not assert by panicking: the
// engine would close the connection with 1011, hiding the failure).
type closer struct {
	engine.Echo
	writeErr chan error
}

func (h closer) OnMessage(c engine.Conn, op frame.OpCode, data []byte) {
	c.Close(4321, "as asked")
	h.writeErr <- c.WriteText([]byte("too late"))
}

// TestHandshakeStatuses checks the HTTP answers to bad upgrade requests.
func TestHandshakeStatuses(t *testing.T) {
	s := startServer(t, engine.Config{MaxHandshakeBytes: 1024}, map[string]engine.Handler{"/ws": engine.Echo{}})
	addr := s.Addr().String()
	up := wstest.UpgradeRequest
	cases := []struct {
		name    string
		request string
		status  int
		header  [2]string
	}{
		{"valid", up("/echo"), 101, [2]string{"Sec-Websocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="}},
		{"query string ignored", up("/echo?x=1"), 101, [2]string{}},
		{"unknown path", up("/nope"), 404, [2]string{}},
		{"wrong version", strings.Replace(up("/echo"), "Version: 13", "Version: 8", 1), 426, [2]string{"Sec-Websocket-Version", "13"}},
		{"missing key", strings.Replace(up("/echo"), "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "", 1), 400, [2]string{}},
		{"bad key", strings.Replace(up("/echo"), "dGhlIHNhbXBsZSBub25jZQ==", "short", 1), 400, [2]string{}},
		{"missing upgrade", strings.Replace(up("/echo"), "Upgrade: websocket\r\n", "", 1), 400, [2]string{}},
		{"missing host", strings.Replace(up("/echo"), "Host: test\r\n", "", 1), 400, [2]string{}},
		{"POST", strings.Replace(up("/echo"), "GET", "POST", 1), 405, [2]string{"Allow", "GET"}},
		{"HTTP/1.0", strings.Replace(up("/echo"), "HTTP/1.1", "HTTP/1.0", 1), 505, [2]string{}},
		{"garbage request line", "GET\r\n\r\n", 400, [2]string{}},
		{"not HTTP", "\x16\x03\x01\x02\x00\r\n\r\n", 400, [2]string{}},
		{"too large", up("/echo", "X-Big: "+strings.Repeat("a", 2000)), 431, [2]string{}},
		{"subprotocol chosen", up("/ws", "Sec-WebSocket-Protocol: other, chat, wsd.json"), 101, [2]string{"Sec-Websocket-Protocol", "chat"}},
		{"no matching subprotocol", up("/ws", "Sec-WebSocket-Protocol: other"), 101, [2]string{"Sec-Websocket-Protocol", ""}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := wstest.RawRequest(t, addr, tc.request)
			if r.Status != tc.status {
				t.Fatalf("status %d, want %d (body %q)", r.Status, tc.status, r.Body)
			}
			if tc.header[0] != "" {
				if got := r.Header.Get(tc.header[0]); got != tc.header[1] {
					t.Fatalf("%s: %q, want %q", tc.header[0], got, tc.header[1])
				}
			}
			if tc.status != 101 {
				// wsd closes after every refusal, and says so.
				if !r.Close {
					t.Fatalf("no Connection: close on a %d", tc.status)
				}
				r.Conn.SetReadDeadline(time.Now().Add(wstest.Timeout))
				if n, err := r.R.Read(make([]byte, 1)); err == nil {
					t.Fatalf("%d bytes after the %d response, want the connection closed", n, tc.status)
				}
			}
		})
	}
	var m bytes.Buffer
	s.WriteMetrics(&m)
	for _, want := range []string{
		`wsd_handshake_failures_total{reason="not_found"} 1`,
		`wsd_handshake_failures_total{reason="unsupported_version"} 1`,
		`wsd_handshake_failures_total{reason="request_too_large"} 1`,
		`wsd_handshake_failures_total{reason="method_not_allowed"} 1`,
	} {
		if !strings.Contains(m.String(), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// TestHandshakeTimeout: a client that never finishes its request gets 408
// and is disconnected (slowloris).
func TestHandshakeTimeout(t *testing.T) {
	s := startServer(t, engine.Config{HandshakeTimeout: 200 * time.Millisecond}, nil)
	conn, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	io.WriteString(conn, "GET /echo HTTP/1.1\r\nHost: x\r\n") // and nothing more
	conn.SetReadDeadline(time.Now().Add(wstest.Timeout))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("got %v, %v; want 408", resp, err)
	}
	// A timeout may come late (a loaded machine), never early.
	if elapsed := time.Since(start); elapsed < 200*time.Millisecond {
		t.Fatalf("408 after %v, before the 200ms timeout", elapsed)
	}
}

// TestHeartbeat: an idle client that answers pings stays; one that answers
// nothing is dropped after MaxMissedPongs pings.
func TestHeartbeat(t *testing.T) {
	// Generous intervals: the answering client must never look dead, even
	// on a loaded machine under the race detector.
	s := startServer(t, engine.Config{PingInterval: 250 * time.Millisecond, MaxMissedPongs: 3}, nil)
	addr := s.Addr().String()

	silent := wstest.Dial(t, addr, "/echo", wstest.Options{})
	pings := 0
	for {
		h, _, err := silent.ReadFrame()
		if err != nil {
			t.Fatalf("after %d pings: %v", pings, err)
		}
		if h.OpCode == frame.OpPing {
			pings++
			continue
		}
		if h.OpCode != frame.OpClose {
			t.Fatalf("unexpected %v", h.OpCode)
		}
		break
	}
	if pings != 3 {
		t.Fatalf("dropped after %d pings, want 3", pings)
	}
	silent.ExpectEOF(t)

	alive := wstest.Dial(t, addr, "/echo", wstest.Options{})
	for pings = 0; pings < 5; {
		h, p, err := alive.ReadFrame()
		if err != nil {
			t.Fatalf("answering client dropped after %d pings: %v", pings, err)
		}
		if h.OpCode == frame.OpPing {
			pings++
			alive.Send(frame.OpPong, p)
		}
	}
	var m bytes.Buffer
	s.WriteMetrics(&m)
	if !strings.Contains(m.String(), "wsd_heartbeat_timeouts_total 1\n") {
		t.Errorf("metrics: %s", grep(m.String(), "heartbeat"))
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestNoGoroutinePerConnection opens 2,000 connections and checks that the
// process's goroutine count does not grow with them.
func TestNoGoroutinePerConnection(t *testing.T) {
	s := startServer(t, engine.Config{}, nil)
	addr := s.Addr().String()
	// Warm up: the first connection on each loop sets the loop up.
	for range 4 {
		c := wstest.Dial(t, addr, "/echo", wstest.Options{})
		c.Send(frame.OpText, []byte("warm"))
		c.ReadMessage()
	}
	time.Sleep(100 * time.Millisecond)
	before := runtime.NumGoroutine()
	const n = 2000
	conns := make([]*wstest.Client, 0, n)
	for range n {
		conns = append(conns, wstest.Dial(t, addr, "/echo", wstest.Options{}))
	}
	// Every connection works.
	for i, c := range conns {
		if i%100 == 0 {
			c.Send(frame.OpText, []byte("still here"))
			if _, p, err := c.ReadMessage(); err != nil || string(p) != "still here" {
				t.Fatalf("conn %d: %q %v", i, p, err)
			}
		}
	}
	if open := s.OpenConnections(); open < n {
		t.Fatalf("server has %d connections open, want at least %d", open, n)
	}
	time.Sleep(100 * time.Millisecond) // let the dialers' short-lived helpers exit
	after := runtime.NumGoroutine()
	t.Logf("goroutines: %d before, %d with %d more connections", before, after, n)
	if after > before+10 {
		t.Fatalf("goroutines grew from %d to %d with %d connections", before, after, n)
	}
}

// TestShutdown: every client gets close 1001, new connections are refused,
// and Shutdown returns once all are closed.
func TestShutdown(t *testing.T) {
	s := startServer(t, engine.Config{}, nil)
	addr := s.Addr().String()
	var cs []*wstest.Client
	for range 50 {
		cs = append(cs, wstest.Dial(t, addr, "/echo", wstest.Options{}))
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- s.Shutdown(ctx)
	}()
	for _, c := range cs {
		h, p, err := c.ReadFrame()
		if err != nil || h.OpCode != frame.OpClose {
			t.Fatalf("want close, got %v %v", h.OpCode, err)
		}
		if code, _, _ := frame.ParseClose(p); code != frame.CloseGoingAway {
			t.Fatalf("close code %d, want 1001", code)
		}
		c.Send(frame.OpClose, p)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		c.ExpectEOF(t)
	}
}

// greeter writes a greeting in OnOpen and, on /bye, closes at once.
type greeter struct{ engine.Echo }

func (greeter) OnOpen(c engine.Conn) {
	c.WriteText([]byte("hello " + c.Path()))
	if c.Path() == "/bye" {
		c.Close(4000, "not today")
	}
}

// TestWritesInOnOpen: what OnOpen writes reaches that connection, and only
// it, including a close sent before any message arrived.
func TestWritesInOnOpen(t *testing.T) {
	s := startServer(t, engine.Config{Loops: 1}, map[string]engine.Handler{"/hi": greeter{}, "/bye": greeter{}})
	addr := s.Addr().String()
	for range 3 {
		bye := wstest.Dial(t, addr, "/bye", wstest.Options{})
		if _, got, err := bye.ReadMessage(); err != nil || string(got) != "hello /bye" {
			t.Fatalf("/bye greeting: %q %v", got, err)
		}
		bye.ExpectCloseReply(t, 4000)

		hi := wstest.Dial(t, addr, "/hi", wstest.Options{})
		if _, got, err := hi.ReadMessage(); err != nil || string(got) != "hello /hi" {
			t.Fatalf("/hi greeting: %q %v", got, err)
		}
		hi.Send(frame.OpText, []byte("ping?"))
		if _, got, err := hi.ReadMessage(); err != nil || string(got) != "ping?" {
			t.Fatalf("/hi echo: %q %v (bytes meant for another connection?)", got, err)
		}
	}
}
