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
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
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
	// CAFile is the PEM file of the CA that signed the server's
	// certificate (Options.TLS).
	CAFile string
	roots  *x509.CertPool

	mu  sync.Mutex
	cmd *exec.Cmd
	log *os.File
}

// Options change how the server runs.
type Options struct {
	// Persist turns on the append-only file with an fsync per write, so
	// that a Restart after Stop (SIGKILL) keeps every write Redis answered.
	Persist bool
	// TLS makes the server speak TLS only, with a certificate for
	// 127.0.0.1 signed by a CA made for the test (Server.CAFile).
	TLS bool
	// Password, if set, is required (requirepass).
	Password string
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
	if o.TLS {
		if err := s.makeCerts(); err != nil {
			t.Fatal(err)
		}
	}
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
	if s.opts.TLS {
		args[1] = "0" // no plain port
		args = append(args, "--tls-port", strconv.Itoa(s.port),
			"--tls-cert-file", filepath.Join(s.dir, "server.pem"), "--tls-key-file", filepath.Join(s.dir, "server.key"),
			"--tls-ca-cert-file", s.CAFile, "--tls-auth-clients", "no")
	}
	if s.opts.Password != "" {
		args = append(args, "--requirepass", s.opts.Password)
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
		if err := s.ping(); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return fmt.Errorf("redistest: redis-server on %s did not answer in %v (%v); its log:\n%s", s.Addr, Timeout, err, s.readLog())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ping sends PING and expects PONG (or the refusal of a server that
// wants a password: it answers, so it is up).
func (s *Server) ping() error {
	line, err := s.Do("PING")
	if err != nil {
		return err
	}
	if line != "+PONG" && !strings.HasPrefix(line, "-NOAUTH") {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

// dial connects to the server, with TLS if it speaks it.
func (s *Server) dial() (net.Conn, error) {
	d := &net.Dialer{Timeout: time.Second}
	if s.roots != nil {
		return tls.DialWithDialer(d, "tcp", s.Addr, &tls.Config{RootCAs: s.roots, ServerName: "127.0.0.1"})
	}
	return d.Dial("tcp", s.Addr)
}

// makeCerts writes a CA and a server certificate for 127.0.0.1 it signed.
func (s *Server) makeCerts() error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "redistest CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	s.CAFile = filepath.Join(s.dir, "ca.pem")
	for _, f := range []struct {
		name, typ string
		der       []byte
	}{{"ca.pem", "CERTIFICATE", caDER}, {"server.pem", "CERTIFICATE", der}, {"server.key", "EC PRIVATE KEY", keyDER}} {
		if err := os.WriteFile(filepath.Join(s.dir, f.name), pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der}), 0o600); err != nil {
			return err
		}
	}
	s.roots = x509.NewCertPool()
	s.roots.AddCert(ca)
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
// its own (after AUTH, if the server wants a password) and returns the
// first reply line: for tests that look at the server behind the code
// under test (a key's TTL, FLUSHALL).
func (s *Server) Do(args ...string) (string, error) {
	c, err := s.dial()
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(Timeout))
	r := bufio.NewReader(c)
	if s.opts.Password != "" {
		if line, err := roundTrip(c, r, "AUTH", s.opts.Password); err != nil || line != "+OK" {
			return line, err
		}
	}
	return roundTrip(c, r, args...)
}

// DoLines is Do returning the first n lines of the reply (an array's
// header and elements, for instance).
func (s *Server) DoLines(n int, args ...string) ([]string, error) {
	c, err := s.dial()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(Timeout))
	r := bufio.NewReader(c)
	if s.opts.Password != "" {
		if line, err := roundTrip(c, r, "AUTH", s.opts.Password); err != nil || line != "+OK" {
			return []string{line}, err
		}
	}
	first, err := roundTrip(c, r, args...)
	if err != nil {
		return nil, err
	}
	lines := []string{first}
	for len(lines) < n {
		line, err := r.ReadString('\n')
		if err != nil {
			return lines, err
		}
		lines = append(lines, strings.TrimRight(line, "\r\n"))
	}
	return lines, nil
}

func roundTrip(c net.Conn, r *bufio.Reader, args ...string) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write([]byte(b.String())); err != nil {
		return "", err
	}
	line, err := r.ReadString('\n')
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
