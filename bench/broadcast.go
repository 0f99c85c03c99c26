package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// BroadcastOptions describe a fan-out run: Subs subscribers on one channel
// of a running server (wsd or Centrifugo), Count publications through its
// HTTP publish API at Rate, and what each delivery cost and took.
type BroadcastOptions struct {
	Target    string        // TargetWsd or TargetCentrifugo
	URL       string        // ws://host:port/path the subscribers connect to
	API       string        // the publish URL (HTTP POST)
	APIKey    string        // the publish API's key
	Subs      int           // subscribers
	Channel   string        // the channel they subscribe to
	Size      int           // bytes of each publication's JSON data
	Rate      float64       // publications per second; 0: one after another
	Count     int           // publications
	Settle    time.Duration // wait after the last subscription before publishing
	Drain     time.Duration // after the last publication, wait at most this long for deliveries
	Timeout   time.Duration // bound on the whole run
	ServerPID int           // the server's process (0: the one listening on URL's port)
	// Several nodes (a cluster): the subscribers are spread evenly over
	// URLs (URL is then ignored) and every publication goes to API, which
	// belongs to the node of URLs[0]; the deliveries on the other nodes
	// crossed nodes. ServerPIDs are the nodes' processes (nil: the ones
	// listening on the URLs' ports) and BrokerPIDs the processes of what
	// connects them (Redis): both count as server CPU.
	URLs        []string
	ServerPIDs  []int
	BrokerPIDs  []int
	PerProcess  int       // most subscribers one client process holds
	Loops       int       // event loops per client process
	Concurrency int       // subscriptions in flight per client process
	Source      net.IP    // first source address; every further 10,000 subscribers use the next
	Progress    io.Writer // progress lines (nil: none)
	Terminal    bool      // Progress is a terminal: rewrite one line in place

	inProcess bool // run the client processes' work in this process (tests)
}

// DefaultBroadcastURLs returns the subscriber URL and the publish URL of a
// target on its default loopback ports.
func DefaultBroadcastURLs(target string) (ws, api string) {
	switch target {
	case TargetCentrifugo:
		return "ws://127.0.0.1:8000/connection/websocket", "http://127.0.0.1:8000/api/publish"
	default:
		return "ws://127.0.0.1:8080/ws", "http://127.0.0.1:9090/api/publish"
	}
}

// BroadcastResult is what a fan-out run measured. Latencies are in
// milliseconds; "phase" is from the first publication to the last delivery.
type BroadcastResult struct {
	Target          string   `json:"target"`
	URL             string   `json:"url"`
	API             string   `json:"api"`
	ServerPID       int      `json:"server_pid"`
	Nodes           int      `json:"nodes"`                 // 1: one server
	URLs            []string `json:"urls,omitempty"`        // the nodes' WebSocket URLs (several nodes)
	ServerPIDs      []int    `json:"server_pids,omitempty"` // the nodes' processes (several nodes)
	BrokerPIDs      []int    `json:"broker_pids,omitempty"` // Redis (several nodes)
	Channel         string   `json:"channel"`
	Subscribers     int64    `json:"subscribers"`
	SubscribeFailed int64    `json:"subscribe_failed"`
	Processes       int      `json:"client_processes"`
	Loops           int      `json:"event_loops_per_process"`
	RampSeconds     float64  `json:"ramp_seconds"`
	Size            int      `json:"data_bytes"`
	Rate            float64  `json:"rate_asked"`
	Count           int      `json:"count_asked"`

	Published         int     `json:"published"`
	PublishFailed     int     `json:"publish_failed"`
	FirstPublishError string  `json:"first_publish_error,omitempty"`
	PublishSeconds    float64 `json:"publish_seconds"` // first to last publication sent
	PublishHTTPP50    float64 `json:"publish_http_p50_ms"`
	PublishHTTPMax    float64 `json:"publish_http_max_ms"`

	Expected       int64   `json:"deliveries_expected"`
	Received       int64   `json:"deliveries_received"`
	Missing        int64   `json:"missing"`
	Duplicates     int64   `json:"duplicates"`
	OutOfOrder     int64   `json:"out_of_order"`
	Unexpected     int64   `json:"unexpected"` // deliveries of publications whose publish failed
	Foreign        int64   `json:"foreign"`
	Dropped        int64   `json:"subscribers_dropped"`
	CompleteSubs   int64   `json:"complete_subscribers"`
	Complete       bool    `json:"every_subscriber_got_every_publication_once_in_order"`
	DrainTimedOut  bool    `json:"drain_timed_out"`
	StoppedBy      string  `json:"stopped_by"`
	PhaseSeconds   float64 `json:"phase_seconds"`
	DeliveriesPerS float64 `json:"deliveries_per_second"`

	ServerCPUSeconds     float64  `json:"server_cpu_seconds"`               // the nodes' and the broker's
	BrokerCPUSeconds     float64  `json:"broker_cpu_seconds"`               // of which the broker's (Redis)
	CrossNode            int64    `json:"deliveries_cross_node"`            // to subscribers on another node than the publishing one
	CrossNodePerS        float64  `json:"deliveries_cross_node_per_second"` // over the phase
	ServerIdleCPUPercent float64  `json:"server_idle_cpu_percent_before"`
	DeliveriesPerCPUSec  float64  `json:"deliveries_per_server_cpu_second"`
	ServerRSSStart       float64  `json:"server_rss_phase_start_bytes"`
	ServerRSSEnd         float64  `json:"server_rss_phase_end_bytes"`
	ServerRSSBaseline    float64  `json:"server_rss_before_subscribers_bytes"`
	ClientCPUSeconds     *float64 `json:"client_cpu_seconds"`    // the client processes and this one over the phase (nil: in-process)
	HostBusyPercent      float64  `json:"host_busy_percent"`     // of all CPUs, over the phase
	SoftirqdCPUSeconds   float64  `json:"ksoftirqd_cpu_seconds"` // the kernel's softirq threads over the phase (network work deferred from the processes)
	OtherCPUSeconds      *float64 `json:"other_cpu_seconds"`     // the host's busy time over the phase less the server's, the clients' and ksoftirqd's
	HostCPUs             int      `json:"host_cpus"`
	MeasureSeconds       float64  `json:"cpu_window_seconds"`

	Latency              Latencies `json:"latency_ms"`
	PerPublicationLastMs []float64 `json:"per_publication_last_delivery_ms"` // by seq; -1: none arrived
	TotalSeconds         float64   `json:"total_seconds"`
}

