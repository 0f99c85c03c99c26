package engine

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// Config holds the engine's settings. The zero value of a field means its
// default (see Defaults).
type Config struct {
	// Addr is the address to listen on, "host:port" (":8080" for every
	// interface).
	Addr string
	// ReusePort sets SO_REUSEPORT on the listener, so that several wsd
	// processes can listen on one port (the kernel spreads new connections
	// over them).
	ReusePort bool
	// Loops is the number of event loops; 0 means one per CPU.
	Loops int
	// PingInterval is how long a connection may stay silent before it is
	// pinged; it is also how long each ping waits for an answer.
	PingInterval time.Duration
	// MaxMissedPongs is how many pings in a row may go unanswered (no
	// inbound traffic at all) before the connection is dropped.
	MaxMissedPongs int
	// MaxMessageBytes is the largest message accepted (also after
	// decompression); larger ones close the connection with 1009.
	MaxMessageBytes int64
	// HandshakeTimeout bounds the time from accept to a complete upgrade
	// request.
	HandshakeTimeout time.Duration
	// MaxHandshakeBytes bounds the size of the upgrade request head.
	MaxHandshakeBytes int
	// CloseTimeout bounds the close handshake: how long wsd waits for the
	// peer's close frame (or its FIN) after sending its own.
	CloseTimeout time.Duration
	// Compression offers permessage-deflate (RFC 7692) to clients that ask.
	Compression bool
	// CompressionLevel is the flate level, 1 (fastest) to 9.
	CompressionLevel int
	// CompressionMinBytes: messages shorter than this are sent uncompressed
	// even on a compressed connection (RFC 7692 allows either per message).
	CompressionMinBytes int
	// MaxOutboundBytes is each connection's high-water mark on outbound
	// bytes waiting in user space for a peer that does not read fast
	// enough (gnet's outbound buffer). A frame that would take a connection
	// past it is not queued: SlowConsumer decides what happens instead. A
	// connection whose buffer is empty may take one frame larger than the
	// mark (the kernel gets it first), so what a connection holds is at most
	// the larger of the mark and its largest frame.
	MaxOutboundBytes int
	// SlowConsumer is the policy for a connection over its mark; the zero
	// value is SlowConsumerClose.
	SlowConsumer SlowConsumerPolicy
	// MaxBroadcastBacklog bounds the bytes of broadcasts waiting in one
	// event loop's inbox for that loop to deliver them. A broadcast that
	// would take any loop past it is refused (ErrBacklog, nothing sent), so
	// a publisher faster than the loops can deliver is pushed back instead
	// of queued without bound.
	MaxBroadcastBacklog int
	// MaxConns caps the TCP connections open at once, handshaking ones
	// included. A connection past it is answered 503 with a Retry-After at
	// accept and closed. 0 means the process's open-file limit minus
	// FDReserve, so that accepting never runs out of descriptors.
	MaxConns int
	// MaxHandshakesPerSec paces new connections for the whole server (a
	// token bucket holding one second's worth), so that a reconnect storm
	// cannot starve the connections already open. Past it a connection is
	// answered 503 with a Retry-After that gives each refused client a
	// slot of its own at the pace (1 s ahead, then one interval after the
	// last given), so their retries come back at the pace; once the slots
	// are taken as far as RetryAfterMax, a random 1..RetryAfterMax. 0: no
	// pacing.
	MaxHandshakesPerSec float64
	// RetryAfterMax is the largest retry hint wsd gives: the Retry-After of
	// a paced or full refusal, and the retry-after in the 1001 reason of a
	// drain (each picked at random from 1 s up to it).
	RetryAfterMax time.Duration
	// MaxConnsPerIP caps the connections from one client address (an IPv6
	// client: its /64). Past it: 429. 0: no cap.
	MaxConnsPerIP int
	// HandshakeRatePerIP limits new connections per second from one client
	// address, with bursts of HandshakeBurstPerIP. Past it: 429. 0: no limit.
	HandshakeRatePerIP  float64
	HandshakeBurstPerIP int
	// BanAfter bans a client address for BanDuration once it has made that
	// many violations within BanWindow: refusals for MaxConnsPerIP or
	// HandshakeRatePerIP, a PROXY header from an untrusted peer, a
	// connection closed for a message or byte flood. A banned address is
	// answered 429 at accept. 0: no bans.
	BanAfter    int
	BanWindow   time.Duration
	BanDuration time.Duration
	// MaxTrackedIPs bounds the table of per-address state (connections,
	// rates, strikes, bans). When it is full, a connection from an address
	// not in it is refused with 503.
	MaxTrackedIPs int
	// TrustedProxies are the peers whose word on the client's address is
	// taken: from their PROXY protocol header when ProxyProtocol is set,
	// else from the X-Forwarded-For header (its rightmost address that is
	// not itself a trusted proxy). Anyone else's X-Forwarded-For is
	// ignored, and a PROXY header from anyone else is refused with 400.
	TrustedProxies []netip.Prefix
	// ProxyProtocol: trusted proxies open every connection with a PROXY
	// protocol header (v1 or v2); one without it is refused with 400.
	ProxyProtocol bool
	// AllowedOrigins, when not empty, is the Origin allow-list: "*",
	// "scheme://host[:port]" or "scheme://*.domain[:port]". A request whose
	// Origin matches none is refused with 403, except that AllowSameOrigin
	// admits an Origin naming the request's own Host, and AllowNoOrigin a
	// request without an Origin header (clients that are not browsers).
	AllowedOrigins  []string
	AllowSameOrigin bool
	AllowNoOrigin   bool
	// MessageRate limits the data messages a connection may send per
	// second, with bursts of MessageBurst; a message past it is not
	// handled: the route's RateLimitHandler (if any) is told, and after
	// MaxRateStrikes such messages in a row the connection is closed with
	// 1008. 0: no limit.
	MessageRate    float64
	MessageBurst   int
	MaxRateStrikes int
	// MaxInboundBytesPerSec limits the bytes a connection may send per
	// second (frames of every kind), with bursts up to the larger of one
	// second's worth and MaxMessageBytes; past it the connection is closed
	// with 1008. 0: no limit.
	MaxInboundBytesPerSec int64
	// IdleTimeout closes, with 1000, a connection that has sent no data
	// message for that long (pings and pongs do not count). 0: never.
	IdleTimeout time.Duration
	// Tick is the timing wheel's resolution; 0 derives it from the timeouts
	// (at most 1 s, and fine enough for the shortest of them).
	Tick time.Duration
	// Logger receives the engine's logs; nil means slog.Default().
	Logger *slog.Logger
}

