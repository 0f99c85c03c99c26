// Package testserver starts an engine.Server on a free loopback port for
// tests outside the engine package, and stops it when the test ends.
package testserver

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/wsdproject/wsd/engine"
)

// Logger discards logs, or writes them at debug level to stderr when
// WSD_TEST_DEBUG is set.
func Logger() *slog.Logger {
	if os.Getenv("WSD_TEST_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// Route is one path to serve.
type Route struct {
	Path    string
	Handler engine.Handler
	Options engine.RouteOptions
}

// Start serves routes with cfg (Addr and, unless set, Loops and Logger are
// filled in) and returns the server.
func Start(t testing.TB, cfg engine.Config, routes ...Route) *engine.Server {
	t.Helper()
	cfg.Addr = "127.0.0.1:0"
	if cfg.Loops == 0 {
		cfg.Loops = 2
	}
	if cfg.CloseTimeout == 0 {
		cfg.CloseTimeout = time.Second // clients in tests often never answer a close
	}
	if cfg.Logger == nil {
		cfg.Logger = Logger()
	}
	s, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if err := s.Handle(r.Path, r.Handler, r.Options); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	StopAtCleanup(t, s)
	return s
}

// StopAtCleanup shuts s down (10 s at most) when the test ends.
func StopAtCleanup(t testing.TB, s *engine.Server) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
}

// SyncBuffer is a bytes.Buffer that a server may write (logs, from its
// loops' goroutines) while a test reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
