package engine

import (
	"net/netip"
	"testing"
	"time"
)

func TestOriginPatterns(t *testing.T) {
	a := newAdmission(&Config{AllowedOrigins: []string{"https://app.example.com", "https://*.example.org", "http://localhost:3000"},
		AllowSameOrigin: true, AllowNoOrigin: false, RetryAfterMax: time.Second, BanDuration: time.Second})
	for _, c := range []struct {
		origin, host string
		want         bool
	}{
		{"https://app.example.com", "", true},
		{"HTTPS://APP.EXAMPLE.COM", "", true},
		{"https://app.example.com:443", "", true},
		{"https://app.example.com:8443", "", false},
		{"http://app.example.com", "", false},
		{"https://a.b.example.org", "", true},
		{"https://example.org", "", false},
		{"https://evilexample.org", "", false},
		{"https://x.example.org:444", "", false},
		{"http://localhost:3000", "", true},
		{"http://localhost", "", false},
		{"https://ws.mine.test", "ws.mine.test:443", true}, // same origin
		{"http://ws.mine.test", "ws.mine.test:8080", false},
		{"null", "", false},
		{"", "", false}, // no Origin, and AllowNoOrigin is off
		{"https://user@app.example.com", "", false},
	} {
		if got := a.originAllowed([]byte(c.origin), []byte(c.host)); got != c.want {
			t.Errorf("Origin %q (Host %q): %v, want %v", c.origin, c.host, got, c.want)
		}
	}
	for _, bad := range []string{"example.com", "https://*", "https://a.*.com", "https://x/y", "*.example.com"} {
		if _, err := parseOriginPattern(bad); err == nil {
			t.Errorf("pattern %q accepted", bad)
		}
	}
}

func TestForwardedFor(t *testing.T) {
	a := &admission{trusted: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	for _, c := range []struct {
		xff, want string
	}{
		{"203.0.113.5", "203.0.113.5"},
		{"6.6.6.6, 203.0.113.5", "203.0.113.5"},           // the client's own claim (left) is ignored
		{"203.0.113.5, 10.1.2.3", "203.0.113.5"},          // a trusted hop on the right is skipped
		{"203.0.113.5,10.1.2.3, 10.9.9.9", "203.0.113.5"}, // several
		{"[2001:db8::1]:4711", "2001:db8::1"},             // with a port
		{"::ffff:198.51.100.7", "198.51.100.7"},           // IPv4-mapped
		{"garbage, 10.1.2.3", "10.1.2.3"},                 // nothing usable left of the proxies: the nearest proxy
		{"", ""},
	} {
		got, ok := a.forwardedFor([]byte(c.xff))
		if (c.want == "") != !ok || (ok && got.String() != c.want) {
			t.Errorf("X-Forwarded-For %q: %v %v, want %q", c.xff, got, ok, c.want)
		}
	}
}

func TestProxyHeaderLen(t *testing.T) {
	v1 := "PROXY TCP4 192.0.2.1 192.0.2.2 40000 443\r\n"
	for i := range len(v1) {
		if n, err := proxyHeaderLen([]byte(v1[:i]), 8192); n != 0 || err != nil {
			t.Fatalf("v1 cut at %d: %d, %v; want to wait", i, n, err)
		}
	}
	if n, err := proxyHeaderLen([]byte(v1+"GET /"), 8192); n != len(v1) || err != nil {
		t.Fatalf("v1: %d, %v", n, err)
	}
	long := "PROXY " + string(make([]byte, 200))
	if _, err := proxyHeaderLen([]byte(long), 8192); err == nil {
		t.Fatal("a v1 line past 107 bytes accepted")
	}
	v2 := append(append([]byte{}, proxyV2...), 0x21, 0x11, 0, 12)
	v2 = append(v2, make([]byte, 12)...)
	for i := range len(v2) {
		if n, err := proxyHeaderLen(v2[:i], 8192); n != 0 || err != nil {
			t.Fatalf("v2 cut at %d: %d, %v; want to wait", i, n, err)
		}
	}
	if n, err := proxyHeaderLen(v2, 8192); n != 28 || err != nil {
		t.Fatalf("v2: %d, %v", n, err)
	}
	huge := append(append([]byte{}, proxyV2...), 0x21, 0x11, 0xff, 0xff)
	if _, err := proxyHeaderLen(huge, 8192); err == nil {
		t.Fatal("a v2 header longer than the limit accepted")
	}
	if _, err := proxyHeaderLen([]byte("GET / HTTP/1.1\r\n"), 8192); err != errNotProxy {
		t.Fatalf("HTTP taken for PROXY: %v", err)
	}
}

// TestPacedRetrySlots: refused clients get slots at the pace from a second
// ahead on; past RetryAfterMax, a random hint within it.
func TestPacedRetrySlots(t *testing.T) {
	a := newAdmission(&Config{MaxHandshakesPerSec: 4, RetryAfterMax: 3 * time.Second, BanDuration: time.Second, MaxConns: 10})
	now := int64(time.Hour)
	var got []int
	for range 16 {
		got = append(got, a.pacedRetry(now))
	}
	want := []int{1, 2, 2, 2, 2, 3, 3, 3, 3} // slots at 1, 1.25, 1.5, … 3 s; then random 1..3
	for i, w := range want {
		if got[i] != w {
			t.Fatalf("hints %v, want %v first", got, want)
		}
	}
	for _, g := range got[len(want):] {
		if g < 1 || g > 3 {
			t.Fatalf("hint %d past the slots, want 1..3", g)
		}
	}
}

// TestIPTableBound: the table never holds more than MaxTrackedIPs entries;
// a new address past it is refused, and entries go when idle.
func TestIPTableBound(t *testing.T) {
	tb := newIPTable(&Config{MaxTrackedIPs: 3, MaxConnsPerIP: 2, BanWindow: time.Second, BanDuration: time.Second})
	now := int64(time.Hour)
	addrs := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("2001:db8::1")}
	for _, a := range addrs {
		if v := tb.admit(a, now); v != admitOK {
			t.Fatalf("%v: %v", a, v)
		}
	}
	if v := tb.admit(netip.MustParseAddr("2001:db8::2"), now); v != admitOK {
		t.Fatalf("same /64 as a tracked address: %v, want ok (one entry)", v)
	}
	if v := tb.admit(netip.MustParseAddr("2001:db8::3"), now); v != admitIPConns {
		t.Fatalf("third connection of one /64 with a cap of 2: %v", v)
	}
	if v := tb.admit(netip.MustParseAddr("192.0.2.9"), now); v != admitTableFull {
		t.Fatalf("a fourth address: %v, want ip_table_full", v)
	}
	if n := tb.entries.Load(); n != 3 {
		t.Fatalf("%d entries, want 3", n)
	}
	tb.release(addrs[0])
	if n := tb.entries.Load(); n != 2 {
		t.Fatalf("%d entries after the last connection of one went, want 2", n)
	}
	if v := tb.admit(netip.MustParseAddr("192.0.2.9"), now); v != admitOK {
		t.Fatalf("with room again: %v", v)
	}
}
