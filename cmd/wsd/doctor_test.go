package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/wsdproject/wsd/internal/wsdproc"
)

// doctor runs the real binary's wsd doctor with args.
func doctor(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := exec.Command(wsdproc.Binary(t), append([]string{"doctor"}, args...)...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatal(err)
	}
	return code, out.String(), errOut.String()
}

func fixture(name string) string { return filepath.Join("..", "..", "sysctl", "testdata", name) }

// wsd doctor on this host: a few connections are fine anywhere; a million
// in one process need an open-file hard limit this host may not have.
func TestDoctorLiveHost(t *testing.T) {
	code, out, errOut := doctor(t, "--conns", "10")
	if code != 0 || !strings.Contains(out, "ready for 10 connections: 0 FAIL") || errOut != "" {
		t.Fatalf("doctor --conns 10: exit %d, stderr %q\n%s", code, errOut, out)
	}
	// The binary's own hard limit is the test's (a child gets the limits
	// the test process started with).
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	code, out, _ = doctor(t, "--conns", "1000000")
	if rl.Max >= 1_000_128 {
		t.Logf("hard RLIMIT_NOFILE %d holds a million: exit %d\n%s", rl.Max, code, out)
		return
	}
	minK := (1_000_000 + rl.Max - 128 - 1) / (rl.Max - 128)
	line := "FAIL  RLIMIT_NOFILE hard"
	if code != 1 || !strings.Contains(out, line) || !strings.Contains(out, fmt.Sprintf(" %d ", rl.Max)) ||
		!strings.Contains(out, fmt.Sprintf("--procs %d ", minK)) || !strings.Contains(out, "not ready for 1000000 connections") {
		t.Errorf("doctor --conns 1000000 with hard limit %d: exit %d, want 1, a %q line suggesting --procs %d:\n%s", rl.Max, code, line, minK, out)
	}
	code, out, _ = doctor(t, "--conns", "1000000", "--procs", fmt.Sprint(minK+9), "--local-clients")
	if !strings.Contains(out, "OK    RLIMIT_NOFILE hard") {
		t.Errorf("doctor --conns 1000000 --procs %d --local-clients: exit %d, no OK nofile line:\n%s", minK+9, code, out)
	}
}

func TestDoctorFixtures(t *testing.T) {
	code, out, _ := doctor(t, "--root", fixture("ready"), "--conns", "1000000", "--local-clients")
	if code != 0 || !strings.Contains(out, "ready for 1000000 connections: 0 FAIL, 0 WARN") {
		t.Errorf("ready fixture: exit %d\n%s", code, out)
	}
	code, out, _ = doctor(t, "--root", fixture("nofile-hard"), "--conns", "1000000")
	if code != 1 || !strings.Contains(out, "--procs 16 ") || !strings.Contains(out, "not ready for 1000000 connections: 1 FAIL, 0 WARN") {
		t.Errorf("nofile-hard fixture: exit %d\n%s", code, out)
	}
	// WARN alone exits 0.
	code, out, _ = doctor(t, "--root", fixture("somaxconn"), "--conns", "1000000")
	if code != 0 || !strings.Contains(out, "WARN  net.core.somaxconn") || !strings.Contains(out, "fix: sysctl/apply --apply (sets net.core.somaxconn to 65535)") {
		t.Errorf("somaxconn fixture: exit %d\n%s", code, out)
	}
	code, out, _ = doctor(t, "--root", fixture("memory"), "--conns", "1000000", "--json")
	var report struct {
		Ready    bool
		Findings []struct{ Level, Key, Have, Need string }
	}
	if err := json.Unmarshal([]byte(out), &report); err != nil {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	var fails []string
	for _, f := range report.Findings {
		if f.Level == "FAIL" {
			fails = append(fails, f.Key+" "+f.Have+" "+f.Need)
		}
	}
	if code != 1 || report.Ready || len(fails) != 1 || fails[0] != "memory 4.0 GiB available ≥ 5.6 GiB" {
		t.Errorf("memory fixture --json: exit %d, ready %v, FAIL lines %q", code, report.Ready, fails)
	}
}

// Usage errors: exit 2 and one line on stderr, nothing on stdout.
func TestDoctorUsage(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--conns", "0"}, "--conns 0: want 1 or more connections"},
		{[]string{"--conns", "-3"}, "--conns -3: want 1 or more connections"},
		{[]string{"--conns", "lots"}, `invalid --conns "lots": want a whole number`},
		{[]string{"--conns", "10", "--procs", "0"}, "--procs 0: want 1 or more wsd processes"},
		{[]string{"--conns", "10", "--procs", "20"}, "--procs 20 is more than --conns 10"},
		{[]string{}, "--conns N is required"},
		{[]string{"--conns", "10", "please"}, `unexpected argument "please"`},
		{[]string{"--conns", "10", "--listen", ":8080"}, "unknown flag --listen"},
	} {
		code, out, errOut := doctor(t, c.args...)
		if code != 2 || out != "" || !strings.HasPrefix(errOut, "wsd doctor: ") || !strings.Contains(errOut, c.want) ||
			strings.Count(errOut, "\n") != 1 {
			t.Errorf("doctor %q: exit %d, stdout %q, stderr %q; want 2 and %q", c.args, code, out, errOut, c.want)
		}
	}
	code, out, _ := doctor(t, "-h")
	if code != 0 || !strings.HasPrefix(out, "Usage: wsd doctor --conns N") || !strings.Contains(out, "--local-clients") {
		t.Errorf("doctor -h: exit %d\n%s", code, out)
	}
}

// wsd --help points at the subcommand, and run dispatches it before the
// server's flags are parsed.
func TestHelpMentionsDoctor(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, &out, io.Discard, nil); code != 0 || !strings.Contains(out.String(), "wsd doctor --conns N") {
		t.Errorf("--help: exit %d, no wsd doctor:\n%s", code, out.String())
	}
	out.Reset()
	code := run(context.Background(), []string{"doctor", "--root", fixture("ready"), "--conns", "5"}, &out, &errOut, nil)
	if code != 0 || !strings.Contains(out.String(), "ready for 5 connections") {
		t.Errorf("run doctor: exit %d, stderr %q\n%s", code, errOut.String(), out.String())
	}
}
