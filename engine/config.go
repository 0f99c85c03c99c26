package engine

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"time"
)

// Config holds the engine's settings. The zero value of a field means its
// default (see Defaults).
type Config struct {
	// Addr is the address to listen on, "host:port" (":8080" for every
	// interface).
	Addr string
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
	}
}

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
	if c.Tick == 0 {
		c.Tick = time.Second
		for _, d := range []time.Duration{c.PingInterval, c.HandshakeTimeout, c.CloseTimeout} {
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
