package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/sys/unix"
)

// Where a connect run's clients put their token.
const (
	TokenInHeader = "header" // Authorization: Bearer <token>
	TokenInQuery  = "query"  // ?token=<token>
)

// ConnectOptions describe a connect run: open N connections, Concurrency
// handshakes at a time, each with a token; hold them until all are done,
// close them; Rounds times.
type ConnectOptions struct {
	URL         string   // ws://host:port/path of a running wsd
	N           int      // connections per round
	Concurrency int      // handshakes in flight
	Rounds      int      // rounds; round 2 on presents the same tokens again
	Tokens      []string // connection i presents Tokens[i mod len]; none: anonymous
	TokenIn     string   // TokenInHeader or TokenInQuery
	Source      net.IP   // first source address (nil: any); see PerSource
	PerSource   int      // connections per source address; each round starts on a fresh one
	ServerPID   int      // the server's process (0: every process listening on URL's port, summed; -1: not measured)
	// Held connections are opened first, by client processes of their own
	// (HeldPerProcess each, from HeldSource onwards), and kept open, pings
	// answered, for the whole run: the rounds' handshakes land on a server
	// that already holds them.
	Held           int
	HeldPerProcess int
	HeldSource     net.IP
	Pause          time.Duration // between rounds, after closing, for the server to finish the closes
	Linger         time.Duration // keep a round's connections open this long after its last handshake (a profile of the storm then sees no closes)
	Timeout        time.Duration // bound on the whole run
	Progress       io.Writer     // progress lines (nil: none)
	Terminal       bool          // Progress is a terminal

	held func(round, open int) // tests: called with every connection of a round open
}

// ConnectResult is what a connect run measured.
type ConnectResult struct {
	URL         string         `json:"url"`
	N           int            `json:"connections_per_round"`
	Concurrency int            `json:"concurrency"`
	Tokens      int            `json:"token_lines"`
	TokenIn     string         `json:"token_in,omitempty"`
	ServerPID   int            `json:"server_pid"`  // the first of ServerPIDs
	ServerPIDs  []int          `json:"server_pids"` // whose CPU times are summed
	Held        int            `json:"held_connections"`
	HeldDropped int64          `json:"held_dropped"` // held connections the server closed during the run
	HostCPUs    int            `json:"host_cpus"`
	Rounds      []ConnectRound `json:"rounds"`
}

// ConnectRound is one round's figures. Wall time runs from the first dial
// to the last handshake's end; CPU figures cover the same span (the
// closes after it are not counted).
type ConnectRound struct {
	Round             int            `json:"round"`
	Completed         int64          `json:"completed"`
	Failed            int64          `json:"failed"`
	FirstStatus       int            `json:"first_refusal_status,omitempty"` // HTTP status of the first refusal
	Statuses          map[string]int `json:"refusal_statuses,omitempty"`     // refusals by HTTP status
	FirstError        string         `json:"first_error,omitempty"`
	WallSeconds       float64        `json:"wall_seconds"`
	PerSecond         float64        `json:"handshakes_per_second"`
	ServerCPUSeconds  float64        `json:"server_cpu_seconds"`
	PerServerCPUSec   float64        `json:"handshakes_per_server_cpu_second"`
	ClientCPUSeconds  float64        `json:"client_cpu_seconds"`
	LatencyP50Millis  float64        `json:"latency_p50_ms"`
	LatencyP99Millis  float64        `json:"latency_p99_ms"`
	LatencyMaxMillis  float64        `json:"latency_max_ms"`
	ServerCPUMeasured bool           `json:"server_cpu_measured"`
}

// RefusedError is a handshake the server answered with another status
// than 101.
type RefusedError struct {
	Status     int
	Line       string        // the status line
	RetryAfter time.Duration // its Retry-After header in seconds (0: none)
}

func (e *RefusedError) Error() string { return "handshake refused: " + e.Line }

