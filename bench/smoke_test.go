package bench

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wsdproject/wsd/internal/wsdproc"
)

// TestSmoke runs `wsbench smoke` at a tiny scale against the real wsd and
// the real baseline (gnetecho, built here): every mode runs, every
// connection answers, both servers are measured, and the table has a
// line for each.
func TestSmoke(t *testing.T) {
	dir := t.TempDir()
	gnetecho := filepath.Join(dir, "gnetecho")
	if out, err := exec.Command("go", "build", "-o", gnetecho, "../bench/cmd/gnetecho").CombinedOutput(); err != nil {
		t.Fatalf("build gnetecho: %v\n%s", err, out)
	}
	r, err := RunSmoke(context.Background(), SmokeOptions{
		Wsd: wsdproc.Binary(t), Baseline: gnetecho, Dir: dir,
		Idle: 300, Connect: 300, Echo: 10, EchoTime: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	r.Print(&out)
	t.Logf("\n%s", out.String())
	if r.Idle.Connections != 300 || r.Idle.Verdict() != "" {
		t.Errorf("idle: %d connections, verdict %q", r.Idle.Connections, r.Idle.Verdict())
	}
	for name, c := range map[string]*ConnectResult{"wsd": r.Connect, "gnetecho": r.ConnectBaseline} {
		if c == nil || len(c.Rounds) != 1 || c.Rounds[0].Completed != 300 || c.Rounds[0].Failed != 0 {
			t.Errorf("connect against %s: %+v", name, c)
		}
	}
	for name, e := range map[string]*EchoResult{"wsd": r.Echo, "gnetecho": r.EchoBaseline} {
		if e == nil || e.Echoed == 0 || e.Mismatch != 0 || e.Dropped != 0 || !e.ServerCPUMeasured {
			t.Errorf("echo against %s: %+v", name, e)
		}
	}
	for _, want := range []string{"idle     wsd", "connect  wsd", "connect  gnetecho", "echo     wsd", "echo     gnetecho"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the table has no %q line", want)
		}
	}
}
