package hostile

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/internal/wstest"
)

// rejected is the admission refusal counter for reason.
func rejected(reason string) string {
	return `wsd_admission_rejected_total{reason="` + reason + `"}`
}

// rawFrom sends a raw request from source address src (127.0.0.x, so that
// each test is its own client address) and reads the response head. The
// connection stays open (an upgrade holds its place) until the test ends.
func rawFrom(t *testing.T, src, addr, request string) *wstest.HTTPResponse {
	t.Helper()
	return rawParts(t, src, addr, request)
}

// rawParts is rawFrom with the request written in parts, 50 ms apart
// (each part most likely its own read on the server).
func rawParts(t *testing.T, src, addr string, parts ...string) *wstest.HTTPResponse {
	t.Helper()
	d := net.Dialer{Timeout: wstest.Timeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(wstest.Timeout))
	for i, p := range parts {
		if i > 0 {
			time.Sleep(50 * time.Millisecond)
		}
		if _, err := io.WriteString(conn, p); err != nil && i == 0 {
			t.Fatal(err)
		}
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	var body []byte
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ = io.ReadAll(resp.Body)
	}
	return &wstest.HTTPResponse{Status: resp.StatusCode, Close: resp.Close, Header: resp.Header, Body: string(body), Conn: conn, R: br}
}

func expectStatus(t *testing.T, r *wstest.HTTPResponse, want int, what string) {
	t.Helper()
	if r.Status != want {
		t.Fatalf("%s: status %d (%q), want %d", what, r.Status, r.Body, want)
	}
}

// echoes checks that an open client still gets answers: refusals of
// others leave it alone.
func echoes(t *testing.T, c *wstest.Client) {
	t.Helper()
	if err := c.Send(frame.OpText, []byte(`{"type":"echo","id":7,"data":"still here"}`)); err != nil {
		t.Fatal(err)
	}
	if _, p, err := c.ReadMessage(); err != nil || !strings.Contains(string(p), "still here") {
		t.Fatalf("echo: %q, %v", p, err)
	}
}

func TestOriginAllowList(t *testing.T) {
	s := start(t, "--allowed-origins", "https://app.example.com, https://*.example.org")
	other := wstest.Dial(t, s.WS, "/ws", wstest.Options{})
	for _, c := range []struct {
		origin string
		want   int
	}{
		{"https://evil.example", http.StatusForbidden},
		{"https://app.example.com", http.StatusSwitchingProtocols},
		{"https://app.example.com:443", http.StatusSwitchingProtocols},
		{"http://app.example.com", http.StatusForbidden}, // wrong scheme
		{"https://chat.example.org", http.StatusSwitchingProtocols},
		{"https://example.org", http.StatusForbidden}, // *. is subdomains only
		{"https://example.org.evil.example", http.StatusForbidden},
		{"http://test", http.StatusSwitchingProtocols}, // same origin as Host: test
		{"null", http.StatusForbidden},
	} {
		r := rawFrom(t, "127.0.0.1", s.WS, wstest.UpgradeRequest("/ws", "Origin: "+c.origin))
		expectStatus(t, r, c.want, "Origin "+c.origin)
	}
	expectStatus(t, rawFrom(t, "127.0.0.1", s.WS, wstest.UpgradeRequest("/ws")), http.StatusSwitchingProtocols, "no Origin")
	s.WaitMetric(t, rejected("origin"), 5)
	echoes(t, other)

	strict := start(t, "--allowed-origins", "https://app.example.com", "--allow-no-origin=false", "--allow-same-origin=false")
	expectStatus(t, rawFrom(t, "127.0.0.1", strict.WS, wstest.UpgradeRequest("/ws")), http.StatusForbidden, "no Origin, strict")
	expectStatus(t, rawFrom(t, "127.0.0.1", strict.WS, wstest.UpgradeRequest("/ws", "Origin: http://test")), http.StatusForbidden, "same origin, strict")
	strict.WaitMetric(t, rejected("origin"), 2)
}

func TestPerAddressConnectionCap(t *testing.T) {
	s := start(t, "--max-conns-per-ip", "3")
	var held []*wstest.Client
	for range 3 {
		held = append(held, wstest.Dial(t, s.WS, "/ws", wstest.Options{LocalAddr: "127.0.0.5"}))
	}
	r := rawFrom(t, "127.0.0.5", s.WS, wstest.UpgradeRequest("/ws"))
	expectStatus(t, r, http.StatusTooManyRequests, "4th connection from one address")
	if r.Header.Get("Retry-After") == "" {
		t.Fatal("429 without Retry-After")
	}
	s.WaitMetric(t, rejected("ip_conns"), 1)
	// Another address is not affected, nor are the connections held.
	expectStatus(t, rawFrom(t, "127.0.0.6", s.WS, wstest.UpgradeRequest("/ws")), http.StatusSwitchingProtocols, "other address")
	echoes(t, held[0])
	// A place freed is a place taken.
	held[2].Conn.Close()
	s.WaitMetric(t, "wsd_connections_open", 3)
	expectStatus(t, rawFrom(t, "127.0.0.5", s.WS, wstest.UpgradeRequest("/ws")), http.StatusSwitchingProtocols, "after one left")
}