// Defaults returns the documented defaults.
func Defaults() Config {
	return Config{
		Addr:                ":8080",
		PingInterval:        30 * time.Second,
		MaxMissedPongs:      3,
		MaxMessageBytes:     1 << 20,
		HandshakeTimeout:    5 * time.Second,
		MaxHandshakeBytes:   8 << 10,
		CloseTimeout:        5 * time.Second,
		CompressionLevel:    1,
		CompressionMinBytes: 64,
		MaxOutboundBytes:    1 << 20,
		SlowConsumer:        SlowConsumerClose,
		MaxBroadcastBacklog: 64 << 20,
		RetryAfterMax:       10 * time.Second,
		BanWindow:           10 * time.Second,
		BanDuration:         60 * time.Second,
		MaxTrackedIPs:       1 << 18,
		AllowSameOrigin:     true,
		AllowNoOrigin:       true,
		MaxRateStrikes:      10,
	}
}

// FDReserve is how many file descriptors a default MaxConns leaves for
// everything else (the admin listener and its clients, epoll and event
// descriptors, files) and for connections being accepted and refused.
const FDReserve = 128

// SlowConsumerPolicy says what happens to a connection whose outbound
// bytes would pass Config.MaxOutboundBytes. Either way, a connection whose
// own requests (its pings, the replies to its messages) would take it over
// the mark is closed with 1013: those are never dropped.
type SlowConsumerPolicy uint8

const (
	// SlowConsumerClose sends close 1013 ("slow consumer") and closes the
	// TCP connection as soon as that frame is out, without waiting for the
	// peer's close frame, or at CloseTimeout if it never gets out.
	SlowConsumerClose SlowConsumerPolicy = iota
	// SlowConsumerDrop skips broadcast and push frames for the connection
	// while it is over the mark (counted in
	// wsd_outbound_dropped_frames_total) and delivers again once the peer
	// has read enough.
	SlowConsumerDrop
)

