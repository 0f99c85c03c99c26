package engine

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// logLimiter keeps floods (refusals, accept errors) from flooding the log:
// at most logBurst lines per second through it; the lines it swallows are
// counted and reported on the next line that gets through.
type logLimiter struct {
	mu         sync.Mutex
	second     int64
	n          int
	suppressed int
}

const logBurst = 10

func (ll *logLimiter) allow() (ok bool, suppressed int) {
	now := time.Now().Unix()
	ll.mu.Lock()
	defer ll.mu.Unlock()
	if now != ll.second {
		ll.second, ll.n = now, 0
	}
	if ll.n >= logBurst {
		ll.suppressed++
		return false, 0
	}
	ll.n++
	suppressed, ll.suppressed = ll.suppressed, 0
	return true, suppressed
}

func (ll *logLimiter) log(l *slog.Logger, level slog.Level, msg string, args ...any) {
	if !l.Enabled(context.Background(), level) {
		return
	}
	ok, suppressed := ll.allow()
	if !ok {
		return
	}
	if suppressed > 0 {
		args = append(args, "suppressed_lines", suppressed)
	}
	l.Log(context.Background(), level, msg, args...)
}

func (ll *logLimiter) warn(l *slog.Logger, msg string, args ...any) {
	ll.log(l, slog.LevelWarn, msg, args...)
}

func (ll *logLimiter) debug(l *slog.Logger, msg string, args ...any) {
	ll.log(l, slog.LevelDebug, msg, args...)
}