// LoadTokens reads a token file: one token a line; blank lines and lines
// starting with # are skipped.
func LoadTokens(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var toks []string
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		toks = append(toks, line)
	}
	if len(toks) == 0 {
		return nil, fmt.Errorf("%s: no tokens", path)
	}
	return toks, nil
}

// connectTarget builds the upgrade requests of a run.
type connectTarget struct {
	host, path string
	tokens     []string
	inQuery    bool
}

// request is the upgrade request of connection i: it presents
// tokens[i mod len(tokens)].
func (t *connectTarget) request(i int) []byte {
	path, header := t.path, ""
	if len(t.tokens) > 0 {
		tok := t.tokens[i%len(t.tokens)]
		if t.inQuery {
			sep := "?"
			if strings.Contains(path, "?") {
				sep = "&"
			}
			path += sep + "token=" + url.QueryEscape(tok)
		} else {
			header = "Authorization: Bearer " + tok + "\r\n"
		}
	}
	return fmt.Appendf(nil, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s\r\n", path, t.host, header)
}

// open dials from source and upgrades with connection i's request.
func (t *connectTarget) open(ctx context.Context, source net.IP, i int) (*net.TCPConn, error) {
	nd := net.Dialer{Timeout: 10 * time.Second, Control: bindNoPort}
	if source != nil {
		nd.LocalAddr = &net.TCPAddr{IP: source}
	}
	c, err := nd.DialContext(ctx, "tcp", t.host)
	if err != nil {
		return nil, err
	}
	conn := c.(*net.TCPConn)
	if err := upgradeStatus(conn, t.request(i)); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// upgradeStatus sends req and reads the response head: nil for a 101, a
// *RefusedError for any other status.
func upgradeStatus(conn net.Conn, req []byte) error {
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	defer conn.SetDeadline(time.Time{})
	if _, err := conn.Write(req); err != nil {
		return err
	}
	var head []byte
	buf := make([]byte, 512)
	for !bytes.Contains(head, []byte("\r\n\r\n")) {
		n, err := conn.Read(buf)
		head = append(head, buf[:n]...)
		if bytes.Contains(head, []byte("\r\n\r\n")) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading the handshake response: %w", err)
		}
		if len(head) > 8192 {
			return errors.New("handshake response too long")
		}
	}
	line, _, _ := bufio.NewReader(bytes.NewReader(head)).ReadLine()
	f := strings.Fields(string(line))
	if len(f) < 2 || !strings.HasPrefix(f[0], "HTTP/1.") {
		return fmt.Errorf("not an HTTP response: %q", line)
	}
	status, err := strconv.Atoi(f[1])
	if err != nil {
		return fmt.Errorf("not an HTTP response: %q", line)
	}
	if status != 101 {
		return &RefusedError{Status: status, Line: string(line), RetryAfter: retryAfter(head)}
	}
	return nil
}

// retryAfter returns a response head's Retry-After in seconds (the form
// wsd sends; 0: absent or an HTTP date).
func retryAfter(head []byte) time.Duration {
	for line := range strings.Lines(string(head)) {
		name, val, ok := strings.Cut(line, ":")
		if !ok || !strings.EqualFold(strings.TrimSpace(name), "Retry-After") {
			continue
		}
		if n, err := strconv.Atoi(strings.TrimSpace(val)); err == nil && n > 0 {
			return time.Duration(n) * time.Second
		}
	}
	return 0
}

// RunConnect runs the handshake measurement against a running server.
func RunConnect(parent context.Context, o ConnectOptions) (*ConnectResult, error) {
	u, err := url.Parse(o.URL)
	if err != nil || u.Scheme != "ws" || u.Host == "" {
		return nil, fmt.Errorf("bad -url %q: want ws://host:port/path", o.URL)
	}
	if o.PerSource == 0 {
		o.PerSource = 10000
	}
	var lim unix.Rlimit
	_ = unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
	switch {
	case o.N < 1 || o.Concurrency < 1 || o.Rounds < 1 || o.PerSource < 1:
		return nil, errors.New("-n, -concurrency, -rounds and -per-source must be positive")
	case lim.Cur > 0 && uint64(o.N)+200 > lim.Cur:
		return nil, fmt.Errorf("-n %d: this process may open %d files and holds one per connection (leave 200 spare)", o.N, lim.Cur)
	case o.TokenIn != TokenInHeader && o.TokenIn != TokenInQuery:
		return nil, fmt.Errorf("-token-in %q: want header or query", o.TokenIn)
	case o.Source != nil && o.Source.To4() == nil:
		return nil, errors.New("-source must be an IPv4 address")
	case o.Timeout <= 0:
		return nil, errors.New("-timeout must be positive")
	}
	var pids []int
	switch o.ServerPID {
	case -1:
	case 0:
		if pids, err = stormServerPIDs(nil, u); err != nil {
			return nil, err
		}
	default:
		if pids, err = stormServerPIDs([]int{o.ServerPID}, u); err != nil {
			return nil, err
		}
	}
	pid := -1
	if len(pids) > 0 {
		pid = pids[0]
	}
	ctx, cancel := context.WithTimeout(parent, o.Timeout)
	defer cancel()
	t := &connectTarget{host: u.Host, path: u.RequestURI(), tokens: o.Tokens, inQuery: o.TokenIn == TokenInQuery}
	res := &ConnectResult{URL: o.URL, N: o.N, Concurrency: o.Concurrency, Tokens: len(o.Tokens), ServerPID: pid, ServerPIDs: pids,
		Held: o.Held, HostCPUs: runtime.NumCPU()}
	if len(o.Tokens) > 0 {
		res.TokenIn = o.TokenIn
	}
	pl := progressLine{o.Progress, o.Terminal}
	if o.Held > 0 {
		if o.HeldPerProcess < 1 || o.HeldSource == nil || o.HeldSource.To4() == nil {
			return nil, errors.New("-held needs a positive -held-per-process and an IPv4 -held-source")
		}
		h, err := startHolders(ctx, o.URL, o.Held, o.HeldPerProcess, o.HeldSource, o.Timeout, pl)
		if err != nil {
			return nil, fmt.Errorf("opening the held connections: %w", err)
		}
		defer h.close()
		defer func() { res.HeldDropped = h.dropped() }()
		select { // let the server settle after the ramp
		case <-time.After(o.Pause):
		case <-ctx.Done():
		}
	}
	sourcesPerRound := (o.N + o.PerSource - 1) / o.PerSource
	for r := range o.Rounds {
		if r > 0 {
			select {
			case <-time.After(o.Pause):
			case <-ctx.Done():
			}
		}
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("round %d: %w", r+1, err)
		}
		round, err := connectRound(ctx, o, t, pids, r, r*sourcesPerRound, pl)
		if round != nil {
			res.Rounds = append(res.Rounds, *round)
		}
		if err != nil {
			return res, err
		}
	}
	return res, nil
}

