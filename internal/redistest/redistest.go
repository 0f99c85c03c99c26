// Package redistest runs a real redis-server for tests: its own process
// on a free loopback port, with no persistence (so a restart loses every
// key, as an operator's Redis without persistence would), in a directory
// under the test's temporary directory. Stop and Restart let chaos tests
// take it away and bring it back on the same port; it is killed by its PID
// when the test ends. Tests skip, saying why, when redis-server is not
// installed (Debian: apt-get install redis-server; .ci/run installs it).
package redistest

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Timeout bounds every wait here: for the server to answer, to exit.
const Timeout = 10 * time.Second

// Server is a redis-server process owned by a test.
type Server struct {
	// Addr is host:port, the same across restarts.
	Addr string

	t    testing.TB
	bin  string
	dir  string
	port int
	opts Options

	mu  sync.Mutex
	cmd *exec.Cmd
	log *os.File
}

// Options change how the server runs.
type Options struct {
	// Persist turns on the append-only file with an fsync per write, so
	// that a Restart after Stop (SIGKILL) keeps every write Redis answered.
	Persist bool
}

// Start runs redis-server on a free 127.0.0.1 port and waits until it
// answers PING. It skips the test when redis-server is missing.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartWith(t, Options{})
}

// StartWith is Start with Options.
func StartWith(t testing.TB, o Options) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server not found: install it (Debian: apt-get install redis-server) to run the Redis broker tests")
	}
	s := &Server{t: t, bin: bin, dir: t.TempDir(), opts: o}
	s.port = freePort(t)
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
	t.Cleanup(s.kill)
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
	return s
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return fmt.Errorf("redistest: redis-server on %s is already running", s.Addr)
	}
	logf, err := os.OpenFile(filepath.Join(s.dir, "redis.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("redistest: log file: %w", err)
	}
	args := []string{
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", s.dir,
		"--daemonize", "no",
		"--protected-mode", "yes",
	}
	if s.opts.Persist {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("redistest: start redis-server: %w", err)
	}
	s.cmd, s.log = cmd, logf
	// A port taken between freePort and the bind makes redis-server exit;
	// its log says so.
	deadline := time.Now().Add(Timeout)
	for {
		if err := ping(s.Addr); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return fmt.Errorf("redistest: redis-server on %s did not answer in %v (%v); its log:\n%s", s.Addr, Timeout, err, s.readLog())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ping sends an inline PING and reads one line.
func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}

func (s *Server) readLog() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	if len(b) > 8<<10 {
		b = b[len(b)-8<<10:]
	}
	return string(b)
}

// Stop kills the server (SIGKILL: nothing is saved, clients see their
// connections reset) and waits for it to exit. The port stays reserved for
// Restart only by convention: nothing else in the test should bind it.
func (s *Server) Stop() {
	s.t.Helper()
	s.mu.Lock()
	cmd, logf := s.cmd, s.log
	s.cmd, s.log = nil, nil
	s.mu.Unlock()
	if cmd == nil {
		s.t.Fatalf("redistest: Stop of a stopped server")
		return
	}
	_ = cmd.Process.Kill()
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(Timeout):
		s.t.Fatalf("redistest: redis-server pid %d did not exit in %v", cmd.Process.Pid, Timeout)
	}
	logf.Close()
}

// Restart starts the server again on the same port: empty, or with what
// it had if it persists (Options.Persist).
func (s *Server) Restart() {
	s.t.Helper()
	if err := s.start(); err != nil {
		s.t.Fatal(err)
	}
}

// Do sends one command (arguments as RESP bulk strings) on a connection of
// its own and returns the first reply line: for tests that look at the
// server behind the code under test (a key's TTL, FLUSHALL).
func (s *Server) Do(args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", s.Addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(Timeout))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write([]byte(b.String())); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimRight(line, "\r\n"), nil
}

// PID returns the running server's process id, 0 when stopped.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

func (s *Server) kill() {
	s.mu.Lock()
	cmd, logf := s.cmd, s.log
	s.cmd, s.log = nil, nil
	s.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
	}
}

// Sentinel is a redis-sentinel process watching one Server as master set
// "wsdtest" (quorum 1).
type Sentinel struct {
	// Addr is host:port of the sentinel.
	Addr string
	// Master is the master set's name.
	Master string
}

// StartSentinel runs a sentinel for master on a free loopback port and
// waits until it knows the master. It is killed by its PID when the test
// ends.
func StartSentinel(t testing.TB, master *Server) *Sentinel {
	t.Helper()
	dir := t.TempDir()
	port := freePort(t)
	conf := filepath.Join(dir, "sentinel.conf")
	body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor wsdtest 127.0.0.1 %d 1\nsentinel down-after-milliseconds wsdtest 1000\n",
		port, dir, master.port)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "sentinel.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(master.bin, conf, "--sentinel")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("redistest: start sentinel: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
	})
	s := &Sentinel{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Master: "wsdtest"}
	probe := &Server{Addr: s.Addr}
	deadline := time.Now().Add(Timeout)
	for {
		r, err := probe.Do("SENTINEL", "get-master-addr-by-name", "wsdtest")
		if err == nil && strings.HasPrefix(r, "*2") {
			return s
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "sentinel.log"))
			t.Fatalf("redistest: sentinel on %s does not know its master (%q %v); its log:\n%s", s.Addr, r, err, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