func TestGlobalConnectionCap(t *testing.T) {
	s := start(t, "--max-conns", "4")
	var held []*wstest.Client
	for i := range 4 {
		held = append(held, wstest.Dial(t, s.WS, "/ws", wstest.Options{LocalAddr: "127.0.0." + strconv.Itoa(10+i)}))
	}
	r := rawFrom(t, "127.0.0.20", s.WS, wstest.UpgradeRequest("/ws"))
	expectStatus(t, r, http.StatusServiceUnavailable, "past --max-conns")
	if ra, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 10 {
		t.Fatalf("Retry-After %q, want 1 to 10", r.Header.Get("Retry-After"))
	}
	s.WaitMetric(t, rejected("server_full"), 1)
	resp, err := http.Get("http://" + s.Admin + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("/readyz at the cap: %d, want 503", resp.StatusCode)
	}
	echoes(t, held[0])
}

// TestHandshakeFlood: one address opening connections as fast as it can
// gets its burst, then 429s; another address does not notice; with the
// global pace, past it everyone gets 503 with a spread of Retry-After.
func TestHandshakeFlood(t *testing.T) {
	s := start(t, "--handshake-rate-per-ip", "2", "--handshake-burst-per-ip", "5")
	ok, refused := 0, 0
	began := time.Now()
	for range 30 {
		r := rawFrom(t, "127.0.0.7", s.WS, wstest.UpgradeRequest("/ws"))
		switch r.Status {
		case http.StatusSwitchingProtocols:
			ok++
		case http.StatusTooManyRequests:
			refused++
		default:
			t.Fatalf("status %d", r.Status)
		}
	}
	// 5 of burst, plus whatever 2/s refilled while the 30 went by.
	refills := int(time.Since(began).Seconds()*2) + 1
	if ok < 5 || ok > 5+refills || refused != 30-ok {
		t.Fatalf("%d upgraded, %d refused in %v; want the burst of 5 and at most %d refills", ok, refused, time.Since(began), refills)
	}
	s.WaitMetric(t, rejected("ip_rate"), refused)
	expectStatus(t, rawFrom(t, "127.0.0.8", s.WS, wstest.UpgradeRequest("/ws")), http.StatusSwitchingProtocols, "other address")

	p := start(t, "--max-handshakes-per-sec", "5", "--retry-after-max", "4s")
	seen := map[string]bool{}
	paced := 0
	began = time.Now()
	for i := range 40 {
		r := rawFrom(t, "127.0.0."+strconv.Itoa(30+i), p.WS, wstest.UpgradeRequest("/ws"))
		if r.Status == http.StatusServiceUnavailable {
			paced++
			seen[r.Header.Get("Retry-After")] = true
			// Refused clients get slots at the pace from a second ahead on:
			// the first comes back in 1 s.
			if paced == 1 && r.Header.Get("Retry-After") != "1" {
				t.Fatalf("first paced refusal: Retry-After %q, want 1", r.Header.Get("Retry-After"))
			}
		}
	}
	if admitted := 5 + int(time.Since(began).Seconds()*5) + 1; paced < 40-admitted {
		t.Fatalf("%d of 40 paced in %v, want at least %d (a burst of 5 at 5/s)", paced, time.Since(began), 40-admitted)
	}
	for ra := range seen {
		if n, err := strconv.Atoi(ra); err != nil || n < 1 || n > 4 {
			t.Fatalf("Retry-After %q, want 1 to 4", ra)
		}
	}
	if len(seen) < 2 {
		t.Fatalf("Retry-After not jittered: %v", seen)
	}
	p.WaitMetric(t, rejected("paced"), paced)
}