// connectRound opens o.N connections, holds them until every handshake
// has ended, then closes them.
func connectRound(ctx context.Context, o ConnectOptions, t *connectTarget, pids []int, r, firstSource int, pl progressLine) (*ConnectRound, error) {
	conns := make([]*net.TCPConn, o.N)
	took := make([]time.Duration, o.N) // 0: failed
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	var statusMu sync.Mutex
	statuses := map[string]int{}
	firstStatus := 0
	measured := len(pids) > 0
	cpu0 := sumCPU(pids)
	self0, _ := ProcCPUSeconds(os.Getpid())
	start := time.Now()
	var lastEnd atomic.Int64 // nanoseconds after start
	pool := startOpenPool(ctx, o.N, o.Concurrency, func(k int) error {
		var src net.IP
		if o.Source != nil {
			src = addIP(o.Source, firstSource+k/o.PerSource)
		}
		t0 := time.Now()
		c, err := t.open(ctx, src, k)
		end := time.Now()
		for {
			v := lastEnd.Load()
			if int64(end.Sub(start)) <= v || lastEnd.CompareAndSwap(v, int64(end.Sub(start))) {
				break
			}
		}
		if err != nil {
			if re, ok := errors.AsType[*RefusedError](err); ok {
				statusMu.Lock()
				statuses[strconv.Itoa(re.Status)]++
				if firstStatus == 0 {
					firstStatus = re.Status
				}
				statusMu.Unlock()
			}
			return err
		}
		conns[k], took[k] = c, end.Sub(t0)
		return nil
	})
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	progress := func() {
		pl.progress(fmt.Sprintf("round %d/%d  %5.1fs  completed %d/%d  failed %d", r+1, o.Rounds,
			time.Since(start).Seconds(), pool.opened.Load(), o.N, pool.failed.Load()))
	}
wait:
	for {
		select {
		case <-pool.done:
			break wait
		case <-tick.C:
			progress()
		}
	}
	wall := time.Duration(lastEnd.Load())
	cpu1 := sumCPU(pids)
	self1, _ := ProcCPUSeconds(os.Getpid())
	progress()
	pl.endProgress()
	if o.held != nil {
		o.held(r+1, int(pool.opened.Load()))
	}
	if o.Linger > 0 {
		select {
		case <-time.After(o.Linger):
		case <-ctx.Done():
		}
	}

	rd := &ConnectRound{
		Round:             r + 1,
		Completed:         pool.opened.Load(),
		Failed:            pool.failed.Load(),
		FirstStatus:       firstStatus,
		WallSeconds:       wall.Seconds(),
		ClientCPUSeconds:  self1 - self0,
		ServerCPUMeasured: measured,
	}
	if len(statuses) > 0 {
		rd.Statuses = statuses
	}
	if err := pool.firstErr(); err != nil {
		rd.FirstError = err.Error()
	}
	if wall > 0 {
		rd.PerSecond = float64(rd.Completed) / wall.Seconds()
	}
	if measured {
		rd.ServerCPUSeconds = cpu1 - cpu0
		if rd.ServerCPUSeconds > 0 {
			rd.PerServerCPUSec = float64(rd.Completed) / rd.ServerCPUSeconds
		}
	}
	var ms []float64
	for _, d := range took {
		if d > 0 {
			ms = append(ms, float64(d)/1e6)
		}
	}
	slices.Sort(ms)
	if len(ms) > 0 {
		rd.LatencyP50Millis = percentile(ms, 50)
		rd.LatencyP99Millis = percentile(ms, 99)
		rd.LatencyMaxMillis = ms[len(ms)-1]
	}
	if err := ctx.Err(); err != nil {
		return rd, fmt.Errorf("round %d ended early (%w): %d of %d handshakes done", r+1, err, rd.Completed+rd.Failed, o.N)
	}
	return rd, nil
}

