package redistest

import (
	"strings"
	"testing"
)

func TestStopRestart(t *testing.T) {
	s := Start(t)
	if r, err := s.Do("SET", "k", "v"); err != nil || r != "+OK" {
		t.Fatalf("SET: %q %v", r, err)
	}
	if r, err := s.Do("GET", "k"); err != nil || r != "$1" {
		t.Fatalf("GET: %q %v", r, err)
	}
	pid := s.PID()
	s.Stop()
	if s.PID() != 0 {
		t.Fatal("PID after Stop")
	}
	if _, err := s.Do("PING"); err == nil {
		t.Fatal("a stopped server answered")
	}
	s.Restart()
	if s.PID() == pid || s.PID() == 0 {
		t.Fatalf("pid %d after restart (was %d)", s.PID(), pid)
	}
	// No persistence: a restart loses every key.
	if r, err := s.Do("GET", "k"); err != nil || r != "$-1" {
		t.Fatalf("GET after restart: %q %v", r, err)
	}
	if r, _ := s.Do("CONFIG", "GET", "bind"); !strings.HasPrefix(r, "*") {
		t.Fatalf("CONFIG GET: %q", r)
	}
}

func TestPersistRestart(t *testing.T) {
	s := StartWith(t, Options{Persist: true})
	if r, err := s.Do("SET", "k", "v"); err != nil || r != "+OK" {
		t.Fatalf("SET: %q %v", r, err)
	}
	s.Stop()
	s.Restart()
	if r, err := s.Do("GET", "k"); err != nil || r != "$1" {
		t.Fatalf("GET after a restart of a persisting server: %q %v", r, err)
	}
}

func TestTLSAndPassword(t *testing.T) {
	s := StartWith(t, Options{TLS: true, Password: "pw"})
	if r, err := s.Do("SET", "k", "v"); err != nil || r != "+OK" {
		t.Fatalf("SET over TLS with AUTH: %q %v", r, err)
	}
	plain := &Server{Addr: s.Addr}
	if r, err := plain.Do("PING"); err == nil && r == "+PONG" {
		t.Fatal("the TLS port answered a plain PING")
	}
}