// TestBanAndExpiry: an address that keeps hitting its cap is banned (429
// at accept, before anything is parsed), counted, and let back in when the
// ban ends.
func TestBanAndExpiry(t *testing.T) {
	s := start(t, "--max-conns-per-ip", "1", "--ban-after", "3", "--ban-window", "10s", "--ban-duration", "3s")
	held := wstest.Dial(t, s.WS, "/ws", wstest.Options{LocalAddr: "127.0.0.9"})
	for i := range 3 {
		expectStatus(t, rawFrom(t, "127.0.0.9", s.WS, wstest.UpgradeRequest("/ws")), http.StatusTooManyRequests, fmt.Sprintf("violation %d", i+1))
	}
	held.Conn.Close()
	s.WaitMetric(t, "wsd_connections_open", 0)
	r := rawFrom(t, "127.0.0.9", s.WS, wstest.UpgradeRequest("/ws"))
	expectStatus(t, r, http.StatusTooManyRequests, "banned")
	if !strings.Contains(r.Body, "banned") || r.Header.Get("Retry-After") != "3" {
		t.Fatalf("ban answer: %q, Retry-After %q", r.Body, r.Header.Get("Retry-After"))
	}
	s.WaitMetric(t, "wsd_bans_total", 1)
	s.WaitMetric(t, rejected("banned"), 1)
	s.WaitMetric(t, "wsd_banned_ips", 1)
	expectStatus(t, rawFrom(t, "127.0.0.10", s.WS, wstest.UpgradeRequest("/ws")), http.StatusSwitchingProtocols, "other address during the ban")
	time.Sleep(3100 * time.Millisecond)
	expectStatus(t, rawFrom(t, "127.0.0.9", s.WS, wstest.UpgradeRequest("/ws")), http.StatusSwitchingProtocols, "after the ban")
	s.WaitMetric(t, "wsd_banned_ips", 0)
}

// TestSpoofedForwardedFor: X-Forwarded-For from a peer that is not a
// trusted proxy changes nothing: limits and logs use the peer's address.
// From a trusted proxy it names the client.
func TestSpoofedForwardedFor(t *testing.T) {
	s := start(t, "--max-conns-per-ip", "2", "--trusted-proxies", "127.0.0.99", "--log-level", "debug")
	for i := range 2 {
		expectStatus(t, rawFrom(t, "127.0.0.11", s.WS, wstest.UpgradeRequest("/ws", "X-Forwarded-For: 203.0.113."+strconv.Itoa(i))),
			http.StatusSwitchingProtocols, "spoofed, within the cap")
	}
	expectStatus(t, rawFrom(t, "127.0.0.11", s.WS, wstest.UpgradeRequest("/ws", "X-Forwarded-For: 203.0.113.77")),
		http.StatusTooManyRequests, "spoofed X-Forwarded-For past the cap")
	s.Log.Find(t, `"msg":"connection opened"`, `"client":"127.0.0.11"`)
	s.WaitMetric(t, rejected("ip_conns"), 1)

	// Through a trusted proxy: each client address has its own cap, and
	// the rightmost untrusted address of the chain is the client.
	for i := range 2 {
		expectStatus(t, rawFrom(t, "127.0.0.99", s.WS, wstest.UpgradeRequest("/ws", "X-Forwarded-For: 6.6.6.6, 198.51.100.4, 127.0.0.99")),
			http.StatusSwitchingProtocols, fmt.Sprintf("proxied client %d", i))
	}
	expectStatus(t, rawFrom(t, "127.0.0.99", s.WS, wstest.UpgradeRequest("/ws", "X-Forwarded-For: 198.51.100.4")),
		http.StatusTooManyRequests, "proxied client past its cap")
	expectStatus(t, rawFrom(t, "127.0.0.99", s.WS, wstest.UpgradeRequest("/ws", "X-Forwarded-For: 198.51.100.5")),
		http.StatusSwitchingProtocols, "another proxied client")
	s.Log.Find(t, `"msg":"connection opened"`, `"client":"198.51.100.4"`)
	s.WaitMetric(t, rejected("ip_conns"), 2)
}