// Failed is the number of failed handshakes over every round.
func (r *ConnectResult) Failed() int64 {
	var n int64
	for _, rd := range r.Rounds {
		n += rd.Failed
	}
	return n
}

// Print writes the result: a line of set-up, a table of rounds, and the
// refusals and errors of rounds that had any.
func (r *ConnectResult) Print(w io.Writer) {
	toks := "none (anonymous)"
	if r.Tokens > 0 {
		toks = fmt.Sprintf("%d distinct lines, in the %s", r.Tokens, map[string]string{
			TokenInHeader: "Authorization header", TokenInQuery: "token query parameter"}[r.TokenIn])
	}
	pid := "not measured"
	if len(r.ServerPIDs) > 0 {
		pid = strings.Trim(fmt.Sprint(r.ServerPIDs), "[]")
	}
	held := ""
	if r.Held > 0 {
		held = fmt.Sprintf(", onto %d held connections (%d of them dropped by the server)", r.Held, r.HeldDropped)
	}
	fmt.Fprintf(w, "connect  %d connections a round to %s%s, %d handshakes in flight; tokens: %s; server pid %s; %d CPUs on this host (clients and server share them)\n",
		r.N, r.URL, held, r.Concurrency, toks, pid, r.HostCPUs)
	fmt.Fprintf(w, "%-5s %9s %6s %7s %12s %12s %17s %8s %8s %8s %12s\n",
		"round", "completed", "failed", "wall s", "handshakes/s", "server CPU s", "per server CPU-s", "p50 ms", "p99 ms", "max ms", "client CPU s")
	for _, rd := range r.Rounds {
		scpu, per := "-", "-"
		if rd.ServerCPUMeasured {
			scpu, per = fmt.Sprintf("%.2f", rd.ServerCPUSeconds), fmt.Sprintf("%.0f", rd.PerServerCPUSec)
		}
		fmt.Fprintf(w, "%-5d %9d %6d %7.2f %12.0f %12s %17s %8.2f %8.2f %8.2f %12.2f\n",
			rd.Round, rd.Completed, rd.Failed, rd.WallSeconds, rd.PerSecond, scpu, per,
			rd.LatencyP50Millis, rd.LatencyP99Millis, rd.LatencyMaxMillis, rd.ClientCPUSeconds)
	}
	for _, rd := range r.Rounds {
		if rd.Failed == 0 {
			continue
		}
		if rd.FirstStatus != 0 {
			fmt.Fprintf(w, "round %d: %d failed; first refusal HTTP %d; refusals by status %v; first error: %s\n",
				rd.Round, rd.Failed, rd.FirstStatus, rd.Statuses, rd.FirstError)
		} else {
			fmt.Fprintf(w, "round %d: %d failed; first error: %s\n", rd.Round, rd.Failed, rd.FirstError)
		}
	}
}

