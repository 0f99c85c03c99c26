package main

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wsdproject/wsd/internal/redistest"
)

// TestRedisUnreachableAtStart: a Redis that does not answer is a one-line
// error and exit 1 (like a port that cannot be bound), not a node that
// runs without its cluster.
func TestRedisUnreachableAtStart(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	code, stderr := runArgs(t, "--listen", "127.0.0.1:0", "--admin", "", "--broker", "redis", "--redis-addr", addr, "--redis-timeout", "500ms")
	if code != 1 || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.Contains(stderr, "connect to "+addr) {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

func readyz(t *testing.T, admin string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func waitReadyz(t *testing.T, admin string, want int) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := readyz(t, admin)
		if code == want {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz %d %q, want %d", code, body, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRedisBrokerAdmin: with --broker redis, /readyz follows the
// connection to Redis, /api/info lists the cluster's nodes, /metrics has
// the broker's state.
func TestRedisBrokerAdmin(t *testing.T) {
	srv := redistest.Start(t)
	common := []string{"--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--broker", "redis", "--redis-addr", srv.Addr,
		"--redis-prefix", "admintest", "--api-key", testKey, "--redis-node-ttl", "3s", "--redis-timeout", "500ms"}
	_, admin, _, _ := startRun(t, append(common, "--node-id", "n1", "--advertise-addr", "10.1.2.3:8080")...)
	_, _, stop2, _ := startRun(t, append(common, "--node-id", "n2")...)
	waitReadyz(t, admin, http.StatusOK)

	code, info := apiCall(t, admin, "GET", "/api/info", testKey, "")
	nodes, _ := info["nodes"].([]any)
	if code != 200 || info["broker"] != "redis" || info["node"] != "n1" || len(nodes) != 2 {
		t.Fatalf("/api/info: %d %v", code, info)
	}
	if n, _ := nodes[0].(map[string]any); n["id"] != "n1" || n["address"] != "10.1.2.3:8080" {
		t.Fatalf("/api/info nodes[0]: %v", nodes[0])
	}
	// A node that stops leaves the registry.
	stop2()
	if _, info = apiCall(t, admin, "GET", "/api/info", testKey, ""); len(info["nodes"].([]any)) != 1 {
		t.Fatalf("/api/info after n2 stopped: %v", info)
	}

	srv.Stop()
	if body := waitReadyz(t, admin, http.StatusServiceUnavailable); !strings.HasPrefix(body, "broker: ") {
		t.Fatalf("/readyz without Redis: %q", body)
	}
	if code, v := apiCall(t, admin, "POST", "/api/publish", testKey, `{"channel":"c","data":1}`); code != http.StatusInternalServerError || errCode(v) != "BROKER_ERROR" {
		t.Fatalf("publish without Redis: %d %v", code, v)
	}
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "\nwsd_broker_redis_ready 0\n") || !strings.Contains(string(b), "\nwsd_broker_publish_errors_total 1\n") {
		t.Fatalf("metrics without Redis:\n%s", b)
	}
	srv.Restart()
	waitReadyz(t, admin, http.StatusOK)
	if code, v := apiCall(t, admin, "POST", "/api/publish", testKey, `{"channel":"c","data":1}`); code != 200 || v["offset"] != float64(1) {
		t.Fatalf("publish after Redis came back: %d %v", code, v)
	}
}

// TestRedisTLSAndPassword: wsd reaches a Redis that speaks TLS only and
// wants a password, verifying it with --redis-tls-ca; without the CA, or
// with a wrong password, it does not start.
func TestRedisTLSAndPassword(t *testing.T) {
	srv := redistest.StartWith(t, redistest.Options{TLS: true, Password: "s3cret"})
	base := []string{"--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--broker", "redis", "--redis-addr", srv.Addr,
		"--redis-tls", "--redis-timeout", "1s", "--api-key", testKey}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no CA", []string{"--redis-password", "s3cret"}, "certificate signed by unknown authority"},
		{"wrong password", []string{"--redis-tls-ca", srv.CAFile, "--redis-password", "guess"}, "WRONGPASS"},
	} {
		code, stderr := runArgs(t, append(base, tc.args...)...)
		if code != 1 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%s: exit %d, stderr %q", tc.name, code, stderr)
		}
	}
	_, admin, _, _ := startRun(t, append(base, "--redis-tls-ca", srv.CAFile, "--redis-password", "s3cret")...)
	waitReadyz(t, admin, http.StatusOK)
	if code, v := apiCall(t, admin, "POST", "/api/publish", testKey, `{"channel":"c","data":1}`); code != 200 || v["offset"] != float64(1) {
		t.Fatalf("publish over TLS: %d %v", code, v)
	}
	if r, _ := srv.Do("HGET", "wsd:m:{c}", "o"); r != "$1" {
		t.Fatalf("the publication is not in Redis: %s", r)
	}
}
