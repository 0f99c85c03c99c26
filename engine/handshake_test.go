package engine

import (
	"bufio"
	"bytes"
	"net/http"
	"strings"
	"testing"

	"github.com/wsdproject/wsd/internal/wstest"
)

func testHandshaker(compression bool) *handshaker {
	routes := []route{{path: "/echo"}, {path: "/ws", protocols: []string{"wsd.json", "chat"}}}
	return newHandshaker(routes, compression, 8<<10, func() bool { return false })
}

// parseResponse checks that b is one well-formed HTTP response and returns it.
func parseResponse(t testing.TB, b []byte) *http.Response {
	t.Helper()
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(b)), nil)
	if err != nil {
		t.Fatalf("malformed response %q: %v", b, err)
	}
	return resp
}

func TestNegotiateDeflate(t *testing.T) {
	cases := []struct {
		offer  string
		accept string // Sec-WebSocket-Extensions in the response, "" when declined
		window uint8
	}{
		{"permessage-deflate", "permessage-deflate;server_no_context_takeover;client_no_context_takeover", 15},
		{"permessage-deflate; client_max_window_bits", "permessage-deflate;server_no_context_takeover;client_no_context_takeover", 15},
		{"permessage-deflate; server_max_window_bits=10", "permessage-deflate;server_no_context_takeover;client_no_context_takeover;server_max_window_bits=10", 10},
		{"permessage-deflate; server_no_context_takeover; client_no_context_takeover", "permessage-deflate;server_no_context_takeover;client_no_context_takeover", 15},
		// Malformed offers are declined, and the next offer is considered.
		{"permessage-deflate; server_max_window_bits=7, permessage-deflate", "permessage-deflate;server_no_context_takeover;client_no_context_takeover", 15},
		{"permessage-deflate; unknown_param", "", 0},
		{"permessage-deflate; server_max_window_bits", "", 0},
		{"x-webkit-deflate-frame", "", 0},
	}
	h := testHandshaker(true)
	for _, tc := range cases {
		res := h.upgrade([]byte(wstest.UpgradeRequest("/echo", "Sec-WebSocket-Extensions: "+tc.offer)))
		if !res.ok {
			t.Fatalf("%q: handshake failed: %q", tc.offer, res.response)
		}
		resp := parseResponse(t, res.response)
		got := strings.ReplaceAll(resp.Header.Get("Sec-Websocket-Extensions"), " ", "")
		if got != tc.accept || res.deflate != (tc.accept != "") || res.window != tc.window {
			t.Errorf("offer %q: accepted %q (deflate %v window %d), want %q window %d", tc.offer, got, res.deflate, res.window, tc.accept, tc.window)
		}
	}
	// With compression off nothing is accepted.
	res := testHandshaker(false).upgrade([]byte(wstest.UpgradeRequest("/echo", "Sec-WebSocket-Extensions: permessage-deflate")))
	if !res.ok || res.deflate || strings.Contains(string(res.response), "deflate") {
		t.Fatalf("compression off: %q", res.response)
	}
}

func TestEndOfRequest(t *testing.T) {
	req := wstest.UpgradeRequest("/echo")
	for i := 0; i < len(req); i++ {
		if n := endOfRequest([]byte(req[:i])); n != 0 {
			t.Fatalf("end found in %d of %d bytes", i, len(req))
		}
	}
	if n := endOfRequest([]byte(req + "\x81\x85extra")); n != len(req) {
		t.Fatalf("end at %d, want %d", n, len(req))
	}
}

// FuzzHandshake feeds arbitrary request heads to the upgrade parser: it
// must never panic, always answer one well-formed HTTP response, and only
// accept requests that name a route and carry a valid key.
func FuzzHandshake(f *testing.F) {
	f.Add([]byte(wstest.UpgradeRequest("/echo")))
	f.Add([]byte(wstest.UpgradeRequest("/ws", "Sec-WebSocket-Protocol: chat, wsd.json", "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")))
	f.Add([]byte(strings.Replace(wstest.UpgradeRequest("/echo"), "13", "8", 1)))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte("POST /echo HTTP/1.1\r\nHost: x\r\n\r\n"))
	h := testHandshaker(true)
	f.Fuzz(func(t *testing.T, req []byte) {
		end := endOfRequest(req)
		if end == 0 {
			req = append(req, "\r\n\r\n"...)
			end = len(req)
		}
		res := h.upgrade(req[:end])
		resp := parseResponse(t, res.response)
		if res.ok != (resp.StatusCode == http.StatusSwitchingProtocols) {
			t.Fatalf("ok=%v with status %d", res.ok, resp.StatusCode)
		}
		if res.ok {
			if res.route < 0 || res.route > 1 {
				t.Fatalf("accepted with route %d", res.route)
			}
			if resp.Header.Get("Sec-Websocket-Accept") == "" {
				t.Fatal("101 without Sec-WebSocket-Accept")
			}
		} else if res.reason == failNone {
			t.Fatal("rejected without a reason")
		}
	})
}

func BenchmarkHandshake(b *testing.B) {
	h := testHandshaker(true)
	req := []byte(wstest.UpgradeRequest("/ws", "Origin: http://example.com", "Sec-WebSocket-Protocol: wsd.json",
		"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits", "User-Agent: Mozilla/5.0 (X11; Linux x86_64)"))
	b.ReportAllocs()
	for b.Loop() {
		if res := h.upgrade(req); !res.ok {
			b.Fatal(string(res.response))
		}
	}
}

// TestHandshakeAllocs holds the handshake to the 3 allocations the README
// quotes (gobwas/ws's header parsing; the response buffer is reused).
func TestHandshakeAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under the race detector; make test runs this without it")
	}
	h := testHandshaker(true)
	req := []byte(wstest.UpgradeRequest("/ws", "Origin: http://example.com", "Sec-WebSocket-Protocol: wsd.json",
		"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits", "User-Agent: Mozilla/5.0 (X11; Linux x86_64)"))
	if n := testing.AllocsPerRun(200, func() {
		if res := h.upgrade(req); !res.ok {
			t.Fatal(string(res.response))
		}
	}); n > 3 {
		t.Fatalf("handshake: %v allocs, want at most 3", n)
	}
	bad := []byte(strings.Replace(string(req), "GET", "POST", 1))
	if n := testing.AllocsPerRun(200, func() { h.upgrade(bad) }); n > 3 {
		t.Fatalf("refused handshake: %v allocs, want at most 3", n)
	}
}