// Latencies are publish→delivery figures in milliseconds.
type Latencies struct {
	LastP50  float64 `json:"publish_to_last_delivery_p50"`
	LastP99  float64 `json:"publish_to_last_delivery_p99"`
	LastMax  float64 `json:"publish_to_last_delivery_max"`
	FirstP50 float64 `json:"publish_to_first_delivery_p50"`
	FirstP99 float64 `json:"publish_to_first_delivery_p99"`
	DelivP50 float64 `json:"publish_to_delivery_p50"` // over every delivery (histogram, within 2%)
	DelivP99 float64 `json:"publish_to_delivery_p99"`
	DelivMax float64 `json:"publish_to_delivery_max"`
}

// publicationData is a publication's JSON data, size bytes:
// {"seq":N,"t":UNIXNANOS,"pad":"xxx…"}.
func publicationData(seq int, t int64, size int) []byte {
	b := make([]byte, 0, size+16)
	b = append(b, seqMarker...)
	b = strconv.AppendInt(b, int64(seq), 10)
	b = append(b, tMarker...)
	b = strconv.AppendInt(b, t, 10)
	b = append(b, `,"pad":"`...)
	for len(b) < size-2 {
		b = append(b, 'x')
	}
	return append(b, `"}`...)
}

// publisher posts publications to a server's HTTP publish API.
type publisher struct {
	client  *http.Client
	target  string
	api     string
	key     string
	channel []byte // JSON string
	size    int
}

func newPublisher(o BroadcastOptions) *publisher {
	ch, _ := json.Marshal(o.Channel)
	return &publisher{
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			MaxIdleConnsPerHost: 64, DisableCompression: true, Proxy: nil,
		}},
		target: o.Target, api: o.API, key: o.APIKey, channel: ch, size: o.Size,
	}
}

// publish posts publication seq; it returns when it was sent (Unix ns,
// the time its data carries) and how long the request took.
func (p *publisher) publish(ctx context.Context, seq int) (sent int64, took time.Duration, err error) {
	now := time.Now()
	sent = now.UnixNano()
	_, err = p.post(ctx, p.channel, publicationData(seq, sent, p.size))
	return sent, time.Since(now), err
}

// PublishError is a publish the server answered with another status
// than 200.
type PublishError struct {
	Status int    // HTTP status
	Line   string // "503 Service Unavailable: " and the start of the answer
}

func (e *PublishError) Error() string { return "publish: " + e.Line }

// post publishes data (JSON) to channel (a JSON string) through the
// server's HTTP API and returns its answer; a status other than 200 is a
// *PublishError.
func (p *publisher) post(ctx context.Context, channel, data []byte) ([]byte, error) {
	body := append([]byte(`{"channel":`), channel...)
	body = append(body, `,"data":`...)
	body = append(body, data...)
	body = append(body, '}')
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.api, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	switch p.target {
	case TargetCentrifugo:
		req.Header.Set("X-API-Key", p.key)
	default:
		req.Header.Set("Authorization", "apikey "+p.key)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	reply, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return reply, &PublishError{Status: resp.StatusCode, Line: resp.Status + ": " + truncate(bytes.TrimSpace(reply), 200)}
	}
	// Centrifugo answers API errors with 200 and {"error":…}.
	if p.target == TargetCentrifugo && bytes.Contains(reply, []byte(`"error"`)) {
		return reply, fmt.Errorf("publish: %s", truncate(bytes.TrimSpace(reply), 200))
	}
	return reply, nil
}

// bcastClient is the coordinator's handle on one client process.
type bcastClient struct {
	i      int
	n      int
	node   int // index in URLs
	pid    int // 0: in this process
	stdin  io.WriteCloser
	mu     sync.Mutex
	last   bcastReport
	final  chan fanoutFinal
	exited chan struct{}
	err    error // why it exited, if it failed; set before exited closes
}

func (c *bcastClient) report() bcastReport {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

func (c *bcastClient) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 256<<20)
	for sc.Scan() {
		var rep bcastReport
		if json.Unmarshal(sc.Bytes(), &rep) != nil {
			continue
		}
		if rep.Final != nil {
			select {
			case c.final <- *rep.Final:
			default:
			}
			rep.Final = nil
		}
		c.mu.Lock()
		c.last = rep
		c.mu.Unlock()
	}
}

// bcastRun is one run's state.
type bcastRun struct {
	progressLine
	o       BroadcastOptions
	r       *BroadcastResult
	began   time.Time
	clients []*bcastClient
}

func (b *bcastRun) progressPeriod() time.Duration {
	if b.o.Terminal {
		return 250 * time.Millisecond
	}
	return time.Second
}

