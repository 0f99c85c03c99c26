// Package interop checks wsd against WebSocket clients it does not share
// code with: Node's ws package and the WHATWG WebSocket built into Node
// (the API browsers expose).
package interop

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wsdproject/wsd/engine"
	"github.com/wsdproject/wsd/hub"
	"github.com/wsdproject/wsd/internal/stack"
)

func startServer(t *testing.T) string {
	t.Helper()
	s := stack.Start(t, stack.Options{Engine: engine.Config{Compression: true}, Policy: hub.Policy{ClientPublish: true}})
	return "ws://" + s.Addr
}

func TestNodeClients(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed; the interop test needs Node.js (make test installs its npm packages)")
	}
	dir, _ := filepath.Abs("node")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "ws")); err != nil {
		t.Fatalf("the ws package is not installed in %s: run `make test` (it runs npm ci there)", dir)
	}
	url := startServer(t)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"ws package", []string{"client.mjs", "ws", url}},
		{"built-in WebSocket", []string{"--experimental-websocket", "--no-warnings", "client.mjs", "browser", url}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, node, tc.args...)
			cmd.Dir = dir
			out, err := cmd.CombinedOutput()
			t.Logf("%s", strings.TrimSpace(string(out)))
			if err != nil {
				t.Fatalf("node client failed: %v", err)
			}
			if n := strings.Count(string(out), "ok "); n != 3 {
				t.Fatalf("%d checks passed, want 3", n)
			}
		})
	}
}
