package main

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestAdminUI: the admin page and its files are served at / with
// --admin-ui only, from the binary, with headers that keep other origins'
// scripts out; the API it uses still needs the key.
func TestAdminUI(t *testing.T) {
	get := func(admin, path string) (int, http.Header, string) {
		t.Helper()
		resp, err := http.Get("http://" + admin + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, string(b)
	}
	_, admin, stop, _ := startRun(t, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--api-key", "k", "--admin-ui")
	code, h, body := get(admin, "/")
	if code != 200 || !strings.HasPrefix(h.Get("Content-Type"), "text/html") || !strings.Contains(body, `<script type="module" src="admin.js">`) {
		t.Fatalf("/: %d %q %.80q", code, h.Get("Content-Type"), body)
	}
	if csp := h.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Fatalf("Content-Security-Policy %q", csp)
	}
	for _, f := range []string{"/admin.js", "/metrics.js"} {
		if code, h, body := get(admin, f); code != 200 || !strings.HasPrefix(h.Get("Content-Type"), "text/javascript") || !strings.Contains(body, "export") && f == "/metrics.js" {
			t.Fatalf("%s: %d %q", f, code, h.Get("Content-Type"))
		}
	}
	if code, _, _ := get(admin, "/admin.css"); code != 200 {
		t.Fatalf("/admin.css: %d", code)
	}
	if code, _, _ := get(admin, "/api/info"); code != http.StatusUnauthorized {
		t.Fatalf("/api/info without the key: %d", code)
	}
	stop()

	_, admin, stop, _ = startRun(t, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--api-key", "k")
	if code, _, _ := get(admin, "/"); code != http.StatusNotFound {
		t.Fatalf("/ without --admin-ui: %d", code)
	}
	stop()
}

// TestAdminUIScript runs the page's metrics module's tests with Node's
// test runner (skipped where node is missing).
func TestAdminUIScript(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node not found: the admin page's script tests need it")
	}
	cmd := exec.Command(node, "--test", "testdata/adminui.test.mjs")
	// A runner of its own even when go test itself runs under node's (its
	// children see NODE_TEST_CONTEXT and would report to it instead).
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NODE_TEST_CONTEXT=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node --test: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "# fail 0") {
		t.Fatalf("node --test:\n%s", out)
	}
}