// totals sums the client processes' latest reports.
func (b *bcastRun) totals() (t bcastReport, ready int, err error) {
	for _, c := range b.clients {
		r := c.report()
		t.Subscribed += r.Subscribed
		t.Failed += r.Failed
		t.Received += r.Received
		t.Dropped += r.Dropped
		if r.Ready {
			ready++
		}
		select {
		case <-c.exited:
			if err == nil {
				err = fmt.Errorf("client process %d exited: %v", c.i, c.err)
			}
		default:
		}
		if r.Err != "" && err == nil {
			err = fmt.Errorf("client process %d: %s", c.i, r.Err)
		}
	}
	return t, ready, err
}

// RunBroadcast runs the fan-out measurement against a running server.
func RunBroadcast(parent context.Context, o BroadcastOptions) (*BroadcastResult, error) {
	if len(o.URLs) > 0 {
		o.URL = o.URLs[0]
	}
	if o.URL == "" || o.API == "" {
		ws, api := DefaultBroadcastURLs(o.Target)
		o.URL = cmpOr(o.URL, ws)
		o.API = cmpOr(o.API, api)
	}
	if len(o.URLs) == 0 {
		o.URLs = []string{o.URL}
	}
	var us []*url.URL
	for _, s := range o.URLs {
		u, err := url.Parse(s)
		if err != nil || u.Scheme != "ws" || u.Host == "" {
			return nil, fmt.Errorf("bad -url %q: want ws://host:port/path", s)
		}
		us = append(us, u)
	}
	if _, err := subscribeMessages(o.Target, o.Channel); err != nil {
		return nil, err
	}
	switch {
	case o.Subs < 1 || o.Count < 1:
		return nil, errors.New("-subs and -count must be positive")
	case o.Count > 1_000_000 || int64(o.Count)*int64(o.Subs) > 4e9:
		return nil, errors.New("-count is at most 1,000,000 and -subs × -count at most 4e9 (every subscriber keeps a bit per publication)")
	case o.Size < 64 || o.Size > 60000:
		return nil, errors.New("-size must be 64 to 60000 bytes")
	case o.Rate < 0:
		return nil, errors.New("-rate must not be negative")
	case o.Channel == "":
		return nil, errors.New("-channel must not be empty")
	case o.Timeout <= 0 || o.Drain <= 0 || o.Settle < 0:
		return nil, errors.New("-timeout and -drain must be positive, -settle not negative")
	case o.Subs < len(o.URLs):
		return nil, errors.New("-subs must be at least the number of nodes")
	case o.PerProcess < 1 || o.PerProcess > 18000 || o.Loops < 1 || o.Concurrency < 1:
		return nil, errors.New("-per-process must be 1 to 18000 (one file descriptor each), -loops and -concurrency positive")
	case o.Source == nil || o.Source.To4() == nil:
		return nil, errors.New("-source must be an IPv4 address")
	}
	if o.APIKey == "" {
		return nil, errors.New("-api-key is required (the key the server was started with)")
	}
	servers := o.ServerPIDs
	if len(servers) == 0 {
		for _, u := range us {
			pid, err := serverPID(o.ServerPID, u)
			if err != nil {
				return nil, err
			}
			if !slices.Contains(servers, pid) {
				servers = append(servers, pid)
			}
		}
	}
	for _, p := range append(slices.Clone(servers), o.BrokerPIDs...) {
		if _, err := ProcCPUSeconds(p); err != nil {
			return nil, fmt.Errorf("reading the CPU time of process %d: %w", p, err)
		}
	}
	pid := servers[0]
	// The server's CPU is every node's and the broker's; its RSS every node's.
	cpuOf := func() (float64, error) {
		var s float64
		for _, p := range append(slices.Clone(servers), o.BrokerPIDs...) {
			v, err := ProcCPUSeconds(p)
			if err != nil {
				return 0, err
			}
			s += v
		}
		return s, nil
	}
	rss := func() float64 {
		var s float64
		for _, p := range servers {
			s += procRSS(p)
		}
		return s
	}

	ctx, cancel := context.WithTimeout(parent, o.Timeout)
	defer cancel()
	b := &bcastRun{progressLine: progressLine{o.Progress, o.Terminal}, o: o, began: time.Now(), r: &BroadcastResult{
		Target: o.Target, URL: o.URL, API: o.API, ServerPID: pid, Channel: o.Channel,
		Size: o.Size, Rate: o.Rate, Count: o.Count, Loops: o.Loops, HostCPUs: hostCPUs(),
		Nodes: len(o.URLs),
	}}
	if len(o.URLs) > 1 || len(servers) > 1 || len(o.BrokerPIDs) > 0 {
		b.r.URLs, b.r.ServerPIDs, b.r.BrokerPIDs = o.URLs, servers, o.BrokerPIDs
	}
	b.r.ServerRSSBaseline = rss()

	// Start the client processes and wait for every subscription.
	defer b.stopClients()
	if err := b.startClients(ctx); err != nil {
		return nil, err
	}
	if err := b.waitSubscribed(ctx); err != nil {
		return nil, err
	}
	b.r.RampSeconds = time.Since(b.began).Seconds()

	// Settle, measuring the server's CPU while nothing is published.
	cpuA, _ := cpuOf()
	settleStart := time.Now()
	if err := b.wait(ctx, o.Settle, "settle"); err != nil {
		return nil, err
	}
	cpuB, _ := cpuOf()
	if d := time.Since(settleStart).Seconds(); d > 0 {
		b.r.ServerIdleCPUPercent = 100 * (cpuB - cpuA) / d
	}

	// Publish, then wait for the deliveries.
	b.r.ServerRSSStart = rss()
	hostA := readHostCPU()
	softirqd := softirqThreads()
	softA := sumCPU(softirqd)
	clientA := b.clientCPU()
	brokerA := sumCPU(o.BrokerPIDs)
	cpu0, err := cpuOf()
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	sent := b.publishPhase(ctx, parent)
	cpu1, err := cpuOf()
	if err != nil {
		return nil, fmt.Errorf("the server's CPU after the phase: %w", err)
	}
	b.r.BrokerCPUSeconds = sumCPU(o.BrokerPIDs) - brokerA
	b.r.MeasureSeconds = time.Since(t0).Seconds()
	hostB := readHostCPU()
	softB := sumCPU(softirqd)
	clientB := b.clientCPU()
	b.r.ServerRSSEnd = rss()
	b.r.ServerCPUSeconds = cpu1 - cpu0
	b.r.SoftirqdCPUSeconds = softB - softA
	if clientA != nil && clientB != nil {
		v := *clientB - *clientA
		b.r.ClientCPUSeconds = &v
		other := max(0, (hostB.busy-hostA.busy)/100-v-b.r.ServerCPUSeconds-b.r.SoftirqdCPUSeconds) // ticks of 1/100 s: a small negative is rounding
		b.r.OtherCPUSeconds = &other
	}
	if d := hostB.total - hostA.total; d > 0 {
		b.r.HostBusyPercent = 100 * (hostB.busy - hostA.busy) / d
	}
	b.endProgress()

	// Collect the tallies.
	var unpublished []int
	for seq, t := range sent {
		if t == 0 {
			unpublished = append(unpublished, seq)
		}
	}
	fin, err := b.collect(unpublished)
	if err != nil {
		return nil, err
	}
	b.finish(sent, fin)
	b.r.TotalSeconds = time.Since(b.began).Seconds()
	return b.r, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// startClients starts the client processes (this binary's
// "broadcast-worker" command), process i holding up to PerProcess
// subscribers from its own source addresses.
func (b *bcastRun) startClients(ctx context.Context) error {
	o := b.o
	// Each node gets an even share of the subscribers, in processes of
	// at most PerProcess; process i uses its own source addresses.
	type share struct{ node, n int }
	var shares []share
	for node := range o.URLs {
		left := o.Subs / len(o.URLs)
		if node < o.Subs%len(o.URLs) {
			left++
		}
		for left > 0 {
			n := min(o.PerProcess, left)
			shares = append(shares, share{node, n})
			left -= n
		}
	}
	b.r.Processes = len(shares)
	sourcesPer := (o.PerProcess + connsPerSource - 1) / connsPerSource
	self, err := os.Executable()
	if err != nil && !o.inProcess {
		return err
	}
	for i, sh := range shares {
		n := sh.n
		w := BroadcastWorker{Target: o.Target, URL: o.URLs[sh.node], Channel: o.Channel, N: n, Count: o.Count,
			Source: addIP(o.Source, i*sourcesPer), Concurrency: o.Concurrency, Loops: o.Loops}
		c := &bcastClient{i: i, n: n, node: sh.node, final: make(chan fanoutFinal, 1), exited: make(chan struct{})}
		b.clients = append(b.clients, c)
		if o.inProcess {
			inR, inW := io.Pipe()
			outR, outW := io.Pipe()
			c.stdin = inW
			go c.read(outR)
			go func() {
				c.err = RunBroadcastWorker(ctx, w, outW, inR)
				outW.Close()
				inR.Close()
				close(c.exited)
			}()
			continue
		}
		cmd := exec.CommandContext(ctx, self, "broadcast-worker",
			"-target", w.Target, "-url", w.URL, "-channel", w.Channel, "-n", strconv.Itoa(n),
			"-count", strconv.Itoa(w.Count), "-source", w.Source.String(),
			"-concurrency", strconv.Itoa(w.Concurrency), "-loops", strconv.Itoa(w.Loops))
		cmd.Stderr = os.Stderr
		cmd.WaitDelay = 5 * time.Second
		out, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if c.stdin, err = cmd.StdinPipe(); err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start client process %d: %w", i, err)
		}
		c.pid = cmd.Process.Pid
		readDone := make(chan struct{})
		go func() { c.read(out); close(readDone) }()
		go func() {
			<-readDone
			c.err = cmd.Wait()
			if c.err == nil {
				c.err = errors.New("exit status 0")
			}
			close(c.exited)
		}()
	}
	return nil
}

