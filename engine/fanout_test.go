package engine_test

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wsdproject/wsd/engine"
	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/internal/testserver"
	"github.com/wsdproject/wsd/internal/wstest"
)

// keyed is a minimal hub: a connection that sends "join K" is listed
// under key K on its loop; Deliver writes a frame to the loop's
// connections of its key.
type keyed struct {
	mu    sync.Mutex // guards loops' creation only; each map is its loop's
	loops [8]map[string][]engine.Conn
}

func (k *keyed) OnOpen(engine.Conn)                    {}
func (k *keyed) OnClose(engine.Conn, engine.CloseInfo) {}
func (k *keyed) OnMessage(c engine.Conn, _ frame.OpCode, p []byte) {
	key, ok := strings.CutPrefix(string(p), "join ")
	if !ok {
		return
	}
	k.mu.Lock()
	if k.loops[c.Loop()] == nil {
		k.loops[c.Loop()] = map[string][]engine.Conn{}
	}
	m := k.loops[c.Loop()]
	k.mu.Unlock()
	m[key] = append(m[key], c)
	_ = c.WriteText([]byte("joined"))
}

func (k *keyed) Deliver(loop int, f *engine.Frame) {
	k.mu.Lock()
	m := k.loops[loop]
	k.mu.Unlock()
	for _, c := range m[f.Key()] {
		_ = c.WriteFrame(f)
	}
}

