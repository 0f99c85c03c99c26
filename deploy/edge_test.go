package deploy

// The edge TLS configurations (haproxy/haproxy.cfg, nginx/wsd.conf), run for
// real: the shipped file, with the test's ports and paths put in place of the
// defaults its header lists, in front of a real wsd, and spoken to over wss://
// from chosen loopback source addresses. Skipped when haproxy (resp. nginx) is
// not installed. Everything listens on and talks to 127.0.0.0/8 only; every
// process started is stopped by its PID (or process group) when the test ends.

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/csv"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/wsdproject/wsd/internal/wsdproc"
)

const (
	haproxyConfig = "deploy/haproxy/haproxy.cfg"
	nginxConfig   = "deploy/nginx/wsd.conf"
)

// Client source addresses (all on the loopback interface).
const (
	clientA   = "127.0.0.3" // the client whose address must reach wsd
	clientB   = "127.0.0.4" // another client, under its own per-address count
	clientTLS = "127.0.0.5" // the TLS version and cipher checks
	forged    = "203.0.113.9"
)

// edgeTimeout bounds every wait of these tests.
const edgeTimeout = 10 * time.Second

func TestEdgeHAProxy(t *testing.T) {
	bin := lookEdge(t, "haproxy", "haproxy")
	dir := t.TempDir()
	cert := makeEdgeCert(t)
	pemFile := filepath.Join(dir, "wsd.pem") // HAProxy wants the chain and the key in one file
	writeEdgeFile(t, pemFile, append(append([]byte{}, cert.certPEM...), cert.keyPEM...))

	w := startEdgeWsd(t, "--trusted-proxies", "127.0.0.1", "--proxy-protocol")
	front := freeEdgePort(t)
	sock := filepath.Join(dir, "admin.sock")
	_, adminPort, _ := net.SplitHostPort(w.Admin)
	repl := [][2]string{
		{"bind :443", "bind " + front},
		{"/etc/haproxy/certs/wsd.pem", pemFile},
		{"/run/haproxy/admin.sock", sock},
		{"server wsd1 10.0.0.11:8080", "server wsd1 " + w.WS},
		{"check port 9090", "check port " + adminPort},
		// Short, so that the idle check below outlasts them: an upgraded
		// connection must be governed by "timeout tunnel" alone.
		{"timeout client 30s", "timeout client 1s"},
		{"timeout server 30s", "timeout server 1s"},
		// HAProxy needs a file limit of about 2 x maxconn, above the hard
		// limit of many test machines (and what the test needs).
		{"maxconn 200000", "maxconn 1000"},
	}
	if os.Geteuid() != 0 {
		repl = append(repl, [][2]string{{"chroot /var/lib/haproxy", ""},
			{"user haproxy", ""}, {"group haproxy", ""}}...)
	}
	cfg := filepath.Join(dir, "haproxy.cfg")
	writeEdgeFile(t, cfg, []byte(renderEdge(t, haproxyConfig, repl)))

	if out, err := exec.Command(bin, "-c", "-f", cfg).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c rejects %s: %v\n%s", haproxyConfig, err, out)
	}
	p := startEdgeProc(t, "haproxy", exec.Command(bin, "-db", "-f", cfg))
	waitEdgeListen(t, front, p)

	// The health check reaches wsd's /readyz on the admin port (without a
	// PROXY header, which the admin listener would not understand).
	waitEdge(t, "HAProxy's health check of wsd1 to pass (L7OK)", func() (bool, string) {
		st, err := haproxyServerStat(sock, "wsd", "wsd1")
		return err == nil && st["check_status"] == "L7OK" && st["status"] == "UP",
			fmt.Sprintf("%v %v", st, err)
	})

	e := &edge{front: front, wsd: w, roots: cert.pool}
	e.run(t, 2500*time.Millisecond) // idle past timeout client/server (1s)
	t.Logf("haproxy's output:\n%s", p.out.String())
}