// stopClients closes the client processes' stdin (they exit) and waits for
// them, at most 15 s each (then the run's context kills them).
func (b *bcastRun) stopClients() {
	for _, c := range b.clients {
		c.stdin.Close()
	}
	for _, c := range b.clients {
		select {
		case <-c.exited:
		case <-time.After(15 * time.Second):
		}
	}
}

func (b *bcastRun) waitSubscribed(ctx context.Context) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	last := time.Time{}
	line := func(t bcastReport) string {
		return fmt.Sprintf("subscribe %6.1fs  subscribed %d/%d  failed %d  dropped %d",
			time.Since(b.began).Seconds(), t.Subscribed, b.o.Subs, t.Failed, t.Dropped)
	}
	for {
		t, ready, err := b.totals()
		if err != nil {
			b.endProgress()
			return err
		}
		if ready == len(b.clients) {
			b.progress(line(t))
			b.endProgress()
			b.r.Subscribers, b.r.SubscribeFailed = t.Subscribed, t.Failed
			return nil
		}
		if time.Since(last) >= b.progressPeriod() {
			last = time.Now()
			b.progress(line(t))
		}
		select {
		case <-ctx.Done():
			b.endProgress()
			return fmt.Errorf("subscribing: %w (%d of %d subscribed)", ctx.Err(), t.Subscribed, b.o.Subs)
		case <-tick.C:
		}
	}
}

// wait waits d, failing if a client process fails meanwhile.
func (b *bcastRun) wait(ctx context.Context, d time.Duration, phase string) error {
	end := time.After(d)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-end:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", phase, ctx.Err())
		case <-tick.C:
			if _, _, err := b.totals(); err != nil {
				return err
			}
		}
	}
}