// TestFanout: frames reach exactly the connections listed under their key,
// on every loop, once and in order.
func TestFanout(t *testing.T) {
	k := &keyed{}
	s := testserver.Start(t, engine.Config{Loops: 2}, testserver.Route{Path: "/k", Handler: k})
	var a, b []*wstest.Client
	for i := range 6 {
		c := wstest.Dial(t, s.Addr().String(), "/k", wstest.Options{})
		key := "a"
		if i%2 == 1 {
			key = "b"
		}
		if err := c.Send(frame.OpText, []byte("join "+key)); err != nil {
			t.Fatal(err)
		}
		if _, p, err := c.ReadMessage(); err != nil || string(p) != "joined" {
			t.Fatalf("join: %q %v", p, err)
		}
		if key == "a" {
			a = append(a, c)
		} else {
			b = append(b, c)
		}
	}
	const n = 200
	for i := range n {
		if err := s.Fanout(k, "a", uint64(i), frame.OpText, fmt.Appendf(nil, "a%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Fanout(k, "b", 0, frame.OpText, []byte("b-only")); err != nil {
		t.Fatal(err)
	}
	for _, c := range a {
		for i := range n {
			if _, p, err := c.ReadMessage(); err != nil || string(p) != fmt.Sprintf("a%d", i) {
				t.Fatalf("message %d: %q %v", i, p, err)
			}
		}
	}
	for _, c := range b {
		if _, p, err := c.ReadMessage(); err != nil || string(p) != "b-only" {
			t.Fatalf("b got %q %v, want only b-only", p, err)
		}
	}
	if err := s.Fanout(nil, "a", 0, frame.OpText, nil); err == nil {
		t.Fatal("Fanout(nil) accepted")
	}
}

// expiring sets an expiry on open; OnExpire closes with 4001.
type expiring struct {
	engine.Echo
	in      time.Duration
	expired chan uint64
}

func (e *expiring) OnOpen(c engine.Conn) {
	if err := c.SetExpiry(time.Now().Add(e.in)); err != nil {
		panic(err)
	}
}

func (e *expiring) OnExpire(c engine.Conn) {
	e.expired <- c.ID()
	_ = c.Close(4001, "token expired")
}

func TestExpiry(t *testing.T) {
	h := &expiring{in: 300 * time.Millisecond, expired: make(chan uint64, 1)}
	s := testserver.Start(t, engine.Config{Tick: 50 * time.Millisecond}, testserver.Route{Path: "/e", Handler: h})
	start := time.Now()
	c := wstest.Dial(t, s.Addr().String(), "/e", wstest.Options{})
	c.ExpectCloseReply(t, 4001)
	if el := time.Since(start); el < h.in {
		t.Fatalf("expired after %v, before its expiry (%v)", el, h.in)
	}
	// A handler that is not an ExpiryHandler cannot set one.
	x := &setsExpiry{errc: make(chan error, 1)}
	s2 := testserver.Start(t, engine.Config{}, testserver.Route{Path: "/x", Handler: x})
	wstest.Dial(t, s2.Addr().String(), "/x", wstest.Options{})
	if err := <-x.errc; err == nil {
		t.Fatal("SetExpiry accepted without an ExpiryHandler")
	}
}

type setsExpiry struct {
	engine.Echo
	errc chan error
}

func (s *setsExpiry) OnOpen(c engine.Conn) { s.errc <- c.SetExpiry(time.Now()) }

// valueEcho answers every message with the connection's Value.
type valueEcho struct{ engine.Echo }

func (valueEcho) OnMessage(c engine.Conn, _ frame.OpCode, _ []byte) {
	_ = c.WriteText([]byte(fmt.Sprint(c.Value())))
}

func TestAuthenticate(t *testing.T) {
	auth := func(r *engine.Request) (any, error) {
		switch {
		case strings.HasPrefix(string(r.Authorization), "Bearer "):
			return "user:" + strings.TrimPrefix(string(r.Authorization), "Bearer "), nil
		case strings.Contains(string(r.URI), "forbid"):
			return nil, &engine.HTTPError{Status: http.StatusForbidden, Message: "not for you"}
		case strings.Contains(string(r.Cookie), "session=ok"):
			return "cookie", nil
		}
		return nil, errors.New("no token")
	}
	s := testserver.Start(t, engine.Config{}, testserver.Route{Path: "/a", Handler: valueEcho{},
		Options: engine.RouteOptions{Authenticate: auth}})
	addr := s.Addr().String()

	r := wstest.RawRequest(t, addr, wstest.UpgradeRequest("/a"))
	if r.Status != http.StatusUnauthorized || r.Header.Get("WWW-Authenticate") != "Bearer" || !r.Close {
		t.Fatalf("no token: %d %v %q", r.Status, r.Header, r.Body)
	}
	if r.Body != "unauthorized" { // the hook's own error text is not shown
		t.Fatalf("body %q", r.Body)
	}
	r = wstest.RawRequest(t, addr, wstest.UpgradeRequest("/a?forbid=1"))
	if r.Status != http.StatusForbidden || r.Body != "not for you" {
		t.Fatalf("forbidden: %d %q", r.Status, r.Body)
	}
	for _, tc := range []struct {
		header http.Header
		want   string
	}{
		{http.Header{"Authorization": {"Bearer alice"}}, "user:alice"},
		{http.Header{"Cookie": {"a=b; session=ok"}}, "cookie"},
	} {
		c := wstest.Dial(t, addr, "/a", wstest.Options{Header: tc.header})
		if err := c.Send(frame.OpText, []byte("?")); err != nil {
			t.Fatal(err)
		}
		if _, p, err := c.ReadMessage(); err != nil || string(p) != tc.want {
			t.Fatalf("value %q %v, want %q", p, err, tc.want)
		}
	}
}

func TestExecute(t *testing.T) {
	s := testserver.Start(t, engine.Config{Loops: 2}, testserver.Route{Path: "/echo", Handler: engine.Echo{}})
	wstest.Dial(t, s.Addr().String(), "/echo", wstest.Options{})
	if s.Loops() < 1 {
		t.Fatal("no loop started")
	}
	done := make(chan int, 1)
	if err := s.Execute(0, func() { done <- 0; panic("survived") }); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("task did not run")
	}
	// The loop survived the panic: it still echoes.
	c := wstest.Dial(t, s.Addr().String(), "/echo", wstest.Options{})
	if err := c.Send(frame.OpText, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, p, err := c.ReadMessage(); err != nil || string(p) != "hi" {
		t.Fatalf("%q %v", p, err)
	}
	if err := s.Execute(99, func() {}); err == nil {
		t.Fatal("Execute on a loop that does not exist")
	}
}