func (p SlowConsumerPolicy) String() string {
	switch p {
	case SlowConsumerClose:
		return "close"
	case SlowConsumerDrop:
		return "drop"
	}
	return "unknown"
}

// ParseSlowConsumerPolicy parses "close" or "drop".
func ParseSlowConsumerPolicy(s string) (SlowConsumerPolicy, error) {
	switch s {
	case "close":
		return SlowConsumerClose, nil
	case "drop":
		return SlowConsumerDrop, nil
	}
	return 0, fmt.Errorf("invalid slow-consumer policy %q: want close or drop", s)
}

// withDefaults fills zero fields from Defaults and checks the result.
func (c Config) withDefaults() (Config, error) {
	d := Defaults()
	orDefault(&c.Addr, d.Addr)
	orDefault(&c.Loops, runtime.NumCPU())
	orDefault(&c.PingInterval, d.PingInterval)
	orDefault(&c.MaxMissedPongs, d.MaxMissedPongs)
	orDefault(&c.MaxMessageBytes, d.MaxMessageBytes)
	orDefault(&c.HandshakeTimeout, d.HandshakeTimeout)
	orDefault(&c.MaxHandshakeBytes, d.MaxHandshakeBytes)
	orDefault(&c.CloseTimeout, d.CloseTimeout)
	orDefault(&c.CompressionLevel, d.CompressionLevel)
	orDefault(&c.MaxOutboundBytes, d.MaxOutboundBytes)
	orDefault(&c.MaxBroadcastBacklog, d.MaxBroadcastBacklog)
	if c.MaxConns == 0 {
		c.MaxConns = fdLimit() - FDReserve
	}
	orDefault(&c.RetryAfterMax, d.RetryAfterMax)
	orDefault(&c.BanWindow, d.BanWindow)
	orDefault(&c.BanDuration, d.BanDuration)
	orDefault(&c.MaxTrackedIPs, d.MaxTrackedIPs)
	orDefault(&c.MaxRateStrikes, d.MaxRateStrikes)
	if c.HandshakeBurstPerIP == 0 {
		c.HandshakeBurstPerIP = max(1, int(2*c.HandshakeRatePerIP))
	}
	if c.MessageBurst == 0 {
		c.MessageBurst = max(1, int(2*c.MessageRate))
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(c.Loops >= 1 && c.Loops <= 255, "loops must be 1 to 255, got %d", c.Loops)
	check(c.PingInterval >= 10*time.Millisecond, "ping interval must be at least 10ms, got %v", c.PingInterval)
	check(c.MaxMissedPongs >= 1 && c.MaxMissedPongs <= 255, "max missed pongs must be 1 to 255, got %d", c.MaxMissedPongs)
	check(c.MaxMessageBytes >= 125 && c.MaxMessageBytes <= 1<<40, "max message bytes must be 125 to 2^40, got %d", c.MaxMessageBytes)
	check(c.HandshakeTimeout >= 10*time.Millisecond, "handshake timeout must be at least 10ms, got %v", c.HandshakeTimeout)
	check(c.MaxHandshakeBytes >= 256 && c.MaxHandshakeBytes <= 1<<20, "max handshake bytes must be 256 to 1 MiB, got %d", c.MaxHandshakeBytes)
	check(c.CloseTimeout >= 10*time.Millisecond, "close timeout must be at least 10ms, got %v", c.CloseTimeout)
	check(c.CompressionLevel >= 1 && c.CompressionLevel <= 9, "compression level must be 1 to 9, got %d", c.CompressionLevel)
	check(c.CompressionMinBytes >= 0, "compression min bytes must not be negative, got %d", c.CompressionMinBytes)
	check(c.MaxOutboundBytes >= 1024 && c.MaxOutboundBytes <= 1<<30, "max outbound bytes must be 1 KiB to 1 GiB, got %d", c.MaxOutboundBytes)
	check(c.SlowConsumer <= SlowConsumerDrop, "unknown slow-consumer policy %d", c.SlowConsumer)
	check(c.MaxBroadcastBacklog >= 64<<10 && c.MaxBroadcastBacklog <= 1<<34, "max broadcast backlog must be 64 KiB to 16 GiB, got %d", c.MaxBroadcastBacklog)
	check(c.MaxConns >= 1, "max conns must be at least 1, got %d (the open-file limit is %d; the default leaves %d of it free)", c.MaxConns, fdLimit(), FDReserve)
	check(c.MaxHandshakesPerSec >= 0, "max handshakes per second must not be negative, got %v", c.MaxHandshakesPerSec)
	check(c.RetryAfterMax >= time.Second && c.RetryAfterMax <= time.Hour, "retry-after max must be 1s to 1h, got %v", c.RetryAfterMax)
	check(c.MaxConnsPerIP >= 0, "max conns per IP must not be negative, got %d", c.MaxConnsPerIP)
	check(c.HandshakeRatePerIP >= 0, "handshake rate per IP must not be negative, got %v", c.HandshakeRatePerIP)
	check(c.HandshakeBurstPerIP >= 1 && c.HandshakeBurstPerIP <= 1<<20, "handshake burst per IP must be 1 to 2^20, got %d", c.HandshakeBurstPerIP)
	check(c.BanAfter >= 0, "ban after must not be negative, got %d", c.BanAfter)
	check(c.BanWindow >= time.Millisecond, "ban window must be at least 1ms, got %v", c.BanWindow)
	check(c.BanDuration >= time.Millisecond && c.BanDuration <= 24*time.Hour, "ban duration must be 1ms to 24h, got %v", c.BanDuration)
	check(c.MaxTrackedIPs >= 1 && c.MaxTrackedIPs <= 1<<26, "max tracked IPs must be 1 to 2^26, got %d", c.MaxTrackedIPs)
	for _, o := range c.AllowedOrigins {
		if _, err := parseOriginPattern(o); err != nil {
			errs = append(errs, err)
		}
	}
	check(!c.ProxyProtocol || len(c.TrustedProxies) > 0, "the PROXY protocol needs trusted proxies")
	check(c.MessageRate >= 0 && c.MessageRate <= 1000, "message rate must be 0 to 1000 per second, got %v", c.MessageRate)
	check(c.MessageBurst >= 1 && c.MessageBurst <= 1<<20, "message burst must be 1 to 2^20, got %d", c.MessageBurst)
	check(c.MaxRateStrikes >= 1 && c.MaxRateStrikes <= 1<<16, "max rate strikes must be 1 to 65536, got %d", c.MaxRateStrikes)
	check(c.MaxInboundBytesPerSec >= 0, "max inbound bytes per second must not be negative, got %d", c.MaxInboundBytesPerSec)
	check(c.MaxInboundBytesPerSec == 0 || time.Duration(float64(c.MaxMessageBytes)/float64(c.MaxInboundBytesPerSec)*float64(time.Second)) <= maxByteBurst,
		"max inbound bytes per second %d is too low for max message bytes %d: the largest message would take more than %v", c.MaxInboundBytesPerSec, c.MaxMessageBytes, maxByteBurst)
	check(c.IdleTimeout >= 0 && c.IdleTimeout <= 24*time.Hour, "idle timeout must be 0 to 24h, got %v", c.IdleTimeout)
	if c.Tick == 0 {
		c.Tick = time.Second
		for _, d := range []time.Duration{c.PingInterval, c.HandshakeTimeout, c.CloseTimeout, c.IdleTimeout} {
			if d == 0 {
				continue
			}
			if t := d / 4; t < c.Tick {
				c.Tick = max(t, time.Millisecond)
			}
		}
	}
	check(c.Tick >= time.Millisecond, "tick must be at least 1ms, got %v", c.Tick)
	return c, errors.Join(errs...)
}

// orDefault sets *v to d if *v is the zero value.
func orDefault[T comparable](v *T, d T) {
	var zero T
	if *v == zero {
		*v = d
	}
}

// ticks converts d to wheel ticks, rounding up (a timeout never fires early).
func (c *Config) ticks(d time.Duration) uint32 {
	n := (d + c.Tick - 1) / c.Tick
	return uint32(max(n, 1))
}

// fdLimit returns the process's open-file limit (Go raises the soft limit
// to the hard one at start).
func fdLimit() int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > 1<<30 {
		return 1 << 20
	}
	return int(rl.Cur)
}