// publishPhase publishes Count publications at Rate, then waits (at most
// Drain after the last) until every subscriber has them. It returns each
// publication's send time (Unix ns; 0: its publish failed or never went).
func (b *bcastRun) publishPhase(ctx, parent context.Context) []int64 {
	o := b.o
	pub := newPublisher(o)
	sent := make([]int64, o.Count)
	took := make([]time.Duration, o.Count)
	var published, failed, attempted atomic.Int64
	var firstErr atomic.Value
	phaseStart := time.Now()
	tick := time.NewTicker(b.progressPeriod())
	defer tick.Stop()
	line := func() {
		t, _, _ := b.totals()
		b.progress(fmt.Sprintf("publish %6.1fs  sent %d/%d  published %d  failed %d  delivered %d/%d  dropped %d",
			time.Since(phaseStart).Seconds(), attempted.Load(), o.Count, published.Load(), failed.Load(),
			t.Received, attempted.Load()*b.r.Subscribers, t.Dropped))
	}
	// One publication at a time: the order they are published in is then
	// the order every subscriber must see. A server slower to answer than
	// the period gets the next one as soon as it answers.
	var period time.Duration
	if o.Rate > 0 {
		period = time.Duration(float64(time.Second) / o.Rate)
	}
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		timer := time.NewTimer(0)
		<-timer.C
		for seq := range o.Count {
			if d := time.Until(phaseStart.Add(time.Duration(seq) * period)); d > 0 {
				timer.Reset(d)
				select {
				case <-timer.C:
				case <-ctx.Done():
					return
				}
			}
			if ctx.Err() != nil {
				return
			}
			attempted.Add(1)
			t, d, err := pub.publish(ctx, seq)
			took[seq] = d
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				continue
			}
			sent[seq] = t
			published.Add(1)
		}
	}()
	stopped := ""
	for waiting := true; waiting; {
		select {
		case <-pubDone:
			waiting = false
		case <-tick.C:
			line()
		case <-ctx.Done():
			stopped = "timeout"
			<-pubDone // the request in flight ends with ctx
			waiting = false
		}
	}
	var lastT int64
	for _, t := range sent {
		lastT = max(lastT, t)
	}
	if lastT > 0 {
		b.r.PublishSeconds = float64(lastT-phaseStart.UnixNano()) / 1e9
	}
	b.r.Published, b.r.PublishFailed = int(published.Load()), int(failed.Load())
	if e, ok := firstErr.Load().(string); ok {
		b.r.FirstPublishError = e
	}
	var tooks []float64
	for i, d := range took {
		if sent[i] != 0 {
			tooks = append(tooks, d.Seconds()*1000)
		}
	}
	slices.Sort(tooks)
	if len(tooks) > 0 {
		b.r.PublishHTTPP50, b.r.PublishHTTPMax = percentile(tooks, 50), tooks[len(tooks)-1]
	}

	// Wait for the deliveries.
	want := published.Load() * b.r.Subscribers
	drain := time.NewTimer(o.Drain)
	defer drain.Stop()
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	for stopped == "" {
		t, _, _ := b.totals()
		if t.Received >= want {
			stopped = "count"
			break
		}
		select {
		case <-drain.C:
			stopped = "drain"
			b.r.DrainTimedOut = true
		case <-ctx.Done():
			stopped = "timeout"
		case <-poll.C:
		case <-tick.C:
			line()
		}
	}
	if stopped == "timeout" && parent.Err() != nil {
		stopped = "interrupted"
	}
	line()
	b.r.StoppedBy = stopped
	return sent
}

// collect asks every client process for its final tally and merges them.
func (b *bcastRun) collect(unpublished []int) (fanoutFinal, error) {
	cmd, _ := json.Marshal(bcastCommand{Report: true, Unpublished: unpublished})
	cmd = append(cmd, '\n')
	for _, c := range b.clients {
		if _, err := c.stdin.Write(cmd); err != nil {
			return fanoutFinal{}, fmt.Errorf("client process %d: %w", c.i, err)
		}
	}
	var all fanoutFinal
	deadline := time.After(30 * time.Second)
	for _, c := range b.clients {
		select {
		case f := <-c.final:
			if c.node != 0 {
				b.r.CrossNode += f.Received
			}
			all.merge(f)
		case <-c.exited:
			return all, fmt.Errorf("client process %d exited before its tally: %v", c.i, c.err)
		case <-deadline:
			return all, fmt.Errorf("client process %d: no tally after 30 s", c.i)
		}
	}
	return all, nil
}

// clientCPU is the CPU time so far of the client processes and of this
// one (the publisher), nil when the clients run in this process.
func (b *bcastRun) clientCPU() *float64 {
	s, err := ProcCPUSeconds(os.Getpid())
	if err != nil {
		return nil
	}
	for _, c := range b.clients {
		if c.pid == 0 {
			return nil
		}
		v, err := ProcCPUSeconds(c.pid)
		if err != nil {
			return nil
		}
		s += v
	}
	return &s
}

// finish computes the result's figures from the send times and the tally.
func (b *bcastRun) finish(sent []int64, fin fanoutFinal) {
	r := b.r
	for _, c := range b.clients {
		r.Dropped += c.report().Dropped
	}
	r.Received, r.Duplicates, r.OutOfOrder = fin.Received, fin.Duplicates, fin.OutOfOrder
	r.Missing, r.Unexpected, r.Foreign, r.CompleteSubs = fin.Missing, fin.Unexpected, fin.Foreign, fin.Complete
	r.Expected = int64(r.Published) * r.Subscribers
	r.Complete = r.Published == r.Count && r.PublishFailed == 0 && r.SubscribeFailed == 0 &&
		r.CompleteSubs == r.Subscribers && r.Subscribers == int64(b.o.Subs) && r.Foreign == 0
	lat := latencies(sent, fin)
	r.Latency = lat.Latencies
	r.PerPublicationLastMs = lat.perPub
	if lat.firstSent > 0 && lat.lastArrival > lat.firstSent {
		r.PhaseSeconds = float64(lat.lastArrival-lat.firstSent) / 1e9
		r.DeliveriesPerS = float64(r.Received) / r.PhaseSeconds
		r.CrossNodePerS = float64(r.CrossNode) / r.PhaseSeconds
	}
	if r.ServerCPUSeconds > 0 {
		r.DeliveriesPerCPUSec = float64(r.Received) / r.ServerCPUSeconds
	}
}

