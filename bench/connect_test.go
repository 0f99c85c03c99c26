package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wsdproject/wsd/internal/stack"
)

// connectRun runs RunConnect against s's /ws with the test process as the
// "server" whose CPU is read (the server runs in it).
func connectRun(t *testing.T, s *stack.Stack, n, rounds int, tokens []string, in string, held func(round, open int)) *ConnectResult {
	t.Helper()
	r, err := RunConnect(context.Background(), ConnectOptions{
		URL: "ws://" + s.Addr + "/ws", N: n, Concurrency: 16, Rounds: rounds, Tokens: tokens, TokenIn: in,
		Source: net.IPv4(127, 0, 0, 2), PerSource: 150, ServerPID: os.Getpid(),
		Pause: 50 * time.Millisecond, Timeout: time.Minute, held: held,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Rounds) != rounds {
		t.Fatalf("%d rounds reported, want %d", len(r.Rounds), rounds)
	}
	var out bytes.Buffer
	r.Print(&out)
	t.Log("\n" + out.String())
	return r
}

// waitOpen waits until the server has want connections open.
func waitOpen(t *testing.T, s *stack.Stack, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.Srv.OpenConnections() != want {
		if time.Now().After(deadline) {
			t.Fatalf("the server has %d connections open, want %d", s.Srv.OpenConnections(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestConnectWithTokens(t *testing.T) {
	for _, in := range []string{TokenInHeader, TokenInQuery} {
		t.Run(in, func(t *testing.T) {
			s := stack.Start(t, stack.Options{Tokens: true})
			const n = 200
			toks := make([]string, n)
			for i := range toks {
				toks[i] = stack.Token(t, fmt.Sprintf("user%d", i), nil)
			}
			var heldRounds []int
			r := connectRun(t, s, n, 2, toks, in, func(round, open int) {
				heldRounds = append(heldRounds, round)
				if open != n {
					t.Errorf("round %d: %d open, want %d", round, open, n)
				}
				waitOpen(t, s, n) // the server holds every connection until all are done
			})
			if len(heldRounds) != 2 {
				t.Fatalf("held in rounds %v, want [1 2]", heldRounds)
			}
			for _, rd := range r.Rounds {
				if rd.Completed != n || rd.Failed != 0 || rd.FirstStatus != 0 {
					t.Errorf("round %d: %d completed, %d failed (status %d, %s); want all %d", rd.Round, rd.Completed, rd.Failed, rd.FirstStatus, rd.FirstError, n)
				}
				if rd.WallSeconds <= 0 || rd.PerSecond <= 0 || !rd.ServerCPUMeasured || rd.ServerCPUSeconds < 0 {
					t.Errorf("round %d: wall %v s, %v/s, server CPU %v s (measured %v)", rd.Round, rd.WallSeconds, rd.PerSecond, rd.ServerCPUSeconds, rd.ServerCPUMeasured)
				}
				if !(rd.LatencyP50Millis > 0 && rd.LatencyP50Millis <= rd.LatencyP99Millis && rd.LatencyP99Millis <= rd.LatencyMaxMillis) {
					t.Errorf("round %d: latency p50 %v p99 %v max %v ms", rd.Round, rd.LatencyP50Millis, rd.LatencyP99Millis, rd.LatencyMaxMillis)
				}
			}
			waitOpen(t, s, 0) // and closes them after the run
		})
	}
}

func TestConnectRefused(t *testing.T) {
	s := stack.Start(t, stack.Options{Tokens: true})
	bad := stack.Token(t, "user1", nil)
	bad = bad[:len(bad)-4] + "AAAA" // a broken signature
	for name, toks := range map[string][]string{"bad token": {bad}, "no token": nil} {
		t.Run(name, func(t *testing.T) {
			r := connectRun(t, s, 200, 1, toks, TokenInHeader, nil)
			rd := r.Rounds[0]
			if rd.Completed != 0 || rd.Failed != 200 || rd.FirstStatus != 401 || rd.Statuses["401"] != 200 {
				t.Fatalf("%d completed, %d failed, first status %d, statuses %v; want all 200 refused with 401",
					rd.Completed, rd.Failed, rd.FirstStatus, rd.Statuses)
			}
			if !strings.Contains(rd.FirstError, "401") || r.Failed() != 200 {
				t.Fatalf("first error %q, failed in all %d", rd.FirstError, r.Failed())
			}
			var out bytes.Buffer
			r.Print(&out)
			if !strings.Contains(out.String(), "first refusal HTTP 401") {
				t.Fatalf("the printed result does not name the refusal:\n%s", out.String())
			}
		})
	}
}

// TestConnectCycling presents good, bad, good, bad… tokens from a file of
// three lines: exactly the connections i with i mod 3 == 1 are refused.
func TestConnectCycling(t *testing.T) {
	s := stack.Start(t, stack.Options{Tokens: true})
	bad := stack.Token(t, "user1", jwt.MapClaims{"exp": time.Now().Add(-time.Hour).Unix()}) // expired
	file := filepath.Join(t.TempDir(), "tokens.txt")
	content := stack.Token(t, "user0", nil) + "\n\n# a comment\n" + bad + "\r\n" + stack.Token(t, "user2", nil) + "\n"
	if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	toks, err := LoadTokens(file)
	if err != nil {
		t.Fatal(err)
	}
	if len(toks) != 3 || toks[1] != bad {
		t.Fatalf("LoadTokens read %d tokens (%q), want 3 with the expired one second", len(toks), toks)
	}
	const n = 200
	r := connectRun(t, s, n, 1, toks, TokenInQuery, nil)
	rd := r.Rounds[0]
	wantFailed := int64((n + 1) / 3) // i = 1, 4, … 199
	if rd.Failed != wantFailed || rd.Completed != n-wantFailed || rd.FirstStatus != 401 {
		t.Fatalf("%d completed, %d failed (first status %d); want %d failed with 401", rd.Completed, rd.Failed, rd.FirstStatus, wantFailed)
	}

	ct := &connectTarget{host: "h", path: "/ws?x=1", tokens: []string{"a", "b", "c"}, inQuery: true}
	for i, want := range []string{"a", "b", "c", "a", "b"} {
		if req := string(ct.request(i)); !strings.HasPrefix(req, "GET /ws?x=1&token="+want+" HTTP/1.1\r\n") {
			t.Fatalf("request %d: %q", i, req)
		}
	}
	ct.inQuery = false
	if req := string(ct.request(4)); !strings.Contains(req, "\r\nAuthorization: Bearer b\r\n\r\n") || !strings.HasPrefix(req, "GET /ws?x=1 HTTP") {
		t.Fatalf("request 4 with the header: %q", req)
	}
	if _, err := LoadTokens(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Fatal("LoadTokens of a missing file: no error")
	}
}

func TestConnectAnonymous(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	r := connectRun(t, s, 200, 1, nil, TokenInHeader, nil)
	if rd := r.Rounds[0]; rd.Completed != 200 || rd.Failed != 0 {
		t.Fatalf("%d completed, %d failed (%s)", rd.Completed, rd.Failed, rd.FirstError)
	}
	if r.TokenIn != "" || r.Tokens != 0 {
		t.Fatalf("tokens %d in %q for an anonymous run", r.Tokens, r.TokenIn)
	}
}

func TestConnectOptions(t *testing.T) {
	for _, o := range []ConnectOptions{
		{URL: "http://x:1/ws", N: 1, Concurrency: 1, Rounds: 1, TokenIn: "header", ServerPID: -1, Timeout: time.Second},
		{URL: "ws://x:1/ws", N: 0, Concurrency: 1, Rounds: 1, TokenIn: "header", ServerPID: -1, Timeout: time.Second},
		{URL: "ws://x:1/ws", N: 1 << 30, Concurrency: 1, Rounds: 1, TokenIn: "header", ServerPID: -1, Timeout: time.Second},
		{URL: "ws://x:1/ws", N: 1, Concurrency: 1, Rounds: 1, TokenIn: "cookie", ServerPID: -1, Timeout: time.Second},
	} {
		if _, err := RunConnect(context.Background(), o); err == nil {
			t.Errorf("%+v: no error", o)
		}
	}
}

func TestGenerateTokens(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key) // what openssl genpkey writes
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	var out bytes.Buffer
	err = GenerateTokens(&out, TokenOptions{Key: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
		Alg: "RS256", N: 7, Exp: time.Hour, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 7 {
		t.Fatalf("%d lines, want 7", len(lines))
	}
	for i, line := range lines {
		var c jwt.MapClaims
		tok, err := jwt.ParseWithClaims(line, &c, func(*jwt.Token) (any, error) { return &key.PublicKey, nil },
			jwt.WithValidMethods([]string{"RS256"}))
		if err != nil || !tok.Valid {
			t.Fatalf("token %d: %v", i, err)
		}
		exp, _ := c.GetExpirationTime()
		if c["sub"] != fmt.Sprintf("user%d", i) || exp == nil || exp.Unix() != now.Add(time.Hour).Unix() {
			t.Fatalf("token %d: claims %v", i, c)
		}
	}
	if err := GenerateTokens(&out, TokenOptions{Key: []byte("no key"), Alg: "RS256", N: 1}); err == nil {
		t.Fatal("a bad key: no error")
	}
	if err := GenerateTokens(&out, TokenOptions{Alg: "XX1", N: 1}); err == nil {
		t.Fatal("an unknown algorithm: no error")
	}
}

// TestConnectOntoHeld: -held opens its connections first, from processes
// of their own, keeps them through the round (the server holds both), and
// reports none dropped; a holder that cannot connect fails the run.
func TestConnectOntoHeld(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	r, err := RunConnect(context.Background(), ConnectOptions{
		URL: "ws://" + s.Addr + "/ws", N: 100, Concurrency: 16, Rounds: 1, TokenIn: TokenInHeader,
		Source: net.IPv4(127, 0, 0, 2), PerSource: 150, ServerPID: os.Getpid(), Timeout: time.Minute,
		Held: 200, HeldPerProcess: 100, HeldSource: net.IPv4(127, 0, 1, 2),
		held: func(round, open int) {
			if got := s.Srv.OpenConnections(); got != 300 {
				t.Errorf("with the round's connections open the server holds %d, want 200 held + 100", got)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if r.Held != 200 || r.HeldDropped != 0 || r.Rounds[0].Completed != 100 {
		t.Fatalf("held %d (dropped %d), round completed %d", r.Held, r.HeldDropped, r.Rounds[0].Completed)
	}

	// Nothing listens here: every holder's dial fails, after its retries.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = RunConnect(context.Background(), ConnectOptions{
		URL: "ws://" + addr + "/ws", N: 10, Concurrency: 4, Rounds: 1, TokenIn: TokenInHeader, ServerPID: -1, Timeout: 30 * time.Second,
		Held: 5, HeldPerProcess: 5, HeldSource: net.IPv4(127, 0, 2, 2),
	})
	if err == nil || !strings.Contains(err.Error(), "5 of 5 connections failed") {
		t.Fatalf("holders against a closed port: %v", err)
	}
}