// TokenOptions describe the tokens GenerateTokens signs.
type TokenOptions struct {
	Key []byte        // PEM private key: RSA for RS*/PS*, ECDSA for ES*, Ed25519 for EdDSA
	Alg string        // RS256, …
	N   int           // tokens; token i has sub "user<i>"
	Exp time.Duration // exp = now + Exp (0: no exp)
	Now time.Time
}

// GenerateTokens writes N signed tokens, one a line, in order.
func GenerateTokens(w io.Writer, o TokenOptions) error {
	m := jwt.GetSigningMethod(o.Alg)
	if m == nil {
		return fmt.Errorf("unknown -alg %q", o.Alg)
	}
	var key crypto.PrivateKey
	var err error
	switch {
	case strings.HasPrefix(o.Alg, "RS") || strings.HasPrefix(o.Alg, "PS"):
		key, err = jwt.ParseRSAPrivateKeyFromPEM(o.Key)
	case strings.HasPrefix(o.Alg, "ES"):
		key, err = jwt.ParseECPrivateKeyFromPEM(o.Key)
	case o.Alg == "EdDSA":
		key, err = jwt.ParseEdPrivateKeyFromPEM(o.Key)
	default:
		return fmt.Errorf("-alg %q: want RS*, PS*, ES* or EdDSA", o.Alg)
	}
	if err != nil {
		return fmt.Errorf("the private key: %w", err)
	}
	if o.N < 1 {
		return errors.New("-n must be positive")
	}
	out := make([]string, o.N)
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), o.N) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= o.N {
					return
				}
				c := jwt.MapClaims{"sub": "user" + strconv.Itoa(i), "iat": o.Now.Unix()}
				if o.Exp > 0 {
					c["exp"] = o.Now.Add(o.Exp).Unix()
				}
				s, err := jwt.NewWithClaims(m, c).SignedString(key)
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				out[i] = s
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	bw := bufio.NewWriter(w)
	for _, s := range out {
		bw.WriteString(s)
		bw.WriteByte('\n')
	}
	return bw.Flush()
}