type latencyFigures struct {
	Latencies
	perPub      []float64
	firstSent   int64
	lastArrival int64
}

// latencies computes publish→delivery figures: per publication, its last
// (and first) arrival over every subscriber minus its send time; over all
// deliveries, from the histogram.
func latencies(sent []int64, fin fanoutFinal) latencyFigures {
	var f latencyFigures
	var last, first []float64
	f.perPub = make([]float64, len(sent))
	for seq, t := range sent {
		f.perPub[seq] = -1
		if t == 0 {
			continue
		}
		if f.firstSent == 0 || t < f.firstSent {
			f.firstSent = t
		}
		if seq >= len(fin.SeqCount) || fin.SeqCount[seq] == 0 {
			continue
		}
		l := float64(fin.SeqLast[seq]-t) / 1e6
		last = append(last, l)
		first = append(first, float64(fin.SeqFirst[seq]-t)/1e6)
		f.perPub[seq] = l
		f.lastArrival = max(f.lastArrival, fin.SeqLast[seq])
	}
	slices.Sort(last)
	slices.Sort(first)
	if len(last) > 0 {
		f.LastP50, f.LastP99, f.LastMax = percentile(last, 50), percentile(last, 99), last[len(last)-1]
		f.FirstP50, f.FirstP99 = percentile(first, 50), percentile(first, 99)
	}
	if v, ok := histPercentile(fin.Hist, 50); ok {
		f.DelivP50 = v / 1000
		v, _ = histPercentile(fin.Hist, 99)
		f.DelivP99 = v / 1000
		v, _ = histPercentile(fin.Hist, 100)
		f.DelivMax = v / 1000
	}
	return f
}

// Print writes the result as a table.
func (r *BroadcastResult) Print(w io.Writer) {
	yes := func(b bool) string {
		if b {
			return "yes"
		}
		return "NO"
	}
	asked := "one after another"
	if r.Rate > 0 {
		asked = fmt.Sprintf("%g/s asked", r.Rate)
	}
	pubRate := 0.0
	if r.PublishSeconds > 0 && r.Published > 1 {
		pubRate = float64(r.Published-1) / r.PublishSeconds
	}
	if r.Nodes > 1 || len(r.BrokerPIDs) > 0 {
		fmt.Fprintf(w, "target                          %s, %d nodes at %s (pids %v), broker pids %v; publish API %s (the first node's)\n",
			r.Target, r.Nodes, strings.Join(r.URLs, " "), r.ServerPIDs, r.BrokerPIDs, r.API)
	} else {
		fmt.Fprintf(w, "target                          %s at %s (server pid %d); publish API %s\n", r.Target, r.URL, r.ServerPID, r.API)
	}
	fmt.Fprintf(w, "subscribers                     %d on %q (%d failed) from %d client process(es) × %d event loops; subscribed in %.1f s\n",
		r.Subscribers, r.Channel, r.SubscribeFailed, r.Processes, r.Loops, r.RampSeconds)
	fmt.Fprintf(w, "publications                    %d of %d published (%d failed), %d B of data each, %s: %.1f/s over %.2f s; HTTP publish p50 %.2f ms, max %.2f ms\n",
		r.Published, r.Count, r.PublishFailed, r.Size, asked, pubRate, r.PublishSeconds, r.PublishHTTPP50, r.PublishHTTPMax)
	if r.FirstPublishError != "" {
		fmt.Fprintf(w, "  first publish error:          %s\n", r.FirstPublishError)
	}
	fmt.Fprintf(w, "deliveries                      %d received of %d expected: %d missing, %d duplicate, %d out of order, %d unexpected, %d foreign\n",
		r.Received, r.Expected, r.Missing, r.Duplicates, r.OutOfOrder, r.Unexpected, r.Foreign)
	fmt.Fprintf(w, "all delivered once, in order    %s (%d of %d subscribers complete, %d dropped by the server); phase ended by %s\n",
		yes(r.Complete), r.CompleteSubs, r.Subscribers, r.Dropped, r.StoppedBy)
	fmt.Fprintf(w, "delivery rate                   %.0f deliveries/s over %.2f s (first publication to last delivery)\n", r.DeliveriesPerS, r.PhaseSeconds)
	if r.Nodes > 1 {
		fmt.Fprintf(w, "cross-node deliveries           %d (%.0f/s): to subscribers of the nodes other than the publishing one\n", r.CrossNode, r.CrossNodePerS)
	}
	fmt.Fprintf(w, "server CPU                      %.2f s over %.2f s (%.0f%% of one core; utime+stime); idle before: %.1f%% of one core\n",
		r.ServerCPUSeconds, r.MeasureSeconds, 100*r.ServerCPUSeconds/max(r.MeasureSeconds, 1e-9), r.ServerIdleCPUPercent)
	if len(r.BrokerPIDs) > 0 {
		fmt.Fprintf(w, "  of which the broker           %.2f s (counted in the server CPU)\n", r.BrokerCPUSeconds)
	}
	fmt.Fprintf(w, "deliveries per server CPU-s     %.0f\n", r.DeliveriesPerCPUSec)
	client, other := "n/a (in process)", ""
	if r.ClientCPUSeconds != nil {
		client = fmt.Sprintf("%.2f s (%.0f%% of one core; client processes and publisher)", *r.ClientCPUSeconds, 100**r.ClientCPUSeconds/max(r.MeasureSeconds, 1e-9))
	}
	if r.OtherCPUSeconds != nil {
		other = fmt.Sprintf("; other processes %.2f s", *r.OtherCPUSeconds)
	}
	fmt.Fprintf(w, "client CPU                      %s\n", client)
	fmt.Fprintf(w, "host CPU                        %.0f%% busy over its %d CPUs; ksoftirqd %.2f s%s\n", r.HostBusyPercent, r.HostCPUs, r.SoftirqdCPUSeconds, other)
	fmt.Fprintf(w, "server RSS                      %.1f MiB before the subscribers, %.1f at phase start, %.1f at phase end\n",
		r.ServerRSSBaseline/(1<<20), r.ServerRSSStart/(1<<20), r.ServerRSSEnd/(1<<20))
	l := r.Latency
	fmt.Fprintf(w, "publish -> last delivery        p50 %.2f ms   p99 %.2f ms   max %.2f ms   (per publication: its last arrival over all subscribers)\n", l.LastP50, l.LastP99, l.LastMax)
	fmt.Fprintf(w, "publish -> first delivery       p50 %.2f ms   p99 %.2f ms\n", l.FirstP50, l.FirstP99)
	fmt.Fprintf(w, "publish -> delivery             p50 %.2f ms   p99 %.2f ms   max %.2f ms   (every delivery; histogram, ±2%%)\n", l.DelivP50, l.DelivP99, l.DelivMax)
	if r.OtherCPUSeconds != nil && *r.OtherCPUSeconds > 0.1*r.MeasureSeconds {
		fmt.Fprintf(w, "note                            other processes used %.0f%% of one core during the phase: the figures are disturbed\n", 100**r.OtherCPUSeconds/max(r.MeasureSeconds, 1e-9))
	}
	if r.HostBusyPercent > 90 {
		fmt.Fprintf(w, "note                            the host's CPUs were %.0f%% busy: the clients compete with the server for them, and the latencies include waiting for a CPU\n", r.HostBusyPercent)
	}
	fmt.Fprintf(w, "run                             %.1f s in all\n", r.TotalSeconds)
}