func TestEdgeNginx(t *testing.T) {
	bin := lookEdge(t, "nginx", "nginx")
	dir := t.TempDir()
	cert := makeEdgeCert(t)
	crt, key := filepath.Join(dir, "wsd.crt"), filepath.Join(dir, "wsd.key")
	writeEdgeFile(t, crt, cert.certPEM)
	writeEdgeFile(t, key, cert.keyPEM)

	w := startEdgeWsd(t, "--trusted-proxies", "127.0.0.1")
	front := freeEdgePort(t)
	snippet := filepath.Join(dir, "wsd.conf")
	writeEdgeFile(t, snippet, []byte(renderEdge(t, nginxConfig, [][2]string{
		{"listen 443 ssl", "listen " + front + " ssl"},
		{"/etc/nginx/tls/wsd.crt", crt},
		{"/etc/nginx/tls/wsd.key", key},
		{"server 10.0.0.11:8080", "server " + w.WS},
	})))
	// The main configuration a Debian nginx.conf would be, reduced to what
	// runs in a temporary directory: the shipped file is included as is.
	tmp := filepath.Join(dir, "tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	main := fmt.Sprintf(`worker_processes 1;
pid %[1]s/nginx.pid;
error_log stderr notice;
events { worker_connections 1024; }
http {
    access_log %[1]s/access.log;
    client_body_temp_path %[2]s/body;
    proxy_temp_path %[2]s/proxy;
    fastcgi_temp_path %[2]s/fastcgi;
    uwsgi_temp_path %[2]s/uwsgi;
    scgi_temp_path %[2]s/scgi;
    include %[3]s;
}
`, dir, tmp, snippet)
	cfg := filepath.Join(dir, "nginx.conf")
	writeEdgeFile(t, cfg, []byte(main))
	args := []string{"-p", dir, "-e", "stderr", "-c", cfg, "-g", "daemon off;"}

	if out, err := exec.Command(bin, append([]string{"-t"}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("nginx -t rejects %s: %v\n%s", nginxConfig, err, out)
	}
	p := startEdgeProc(t, "nginx", exec.Command(bin, args...))
	waitEdgeListen(t, front, p)

	e := &edge{front: front, wsd: w, roots: cert.pool}
	e.run(t, 1500*time.Millisecond)
	if b, err := os.ReadFile(filepath.Join(dir, "access.log")); err == nil {
		t.Logf("nginx's access log:\n%s", b)
	}
}

// --- the checks, the same through either proxy -------------------------------------

type edge struct {
	t     *testing.T // the running check's
	front string     // the proxy's TLS listener
	wsd   *wsdproc.Proc
	roots *x509.CertPool
}

// run runs the checks as subtests, in order (they share wsd's counts).
func (e *edge) run(t *testing.T, idle time.Duration) {
	for _, c := range []struct {
		name string
		f    func()
	}{
		{"ClientAddress", e.clientAddress},
		{"PerAddressLimit", e.perAddressLimit},
		{"TLS", e.tls},
		{"Idle", func() { e.idle(idle) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			e.t = t
			c.f()
		})
	}
}

// clientAddress: wsd sees the client's address, neither the proxy's nor one
// the client forged in its own X-Forwarded-For.
func (e *edge) clientAddress() {
	t := e.t
	c, _, err := e.dial(clientA, nil, forged)
	if err != nil {
		t.Fatalf("wss through the proxy from %s: %v", clientA, err)
	}
	defer c.Close()
	e.echo(c, 1)
	line := e.wsd.Log.Find(t, `"msg":"connection opened"`, `"client":"`+clientA+`"`)
	t.Logf("wsd: %s", line)
	for _, bad := range []string{"127.0.0.1", forged} {
		if l := e.wsd.Log.Lookup(`"msg":"connection opened"`, `"client":"`+bad+`"`); l != "" {
			t.Errorf("wsd took the client for %s: %s", bad, l)
		}
	}
}

// perAddressLimit: --max-conns-per-ip 2 counts the real client: its third
// connection is refused with 429 through the proxy, another client's is not,
// and a place freed by a close is taken again.
func (e *edge) perAddressLimit() {
	t := e.t
	var open []net.Conn
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	for i := range 2 {
		c, _, err := e.dial(clientA, nil, "")
		if err != nil {
			t.Fatalf("connection %d from %s: %v", i+1, clientA, err)
		}
		e.echo(c, 10+i)
		open = append(open, c)
	}
	// Several tries: whether wsd gets the proxy's PROXY header and the
	// request in one read or two varies, and both must be refused.
	const tries = 10
	for i := range tries {
		var status int
		var body string
		c, _, err := e.dialWith(clientA, nil, "", func(d *ws.Dialer) {
			d.OnStatusError = func(s int, _ []byte, r io.Reader) {
				status = s
				resp, rerr := http.ReadResponse(bufio.NewReader(r), nil)
				if rerr == nil {
					b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
					body = fmt.Sprintf("%s, Retry-After %q: %s", resp.Status, resp.Header.Get("Retry-After"), strings.TrimSpace(string(b)))
				}
			}
		})
		if c != nil {
			open = append(open, c)
		}
		var se ws.StatusError
		if !errors.As(err, &se) || int(se) != http.StatusTooManyRequests {
			t.Fatalf("connection from %s over its limit of 2 (try %d of %d): err %v, want HTTP 429",
				clientA, i+1, tries, err)
		}
		if i == 0 {
			t.Logf("third connection from %s refused: %d %s", clientA, status, body)
		}
	}
	e.wsd.Log.Find(t, `"msg":"connection refused"`, `"client":"`+clientA+`"`, `"reason":"ip_conns"`)

	c, _, err := e.dial(clientB, nil, "")
	if err != nil {
		t.Fatalf("connection from %s while %s is at its limit: %v", clientB, clientA, err)
	}
	e.echo(c, 20)
	c.Close()

	// A closed connection gives its place back (wsd learns of the close
	// through the proxy, so allow it a moment).
	open[0].Close()
	open = open[1:]
	waitEdge(t, "a freed place to be reusable by "+clientA, func() (bool, string) {
		c, _, err := e.dial(clientA, nil, "")
		if err != nil {
			time.Sleep(50 * time.Millisecond)
			return false, err.Error()
		}
		open = append(open, c)
		return true, ""
	})
	e.echo(open[len(open)-1], 30)
}

// tls: TLS 1.2 (an ECDHE AEAD suite) and 1.3 work end to end; TLS 1.1, and
// TLS 1.2 with a CBC suite, are refused at the handshake.
func (e *edge) tls() {
	t := e.t
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
		ok   bool
	}{
		{"TLS 1.1", &tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}, false},
		{"TLS 1.2 ECDHE-ECDSA-AES128-SHA (CBC)", &tls.Config{MaxVersion: tls.VersionTLS12,
			CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA}}, false},
		{"TLS 1.2 ECDHE-ECDSA-AES128-SHA256 (CBC)", &tls.Config{MaxVersion: tls.VersionTLS12,
			CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256}}, false},
		{"TLS 1.2", &tls.Config{MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12}, true},
		{"TLS 1.2 ECDHE-ECDSA-CHACHA20-POLY1305", &tls.Config{MaxVersion: tls.VersionTLS12,
			CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305}}, true},
		{"TLS 1.3", &tls.Config{MinVersion: tls.VersionTLS13}, true},
	} {
		c, st, err := e.dial(clientTLS, tc.cfg, "")
		switch {
		case tc.ok && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.ok:
			e.echo(c, 40)
			c.Close()
			t.Logf("%s: %s, %s", tc.name, tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite))
		case err == nil:
			c.Close()
			t.Errorf("%s: accepted (%s, %s), want a failed handshake", tc.name,
				tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite))
		default:
			var se ws.StatusError
			if errors.As(err, &se) {
				t.Errorf("%s: HTTP %d, want a failed TLS handshake", tc.name, int(se))
			}
			t.Logf("%s: refused: %v", tc.name, err)
		}
	}

	// No TLS 1.2 session tickets: a client that keeps them cannot resume
	// (Go's client resumes TLS 1.2 by ticket only).
	cfg := &tls.Config{MaxVersion: tls.VersionTLS12, ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	for i := range 2 {
		c, st, err := e.dial(clientTLS, cfg, "")
		if err != nil {
			t.Fatalf("TLS 1.2 with a session cache: %v", err)
		}
		c.Close()
		if st.DidResume {
			t.Errorf("TLS 1.2 connection %d resumed a session: session tickets are on", i+1)
		}
	}
}

// idle: a connection silent for d (longer than any short timeout the test
// set) still carries messages: the proxy's WebSocket timeouts apply.
func (e *edge) idle(d time.Duration) {
	c, _, err := e.dial(clientB, nil, "")
	if err != nil {
		e.t.Fatalf("connection from %s: %v", clientB, err)
	}
	defer c.Close()
	e.echo(c, 50)
	time.Sleep(d)
	e.echo(c, 51)
}

// dial opens wss://front/ws from source address src. cfg, if not nil, is the
// TLS configuration to start from (the test's root is added); xff, if not
// empty, is sent as the client's own X-Forwarded-For.
func (e *edge) dial(src string, cfg *tls.Config, xff string) (net.Conn, *tls.ConnectionState, error) {
	return e.dialWith(src, cfg, xff, nil)
}

func (e *edge) dialWith(src string, cfg *tls.Config, xff string, tweak func(*ws.Dialer)) (net.Conn, *tls.ConnectionState, error) {
	tc := &tls.Config{}
	if cfg != nil {
		tc = cfg.Clone()
	}
	tc.RootCAs = e.roots
	var tconn *tls.Conn
	nd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: edgeTimeout}
	d := ws.Dialer{
		Timeout: edgeTimeout,
		NetDial: nd.DialContext,
		TLSClient: func(conn net.Conn, host string) net.Conn {
			c := tc.Clone()
			c.ServerName = host
			tconn = tls.Client(conn, c)
			return tconn
		},
	}
	if xff != "" {
		d.Header = ws.HandshakeHeaderHTTP(http.Header{"X-Forwarded-For": {xff}})
	}
	if tweak != nil {
		tweak(&d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), edgeTimeout)
	defer cancel()
	conn, br, _, err := d.Dial(ctx, "wss://"+e.front+"/ws")
	if err != nil {
		if conn != nil {
			conn.Close()
		}
		return nil, nil, err
	}
	if br != nil {
		ws.PutReader(br) // wsd sends nothing before the client speaks
	}
	st := tconn.ConnectionState()
	return conn, &st, nil
}

// echo sends an echo with id and waits for its reply.
func (e *edge) echo(c net.Conn, id int) {
	t := e.t
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(edgeTimeout))
	defer c.SetDeadline(time.Time{})
	msg := fmt.Sprintf(`{"type":"echo","id":%d,"data":"x"}`, id)
	if err := wsutil.WriteClientText(c, []byte(msg)); err != nil {
		t.Fatalf("send %s: %v", msg, err)
	}
	for {
		b, err := wsutil.ReadServerText(c)
		if err != nil {
			t.Fatalf("reply to %s: %v", msg, err)
		}
		var r struct {
			Type string
			ID   int
			Data string
		}
		if json.Unmarshal(b, &r) == nil && r.Type == "echo_reply" && r.ID == id {
			if r.Data != "x" {
				t.Fatalf("reply to %s: %s", msg, b)
			}
			return
		}
	}
}

// --- wsd ---------------------------------------------------------------------------

// startEdgeWsd runs wsd on free loopback ports, with the per-address limit
// and debug logs the checks read, plus args; its log is kept.
func startEdgeWsd(t *testing.T, args ...string) *wsdproc.Proc {
	t.Helper()
	return wsdproc.Start(t, append([]string{"--max-conns-per-ip", "2", "--log-level", "debug"}, args...)...)
}

// --- processes -----------------------------------------------------------------------

// edgeLog collects a process's output, line by line.
type edgeLog struct {
	mu  sync.Mutex
	buf []byte
}

func (l *edgeLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	return len(p), nil
}

func (l *edgeLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.buf)
}

type edgeProc struct {
	cmd  *exec.Cmd
	out  *edgeLog
	done chan struct{}
}

func (p *edgeProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// startEdgeProc starts cmd in a process group of its own, its output kept.
// When the test ends it is sent SIGTERM, then (after a bounded wait) its
// group SIGKILL.
func startEdgeProc(t *testing.T, name string, cmd *exec.Cmd) *edgeProc {
	t.Helper()
	p := &edgeProc{cmd: cmd, out: &edgeLog{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(edgeTimeout):
			t.Errorf("%s (pid %d) did not stop on SIGTERM; killing its process group", name, pid)
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			<-p.done
		}
		// nginx's workers: the master stops them on SIGTERM; any left in
		// the group are killed.
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		if t.Failed() {
			t.Logf("%s's output:\n%s", name, p.out.String())
		}
	})
	return p
}

// lookEdge returns the path of a proxy, or skips the test naming its package.
func lookEdge(t *testing.T, bin, pkg string) string {
	t.Helper()
	for _, p := range []string{bin, "/usr/sbin/" + bin} { // sbin may be off a user's PATH
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	t.Skipf("%s not found: install the Debian package %s "+
		"(apt-get install --no-install-recommends %s) to run this test", bin, pkg, pkg)
	return ""
}

// waitEdgeListen waits for the proxy to accept TCP connections on addr.
func waitEdgeListen(t *testing.T, addr string, p *edgeProc) {
	t.Helper()
	waitEdge(t, "the proxy to listen on "+addr, func() (bool, string) {
		if p.exited() {
			t.Fatalf("the proxy exited:\n%s", p.out.String())
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			time.Sleep(50 * time.Millisecond)
			return false, err.Error()
		}
		c.Close()
		return true, ""
	})
}

// waitEdge polls cond for up to edgeTimeout; on timeout it fails the test
// with cond's last detail.
func waitEdge(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(edgeTimeout)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %s", what, detail)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// haproxyServerStat returns "show stat"'s fields for one server.
func haproxyServerStat(sock, backend, server string) (map[string]string, error) {
	c, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, "show stat\n"); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return nil, err
	}
	r := csv.NewReader(strings.NewReader(strings.TrimPrefix(string(b), "# ")))
	r.FieldsPerRecord = -1
	recs, err := r.ReadAll()
	if err != nil || len(recs) == 0 {
		return nil, fmt.Errorf("show stat: %v: %q", err, b)
	}
	for _, rec := range recs[1:] {
		if len(rec) > 1 && rec[0] == backend && rec[1] == server {
			m := map[string]string{}
			for i, k := range recs[0] {
				if i < len(rec) && k != "" {
					m[k] = rec[i]
				}
			}
			return m, nil
		}
	}
	return nil, fmt.Errorf("no %s/%s in show stat", backend, server)
}

// --- files ---------------------------------------------------------------------------

// renderEdge returns a shipped file with each pair's first string replaced by
// its second; a string the file lacks fails the test (the file's header
// lists them).
func renderEdge(t *testing.T, rel string, repl [][2]string) string {
	t.Helper()
	s := string(readFile(t, rel))
	for _, r := range repl {
		if !strings.Contains(s, r[0]) {
			t.Fatalf("%s no longer contains %q, which the test replaces (see its header)", rel, r[0])
		}
		s = strings.ReplaceAll(s, r[0], r[1])
	}
	return s
}

func writeEdgeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// freeEdgePort returns a loopback address with a port free a moment ago.
func freeEdgePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

type edgeCert struct {
	certPEM, keyPEM []byte
	pool            *x509.CertPool
}

// makeEdgeCert makes a self-signed ECDSA P-256 certificate for 127.0.0.1
// and localhost, valid for an hour.
func makeEdgeCert(t *testing.T) edgeCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "wsd edge test"},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	k, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return edgeCert{
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: k}),
		pool:    pool,
	}
}
