// Package wsdproc runs the real wsd binary for tests that need a process
// of its own: signals, resource limits, several processes on one port, a
// proxy in front, memory read from /proc. The binary is built once per
// test process (call Cleanup from TestMain to remove it); each Start runs
// it on free loopback ports, keeps its log, and stops it by its PID when
// the test ends.
package wsdproc

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Timeout bounds every wait here: the build aside, for the binary to
// listen, for a log line, for a metric.
const Timeout = 10 * time.Second

var built struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

// Binary returns the path of the wsd binary, building ./cmd/wsd the first
// time it is asked.
func Binary(t testing.TB) string {
	t.Helper()
	built.once.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		if built.dir, built.err = os.MkdirTemp("", "wsd-bin-"); built.err != nil {
			return
		}
		built.bin = filepath.Join(built.dir, "wsd")
		cmd := exec.Command("go", "build", "-o", built.bin, "./cmd/wsd")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			built.err = fmt.Errorf("go build ./cmd/wsd: %v\n%s", err, out)
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.bin
}

// Cleanup removes the binary; TestMain calls it after m.Run.
func Cleanup() {
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
}

// Options change how Start runs wsd.
type Options struct {
	// Args come after --listen 127.0.0.1:0 --admin 127.0.0.1:0
	// --log-format json (a later flag wins, so they may override those).
	Args []string
	// Env is added to the test's environment.
	Env []string
	// Wrap, if set, makes the command from the binary and the arguments
	// (a shell that sets a resource limit first, say).
	Wrap func(bin string, args []string) *exec.Cmd
}

// Proc is a running wsd.
type Proc struct {
	Cmd   *exec.Cmd
	WS    string // the WebSocket listener, host:port
	Admin string // the admin listener, host:port
	Log   *Log
}

// Start runs wsd with args on free loopback ports and waits until both of
// its listeners are up.
func Start(t testing.TB, args ...string) *Proc {
	t.Helper()
	return StartWith(t, Options{Args: args})
}

// StartWith is Start with Options.
func StartWith(t testing.TB, o Options) *Proc {
	t.Helper()
	bin := Binary(t)
	args := append([]string{"--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--log-format", "json"}, o.Args...)
	cmd := exec.Command(bin, args...)
	if o.Wrap != nil {
		cmd = o.Wrap(bin, args)
	}
	cmd.Env = append(os.Environ(), o.Env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	p := &Proc{Cmd: cmd, Log: &Log{}}
	listening := make(chan struct{})
	go func() {
		var ws, admin string
		signalled := false
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.Log.add(line)
			var l struct{ Msg, Addr string }
			if !signalled && json.Unmarshal([]byte(line), &l) == nil {
				switch l.Msg {
				case "listening":
					ws = l.Addr
				case "admin listening":
					admin = l.Addr
				}
				if ws != "" && admin != "" { // written before the close: Start reads them after it
					p.WS, p.Admin = ws, admin
					close(listening)
					signalled = true
				}
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	select {
	case <-listening:
	case <-time.After(Timeout):
		t.Fatalf("wsd did not start listening in %v; its log:\n%s", Timeout, p.Log)
	}
	return p
}

// PID returns the process id.
func (p *Proc) PID() int { return p.Cmd.Process.Pid }

// Metric reads one sample, exactly as written before its value (such as
// `wsd_limits_fired_total{kind="idle_timeout"}`), from /metrics.
func (p *Proc) Metric(t testing.TB, sample string) int {
	t.Helper()
	resp, err := http.Get("http://" + p.Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), sample+" "); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no metric %s", sample)
	return 0
}

// WaitMetric waits, bounded, for a sample to read want (a count that is
// already decided and only has to show).
func (p *Proc) WaitMetric(t testing.TB, sample string, want int) {
	t.Helper()
	deadline := time.Now().Add(Timeout)
	for p.Metric(t, sample) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s = %d, want %d", sample, p.Metric(t, sample), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Log keeps a process's log lines.
type Log struct {
	mu    sync.Mutex
	lines []string
}

func (l *Log) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lines) < 100000 {
		l.lines = append(l.lines, s)
	}
}

// String returns the log so far.
func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// Lookup returns the first line holding every part, or "".
func (l *Log) Lookup(parts ...string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
next:
	for _, line := range l.lines {
		for _, p := range parts {
			if !strings.Contains(line, p) {
				continue next
			}
		}
		return line
	}
	return ""
}

// Find waits, bounded, for a line holding every part (logs lag replies).
func (l *Log) Find(t testing.TB, parts ...string) string {
	t.Helper()
	deadline := time.Now().Add(Timeout)
	for {
		if line := l.Lookup(parts...); line != "" {
			return line
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q", parts)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