// ProcCPUSeconds returns a process's CPU time so far, utime+stime from
// /proc/PID/stat (in clock ticks of 1/100 s, Linux's USER_HZ).
func ProcCPUSeconds(pid int) (float64, error) {
	if v, ok := schedstatCPU(pid); ok {
		return v, nil
	}
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	return parseProcStatCPU(b)
}

// schedstatCPU sums the time on CPU of every thread of pid, in
// nanoseconds, from /proc/PID/task/*/schedstat: /proc/PID/stat counts in
// clock ticks (10 ms), which over a 0.3 s storm is a 3% step. It misses
// the time of threads that have exited (a Go program keeps its threads);
// false when the kernel does not keep schedstats.
func schedstatCPU(pid int) (float64, bool) {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "task")
	tasks, err := os.ReadDir(dir)
	if err != nil || len(tasks) == 0 {
		return 0, false
	}
	var ns uint64
	for _, t := range tasks {
		b, err := os.ReadFile(filepath.Join(dir, t.Name(), "schedstat"))
		if err != nil {
			continue // the thread has just exited
		}
		f := strings.Fields(string(b))
		if len(f) < 1 {
			return 0, false
		}
		v, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, false
		}
		ns += v
	}
	return float64(ns) / 1e9, true
}

func parseProcStatCPU(b []byte) (float64, error) {
	// The command name (field 2) is in parentheses and may hold anything;
	// utime and stime are fields 14 and 15, the 12th and 13th after it.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc/PID/stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("malformed /proc/PID/stat")
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("malformed /proc/PID/stat")
	}
	return float64(ut+st) / 100, nil
}

// procRSS returns a process's resident memory in bytes (0 if unreadable).
func procRSS(pid int) float64 {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				v, _ := strconv.ParseFloat(f[0], 64)
				return v * 1024
			}
		}
	}
	return 0
}

type hostCPU struct{ busy, total float64 }

// readHostCPU reads the host's CPU time from /proc/stat: all of it, and
// the part not idle or waiting for I/O.
func readHostCPU() hostCPU {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return hostCPU{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return hostCPU{}
	}
	var h hostCPU
	for i, s := range f[1:] {
		if i >= 8 { // guest time is already in user
			break
		}
		v, _ := strconv.ParseFloat(s, 64)
		h.total += v
		if i != 3 && i != 4 { // idle, iowait
			h.busy += v
		}
	}
	return h
}