// TestProxyProtocol: a PROXY header from a peer that is not a trusted
// proxy is refused (and counts as a violation); from a trusted one, v1 or
// v2, it names the client; a trusted proxy that omits it is refused.
func TestProxyProtocol(t *testing.T) {
	s := start(t, "--trusted-proxies", "127.0.0.98", "--proxy-protocol", "--max-conns-per-ip", "1", "--log-level", "debug")
	v1 := "PROXY TCP4 192.0.2.1 192.0.2.2 40000 443\r\n"
	r := rawFrom(t, "127.0.0.12", s.WS, v1+wstest.UpgradeRequest("/ws"))
	expectStatus(t, r, http.StatusBadRequest, "PROXY header from an untrusted peer")
	s.WaitMetric(t, rejected("untrusted_proxy_header"), 1)

	expectStatus(t, rawFrom(t, "127.0.0.98", s.WS, v1+wstest.UpgradeRequest("/ws")), http.StatusSwitchingProtocols, "v1 from the proxy")
	s.Log.Find(t, `"msg":"connection opened"`, `"client":"192.0.2.1"`)
	expectStatus(t, rawFrom(t, "127.0.0.98", s.WS, v1+wstest.UpgradeRequest("/ws")), http.StatusTooManyRequests, "same client past its cap")
	// HAProxy often sends its header in a segment of its own: the rules
	// apply all the same (they were once skipped when the request came in
	// a later read).
	expectStatus(t, rawParts(t, "127.0.0.98", s.WS, v1, wstest.UpgradeRequest("/ws")), http.StatusTooManyRequests, "header, then the request")
	expectStatus(t, rawParts(t, "127.0.0.98", s.WS, "PROXY TCP4 192.0.2.", "7 192.0.2.2 40000 443\r\n", wstest.UpgradeRequest("/ws")),
		http.StatusSwitchingProtocols, "a header in two parts")
	s.Log.Find(t, `"msg":"connection opened"`, `"client":"192.0.2.7"`)

	h := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 5000}, &net.TCPAddr{IP: net.ParseIP("2001:db8::2"), Port: 443})
	v2, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	expectStatus(t, rawFrom(t, "127.0.0.98", s.WS, string(v2)+wstest.UpgradeRequest("/ws")), http.StatusSwitchingProtocols, "v2 from the proxy")
	s.Log.Find(t, `"msg":"connection opened"`, `"client":"2001:db8::1"`)

	expectStatus(t, rawFrom(t, "127.0.0.98", s.WS, wstest.UpgradeRequest("/ws")), http.StatusBadRequest, "trusted proxy without a header")
	expectStatus(t, rawFrom(t, "127.0.0.98", s.WS, "PROXY TCP4 nonsense\r\n"+wstest.UpgradeRequest("/ws")), http.StatusBadRequest, "malformed header")
	s.WaitMetric(t, rejected("bad_proxy_header"), 2)
}

// TestDescriptorExhaustion: with a small open-file limit, connections past
// it are refused with 503 at accept (the default --max-conns leaves room)
// and the server goes on serving; and when --max-conns is set past the
// limit so that accept itself fails with EMFILE, wsd backs off instead of
// stopping (gnet's own acceptor stopped the engine, and every connection).
func TestDescriptorExhaustion(t *testing.T) {
	limited := func(n int) func(string, []string) *exec.Cmd {
		return func(bin string, args []string) *exec.Cmd {
			return exec.Command("sh", append([]string{"-c", fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, n), bin}, args...)...)
		}
	}
	s := startCmd(t, limited(300))
	first := wstest.Dial(t, s.WS, "/ws", wstest.Options{})
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for range 400 {
		c, err := net.Dial("tcp", s.WS)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	s.WaitMetric(t, rejected("server_full"), 400-(300-128-1))
	echoes(t, first)

	e := startCmd(t, limited(200), "--max-conns", "1000")
	before := wstest.Dial(t, e.WS, "/ws", wstest.Options{})
	var more []net.Conn
	for range 300 {
		c, err := net.Dial("tcp", e.WS)
		if err != nil {
			t.Fatal(err)
		}
		more = append(more, c)
	}
	// Out of descriptors now: the admin listener cannot accept either, so
	// the count is read once some are back.
	time.Sleep(500 * time.Millisecond)
	echoes(t, before)
	for _, c := range more {
		c.Close()
	}
	if n := e.Metric(t, "wsd_accept_errors_total"); n == 0 {
		t.Fatal("no accept error counted: the test did not exhaust the descriptors")
	}
	after := wstest.Dial(t, e.WS, "/ws", wstest.Options{})
	echoes(t, after)
	echoes(t, before)
}

// TestAddressTableRSS: connections from thousands of addresses, each of
// which the table must remember (a handshake rate of one per 100 s keeps
// every entry), fill the per-address table to --max-tracked-ips and no
// further: the rest are refused at accept (ip_table_full), and the
// server's memory grows by the table's bound, not by the addresses seen.
func TestAddressTableRSS(t *testing.T) {
	const tracked, addrs = 2000, 6000
	s := start(t, "--handshake-rate-per-ip", "0.01", "--max-tracked-ips", strconv.Itoa(tracked))
	warm(t, s)
	before := s.rss(t)
	stop := s.watchRSS(t)
	for i := range addrs {
		src := fmt.Sprintf("127.10.%d.%d", i/250, 1+i%250)
		d := net.Dialer{Timeout: wstest.Timeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp", s.WS)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	s.WaitMetric(t, rejected("ip_table_full"), addrs-(tracked-1)) // warm's 127.0.0.1 holds one entry
	peak := stop()
	if n := s.Metric(t, "wsd_tracked_ips"); n != tracked {
		t.Fatalf("wsd_tracked_ips %d, want %d", n, tracked)
	}
	const budget = 4 * MiB // 2,000 entries of well under 1 KiB each, and noise
	if grew := peak - before; grew > budget {
		t.Fatalf("RSS grew by %d bytes for %d addresses, budget %d", grew, addrs, budget)
	}
	t.Logf("RSS %d -> peak %d bytes (+%d) for %d addresses, %d tracked", before, peak, peak-before, addrs, tracked)
}
