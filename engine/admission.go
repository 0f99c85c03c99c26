package engine

import (
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// admitVerdict is the outcome of an admission check: admitOK, or why a
// connection is refused before its upgrade.
type admitVerdict uint8

const (
	admitOK             admitVerdict = iota
	admitServerFull                  // MaxConns reached
	admitPaced                       // MaxHandshakesPerSec exceeded
	admitIPConns                     // MaxConnsPerIP reached
	admitIPRate                      // HandshakeRatePerIP exceeded
	admitBanned                      // the address is banned
	admitOrigin                      // Origin not allowed
	admitUntrustedProxy              // a PROXY header from a peer that is not a trusted proxy
	admitBadProxy                    // a malformed or missing PROXY header from a trusted proxy
	admitTableFull                   // the per-address table is full
	numAdmitVerdicts
)

var admitNames = [numAdmitVerdicts]string{
	admitOK:             "ok",
	admitServerFull:     "server_full",
	admitPaced:          "paced",
	admitIPConns:        "ip_conns",
	admitIPRate:         "ip_rate",
	admitBanned:         "banned",
	admitOrigin:         "origin",
	admitUntrustedProxy: "untrusted_proxy_header",
	admitBadProxy:       "bad_proxy_header",
	admitTableFull:      "ip_table_full",
}

func (v admitVerdict) String() string { return admitNames[v] }

// admission decides, before an upgrade, whether a connection may come in:
// the global cap and pacing, the per-address caps, rates and bans, and the
// Origin allow-list. It is shared by every event loop and the acceptors;
// what it keeps per address is bounded by MaxTrackedIPs.
type admission struct {
	maxConns int64
	conns    atomic.Int64 // connections admitted and not yet gone (all loops)

	pace     gcra // the global handshake pace (nil-rate: off)
	retryMax int  // seconds
	// retryAt is the next free retry slot of paced refusals (monoNow ns):
	// each refused client is told to come back at a slot of its own, one
	// pace interval after the last, so that the retries of a storm return
	// at the pace instead of all together or spread over RetryAfterMax.
	retryAt atomic.Int64

	ips     *ipTable // nil when no per-address rule is on
	trusted []netip.Prefix
	proxy   bool // trusted proxies send the PROXY protocol

	origins     []originPattern
	sameOrigin  bool
	noOrigin    bool
	checkOrigin bool

	rejected [numAdmitVerdicts]atomic.Uint64

	// Refusals, built once: a refusal allocates nothing for its answer.
	respPaced    [][]byte // 503 with Retry-After 1..retryMax
	respFull     [][]byte
	respIPConns  []byte
	respIPRate   []byte
	respBanned   []byte
	respOrigin   []byte
	respProxy    []byte
	respBadProxy []byte
	respTable    []byte
	drainReasons []string // 1001 reasons with retry-after=1..retryMax
}

func newAdmission(c *Config) *admission {
	a := &admission{
		maxConns: int64(c.MaxConns),
		retryMax: max(1, int(c.RetryAfterMax/time.Second)),
		trusted:  c.TrustedProxies,
		proxy:    c.ProxyProtocol,
	}
	if c.MaxHandshakesPerSec > 0 {
		a.pace = newGCRA(c.MaxHandshakesPerSec, max(1, int(c.MaxHandshakesPerSec)))
	}
	if c.MaxConnsPerIP > 0 || c.HandshakeRatePerIP > 0 || c.BanAfter > 0 {
		a.ips = newIPTable(c)
	}
	if len(c.AllowedOrigins) > 0 {
		a.checkOrigin = true
		a.sameOrigin = c.AllowSameOrigin
		a.noOrigin = c.AllowNoOrigin
		for _, o := range c.AllowedOrigins {
			p, _ := parseOriginPattern(o) // validated by withDefaults
			a.origins = append(a.origins, p)
		}
	}
	for i := 1; i <= a.retryMax; i++ {
		ra := "Retry-After: " + strconv.Itoa(i)
		a.respPaced = append(a.respPaced, httpResponse(http.StatusServiceUnavailable, "too many new connections; retry later", ra))
		a.respFull = append(a.respFull, httpResponse(http.StatusServiceUnavailable, "server is at capacity", ra))
	}
	for i := 1; i <= a.retryMax; i++ {
		a.drainReasons = append(a.drainReasons, "server shutting down; retry-after="+strconv.Itoa(i))
	}
	a.respIPConns = httpResponse(http.StatusTooManyRequests, "too many connections from your address", "Retry-After: "+strconv.Itoa(a.retryMax))
	a.respIPRate = httpResponse(http.StatusTooManyRequests, "too many new connections from your address", "Retry-After: 1")
	a.respBanned = httpResponse(http.StatusTooManyRequests, "your address is temporarily banned",
		"Retry-After: "+strconv.Itoa(max(1, int(c.BanDuration/time.Second))))
	a.respOrigin = httpResponse(http.StatusForbidden, "origin not allowed")
	a.respProxy = httpResponse(http.StatusBadRequest, "PROXY protocol header from a peer that is not a trusted proxy")
	a.respBadProxy = httpResponse(http.StatusBadRequest, "missing or malformed PROXY protocol header")
	a.respTable = httpResponse(http.StatusServiceUnavailable, "server is tracking too many client addresses", "Retry-After: "+strconv.Itoa(a.retryMax))
	return a
}

// response is the answer to a refusal.
func (a *admission) response(v admitVerdict) []byte {
	switch v {
	case admitServerFull:
		return a.respFull[rand.IntN(len(a.respFull))]
	case admitPaced:
		return a.respPaced[a.pacedRetry(monoNow())-1]
	case admitIPConns:
		return a.respIPConns
	case admitIPRate:
		return a.respIPRate
	case admitBanned:
		return a.respBanned
	case admitOrigin:
		return a.respOrigin
	case admitUntrustedProxy:
		return a.respProxy
	case admitBadProxy:
		return a.respBadProxy
	case admitTableFull:
		return a.respTable
	}
	return respBadRequest
}

// pacedRetry gives a paced refusal its Retry-After, in seconds: the next
// free slot of the pace from a second ahead on, or, when the slots are
// taken as far as RetryAfterMax, a random 1..RetryAfterMax.
func (a *admission) pacedRetry(now int64) int {
	limit := int64(a.retryMax) * int64(time.Second)
	for {
		old := a.retryAt.Load()
		slot := max(old, now+int64(time.Second))
		ahead := slot - now
		if ahead > limit {
			return 1 + rand.IntN(a.retryMax)
		}
		if a.retryAt.CompareAndSwap(old, slot+a.pace.interval) {
			return int(min((ahead+int64(time.Second)-1)/int64(time.Second), int64(a.retryMax)))
		}
	}
}

// drainReason is the reason of a drain's 1001: "server shutting down;
// retry-after=N", N seconds picked from 1 to RetryAfterMax.
func (a *admission) drainReason() string { return a.drainReasons[rand.IntN(len(a.drainReasons))] }

// trustedPeer reports whether addr is a configured proxy.
func (a *admission) trustedPeer(addr netip.Addr) bool {
	addr = addr.Unmap()
	for _, p := range a.trusted {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// atAccept runs the checks that need only the TCP peer, for a connection
// just accepted: the global cap and pace, and (when the peer is the client
// itself, not a trusted proxy) the per-address rules. On admitOK the
// connection counts against the caps until release / releaseIP.
func (a *admission) atAccept(peer netip.Addr, now int64) (v admitVerdict, tracked bool) {
	if a.conns.Load() >= a.maxConns {
		return admitServerFull, false
	}
	direct := a.ips != nil && !a.trustedPeer(peer)
	if direct {
		if v := a.ips.admit(peer, now); v != admitOK {
			return v, false
		}
	}
	if a.pace.on() && !a.pace.take(now) {
		if direct {
			a.ips.release(peer)
		}
		return admitPaced, false
	}
	a.conns.Add(1)
	return admitOK, direct
}

// release returns a connection's place under MaxConns.
func (a *admission) release() { a.conns.Add(-1) }

// reject counts a refusal.
func (a *admission) reject(v admitVerdict) { a.rejected[v].Add(1) }

// checkOrigin applies the Origin policy (only with an allow-list).
func (a *admission) originAllowed(origin, host []byte) bool {
	if !a.checkOrigin {
		return true
	}
	if len(origin) == 0 {
		return a.noOrigin
	}
	scheme, ohost, ok := splitOrigin(origin)
	if !ok {
		return false
	}
	if a.sameOrigin && len(host) > 0 && equalFoldHost(ohost, host, scheme) {
		return true
	}
	for i := range a.origins {
		if a.origins[i].match(scheme, ohost) {
			return true
		}
	}
	return false
}

// gcra is a token bucket kept as one "theoretical arrival time" (the
// generic cell rate algorithm): safe for concurrent use without a lock.
type gcra struct {
	tat       *atomic.Int64 // ns (monotonic, since the process's clock epoch)
	interval  int64         // ns per token
	tolerance int64         // how far tat may run ahead of now: burst-1 intervals
}

func newGCRA(rate float64, burst int) gcra {
	iv := int64(float64(time.Second) / rate)
	return gcra{tat: new(atomic.Int64), interval: max(iv, 1), tolerance: int64(burst-1) * max(iv, 1)}
}

func (g gcra) on() bool { return g.tat != nil }

func (g gcra) take(now int64) bool {
	for {
		old := g.tat.Load()
		t := max(old, now)
		if t-now > g.tolerance {
			return false
		}
		if g.tat.CompareAndSwap(old, t+g.interval) {
			return true
		}
	}
}

// clientKey is a client address as the per-address rules see it: an IPv4
// address, or the /64 prefix of an IPv6 one (a single subscriber usually
// holds a whole /64, so per-address rules on full IPv6 addresses would
// be trivial to evade).
type clientKey [16]byte

func keyOf(a netip.Addr) clientKey {
	a = a.Unmap()
	b := a.As16()
	if a.Is6() {
		clear(b[8:])
	}
	return clientKey(b)
}

// ipEntry is what the table keeps about one client address.
type ipEntry struct {
	conns       int32
	strikes     int32 // violations since windowEnd-BanWindow
	tat         int64 // the address's handshake rate (GCRA), ns
	windowEnd   int64 // when the strikes are forgotten
	bannedUntil int64
}

// idle reports whether the entry holds nothing worth keeping at now.
func (e *ipEntry) idle(now int64) bool {
	return e.conns == 0 && e.tat <= now && e.bannedUntil <= now && e.windowEnd <= now
}

const ipShards = 64

// ipTable holds the per-address state, sharded by address (a mutex per
// shard: it is touched by the acceptors and every loop, once per
// connection and per violation, never per message).
type ipTable struct {
	shards  [ipShards]ipShard
	entries atomic.Int64
	max     int64

	maxConns  int32
	rate      bool
	interval  int64
	tolerance int64
	banAfter  int32
	window    int64
	banFor    int64

	bans   atomic.Uint64 // addresses banned, ever
	banned atomic.Int64  // addresses banned now (refreshed by sweep)
}

type ipShard struct {
	mu sync.Mutex
	m  map[clientKey]ipEntry
	_  [48]byte // keep shards' mutexes off each other's cache lines
}

func newIPTable(c *Config) *ipTable {
	t := &ipTable{
		max:      int64(c.MaxTrackedIPs),
		maxConns: int32(c.MaxConnsPerIP),
		banAfter: int32(c.BanAfter),
		window:   int64(c.BanWindow),
		banFor:   int64(c.BanDuration),
	}
	if c.HandshakeRatePerIP > 0 {
		g := newGCRA(c.HandshakeRatePerIP, c.HandshakeBurstPerIP)
		t.rate, t.interval, t.tolerance = true, g.interval, g.tolerance
	}
	for i := range t.shards {
		t.shards[i].m = make(map[clientKey]ipEntry)
	}
	return t
}

func (t *ipTable) shard(k clientKey) *ipShard {
	h := uint32(2166136261) // FNV-1a over the address bytes
	for _, b := range k {
		h = (h ^ uint32(b)) * 16777619
	}
	return &t.shards[h%ipShards]
}

// update runs fn on addr's entry under its shard's lock, making the entry
// if the table has room; it reports false (fn not run) when it has none.
func (t *ipTable) update(addr netip.Addr, fn func(e *ipEntry)) bool {
	k := keyOf(addr)
	s := t.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.m[k]
	if !ok {
		if t.entries.Load() >= t.max {
			return false
		}
		t.entries.Add(1)
	}
	fn(&e)
	s.m[k] = e
	return true
}

// admit checks a new connection from addr and, if it may come in, counts
// it (undo with release).
func (t *ipTable) admit(addr netip.Addr, now int64) admitVerdict {
	v := admitTableFull
	t.update(addr, func(e *ipEntry) {
		if v = t.check(e, now); v == admitOK {
			e.conns++
		}
	})
	return v
}

func (t *ipTable) check(e *ipEntry, now int64) admitVerdict {
	if e.bannedUntil > now {
		return admitBanned
	}
	if t.maxConns > 0 && e.conns >= t.maxConns {
		t.strikeLocked(e, now)
		return admitIPConns
	}
	if t.rate {
		tat := max(e.tat, now)
		if tat-now > t.tolerance {
			t.strikeLocked(e, now)
			return admitIPRate
		}
		e.tat = tat + t.interval
	}
	return admitOK
}

// release forgets one connection of addr.
func (t *ipTable) release(addr netip.Addr) {
	k := keyOf(addr)
	s := t.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.m[k]
	if !ok {
		return
	}
	e.conns--
	if e.idle(monoNow()) {
		delete(s.m, k)
		t.entries.Add(-1)
		return
	}
	s.m[k] = e
}

// strike records a violation by addr (a refusal or a connection closed
// for a flood); enough of them within the window ban it.
func (t *ipTable) strike(addr netip.Addr, now int64) {
	t.update(addr, func(e *ipEntry) { t.strikeLocked(e, now) })
}

func (t *ipTable) strikeLocked(e *ipEntry, now int64) {
	if t.banAfter <= 0 || e.bannedUntil > now {
		return
	}
	if e.windowEnd <= now {
		e.strikes, e.windowEnd = 0, now+t.window
	}
	e.strikes++
	if e.strikes >= t.banAfter {
		e.bannedUntil = now + t.banFor
		e.strikes = 0
		t.bans.Add(1)
	}
}

// sweep drops entries that hold nothing any more and counts bans in force.
func (t *ipTable) sweep(now int64) {
	var banned int64
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for k, e := range s.m {
			if e.idle(now) {
				delete(s.m, k)
				t.entries.Add(-1)
			} else if e.bannedUntil > now {
				banned++
			}
		}
		s.mu.Unlock()
	}
	t.banned.Store(banned)
}

// clock is the monotonic time base of admission and rate limits.
var clock = time.Now()

// monoNow returns monotonic nanoseconds since clock.
func monoNow() int64 { return int64(time.Since(clock)) }

// addrOf converts a gnet or net remote address to a netip.Addr.
func addrOf(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(ta.IP); ok {
			return ip.Unmap()
		}
	}
	return netip.Addr{}
}