// softirqThreads returns the PIDs of the kernel's ksoftirqd threads.
func softirqThreads() []int {
	var pids []int
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", p.Name(), "comm"))
		if err == nil && strings.HasPrefix(string(comm), "ksoftirqd/") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// sumCPU is the CPU time so far of the processes (those gone count 0).
func sumCPU(pids []int) float64 {
	var s float64
	for _, pid := range pids {
		v, _ := ProcCPUSeconds(pid)
		s += v
	}
	return s
}

func hostCPUs() int {
	var set unix.CPUSet
	if unix.SchedGetaffinity(0, &set) == nil {
		return set.Count()
	}
	return 0
}

// ListenerPID finds the process listening on a TCP port (the lowest pid
// when several share it).
func ListenerPID(port int) (int, error) {
	pids, err := ListenerPIDs(port)
	if err != nil {
		return 0, err
	}
	return pids[0], nil
}

// ListenerPIDs finds every process listening on a TCP port (with
// SO_REUSEPORT there may be several), in increasing order: the sockets'
// inodes in /proc/net/tcp (and tcp6), then the processes holding them
// among /proc/*/fd.
func ListenerPIDs(port int) ([]int, error) {
	inodes := map[string]bool{}
	for _, name := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(name)
		if err != nil {
			continue
		}
		for _, ino := range listenInodes(b, port) {
			inodes[ino] = true
		}
	}
	if len(inodes) == 0 {
		return nil, fmt.Errorf("nothing listens on port %d", port)
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fds, err := os.ReadDir(filepath.Join("/proc", p.Name(), "fd"))
		if err != nil {
			continue
		}
		for _, fd := range fds {
			link, err := os.Readlink(filepath.Join("/proc", p.Name(), "fd", fd.Name()))
			if err != nil {
				continue
			}
			if ino, ok := strings.CutPrefix(link, "socket:["); ok && inodes[strings.TrimSuffix(ino, "]")] {
				pids = append(pids, pid)
				break
			}
		}
	}
	if len(pids) == 0 {
		return nil, fmt.Errorf("no process of ours holds a socket listening on port %d", port)
	}
	slices.Sort(pids)
	return pids, nil
}

// listenInodes returns the inodes of the listening sockets on port in a
// /proc/net/tcp table.
func listenInodes(table []byte, port int) []string {
	var out []string
	for i, line := range strings.Split(string(table), "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) < 10 || f[3] != "0A" { // 0A: TCP_LISTEN
			continue
		}
		_, hexPort, ok := strings.Cut(f[1], ":")
		if !ok {
			continue
		}
		if p, err := strconv.ParseUint(hexPort, 16, 16); err == nil && int(p) == port {
			out = append(out, f[9])
		}
	}
	return out
}

// BroadcastSummary prints the median and the range of several runs' main
// figures (the same scenario repeated).
func BroadcastSummary(w io.Writer, runs []*BroadcastResult) {
	if len(runs) == 0 {
		return
	}
	row := func(name, unit string, get func(*BroadcastResult) float64) {
		var v []float64
		for _, r := range runs {
			v = append(v, get(r))
		}
		slices.Sort(v)
		med := v[len(v)/2]
		if len(v)%2 == 0 {
			med = (v[len(v)/2-1] + v[len(v)/2]) / 2
		}
		fmt.Fprintf(w, "%-34s %12s   [%s … %s]%s\n", name, format(med), format(v[0]), format(v[len(v)-1]), unit)
	}
	r0 := runs[0]
	complete := 0
	for _, r := range runs {
		if r.Complete {
			complete++
		}
	}
	fmt.Fprintf(w, "%s: %d runs of %d subscribers, %d publications of %d B at %g/s; complete in %d of %d runs\n",
		r0.Target, len(runs), r0.Subscribers, r0.Count, r0.Size, r0.Rate, complete, len(runs))
	fmt.Fprintf(w, "%-34s %12s   [min … max]\n", "", "median")
	row("publications/s", "", func(r *BroadcastResult) float64 {
		if r.Published < 2 || r.PublishSeconds <= 0 {
			return 0
		}
		return float64(r.Published-1) / r.PublishSeconds
	})
	row("HTTP publish p50", " ms", func(r *BroadcastResult) float64 { return r.PublishHTTPP50 })
	row("deliveries/s", "", func(r *BroadcastResult) float64 { return r.DeliveriesPerS })
	row("server CPU s", "", func(r *BroadcastResult) float64 { return r.ServerCPUSeconds })
	row("deliveries per server CPU-s", "", func(r *BroadcastResult) float64 { return r.DeliveriesPerCPUSec })
	row("publish->last delivery p50", " ms", func(r *BroadcastResult) float64 { return r.Latency.LastP50 })
	row("publish->last delivery p99", " ms", func(r *BroadcastResult) float64 { return r.Latency.LastP99 })
	row("publish->last delivery max", " ms", func(r *BroadcastResult) float64 { return r.Latency.LastMax })
	row("publish->delivery p50", " ms", func(r *BroadcastResult) float64 { return r.Latency.DelivP50 })
	row("publish->delivery p99", " ms", func(r *BroadcastResult) float64 { return r.Latency.DelivP99 })
	row("client CPU s", "", func(r *BroadcastResult) float64 {
		if r.ClientCPUSeconds == nil {
			return 0
		}
		return *r.ClientCPUSeconds
	})
	row("host busy %", "", func(r *BroadcastResult) float64 { return r.HostBusyPercent })
	row("ksoftirqd CPU s", "", func(r *BroadcastResult) float64 { return r.SoftirqdCPUSeconds })
	row("other processes' CPU s", "", func(r *BroadcastResult) float64 {
		if r.OtherCPUSeconds == nil {
			return 0
		}
		return *r.OtherCPUSeconds
	})
}

func format(v float64) string {
	switch {
	case v >= 1000:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

// serverPID returns the server process to measure: pid as given (-1: none,
// for a mode that can run without it), or with 0 the process listening on
// u's port; a process to measure must have CPU times this user can read.
func serverPID(pid int, u *url.URL) (int, error) {
	if pid == 0 {
		port, _ := strconv.Atoi(u.Port())
		if port == 0 {
			return 0, fmt.Errorf("-url %q has no port: give -server-pid", u)
		}
		var err error
		if pid, err = ListenerPID(port); err != nil {
			return 0, fmt.Errorf("finding the server's process: %w (give -server-pid)", err)
		}
	}
	if pid > 0 {
		if _, err := ProcCPUSeconds(pid); err != nil {
			return 0, fmt.Errorf("reading the server's CPU time: %w", err)
		}
	}
	return pid, nil
}
