package engine_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/wsdproject/wsd/engine"
	"github.com/wsdproject/wsd/internal/wstest"
)

// The acceptor registers each connection with its loop's poller and the
// loop adopts it when its first bytes arrive, or at the next tick. These
// tests hold the other cases: peers that send nothing.

// TestSilentPeerTimesOut: a peer that connects and never sends a byte is
// still adopted (at a tick), so its handshake timer runs and it gets 408.
func TestSilentPeerTimesOut(t *testing.T) {
	s := startServer(t, engine.Config{HandshakeTimeout: 200 * time.Millisecond}, nil)
	conn, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(wstest.Timeout))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("got %v, %v; want 408", resp, err)
	}
}

// TestShutdownClosesSilentPeers: peers that connected and sent nothing
// when the server shuts down are closed by the drain, not left open (and
// their descriptors leaked) because no loop had adopted them yet.
func TestShutdownClosesSilentPeers(t *testing.T) {
	// A long handshake timeout: a tick is a second, so the peers are still
	// waiting for adoption when Shutdown begins.
	s := startServer(t, engine.Config{HandshakeTimeout: time.Minute}, nil)
	var peers []net.Conn
	for range 20 {
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		peers = append(peers, c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	for i, c := range peers {
		c.SetReadDeadline(time.Now().Add(wstest.Timeout))
		_, err := io.ReadAll(c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("peer %d: still open after Shutdown returned", i)
		}
	}
}
