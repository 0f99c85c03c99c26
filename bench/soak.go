package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wsdproject/wsd/frame"
)

// SoakOptions describe a soak run against a running wsd: N clients kept
// connected for Duration, a share of them closed and reopened every second,
// each subscribed to one of Channels channels and sending a few messages,
// publications through the HTTP API meanwhile; then every client closed
// and the server watched until it is back where it started.
type SoakOptions struct {
	URL           string        // ws://host:port/path of the JSON protocol endpoint (127.0.0.0/8 only)
	Admin         string        // http://host:port of the admin listener: /metrics and /api/publish (127.0.0.0/8 only)
	APIKey        string        // the server's --api-key; needed when BroadcastRate > 0
	N             int           // clients kept connected
	Channels      int           // client k subscribes to ChannelPrefix + k mod Channels
	ChannelPrefix string        // "": SoakChannelPrefix
	Churn         float64       // fraction of N closed (and reopened) each second
	Vanish        float64       // of those, the fraction that only close TCP (no close frame)
	MsgRate       float64       // client messages per second, over all clients
	PublishShare  float64       // of those, the fraction that are publishes to the client's channel; the rest are echoes
	BroadcastRate float64       // publications per second through POST /api/publish, the channels in turn
	Size          int           // bytes of each message's JSON data
	Duration      time.Duration // the traffic phase
	Interval      time.Duration // a line every Interval
	Drain         time.Duration // after the traffic, wait at most this for answers and deliveries
	Settle        time.Duration // after closing, wait at most this for the server to return to its baseline
	Timeout       time.Duration // bound on the whole run (0: Duration + Settle + 10 min)
	Concurrency   int           // dials in flight while ramping up
	Source        net.IP        // first source address; client k dials from Source + k/10000
	ServerPID     int           // the server's process (0: the one listening on URL's port; -1: RSS and fds from /metrics)

	GoroutineTolerance int     // final goroutines may exceed the baseline by this many
	FDTolerance        int     // final open fds likewise
	RSSTolerance       float64 // bytes: final RSS may exceed the baseline and the history by the larger of this and RSSGrowthShare of the peak growth
	RSSGrowthShare     float64
	HeapTolerance      float64 // bytes: final heap live may exceed the baseline and the history by the larger of this and HeapPerConn × peak connections
	HeapPerConn        float64 // bytes (see tolerances)
	MaxErrors          int64   // the run fails with more errors than this

	Out      io.Writer // the periodic lines (nil: none)
	Progress io.Writer // ramp progress (nil: none)
	Terminal bool      // Progress is a terminal

	closeWait time.Duration // tests: how long a clean close waits for the server's close frame (0: 3 s)
}

// SoakChannelPrefix names a soak run's channels: soak-0, soak-1, …
const SoakChannelPrefix = "soak-"

// SoakSample is one reading of the server (nil: not available) and of the
// run's counters.
type SoakSample struct {
	Phase        string    `json:"phase"` // baseline, run, end (traffic stopped, clients still open), settle, final
	At           time.Time `json:"at"`
	Elapsed      float64   `json:"elapsed_seconds"` // since the traffic phase began (0 before it)
	RSS          *float64  `json:"server_rss_bytes"`
	HeapLive     *float64  `json:"server_heap_live_bytes"`  // wsd_go_heap_live_bytes: live at the last GC
	HeapAlloc    *float64  `json:"server_heap_alloc_bytes"` // go_memstats_heap_alloc_bytes: live and garbage
	GCs          *float64  `json:"server_gc_cycles"`        // go_gc_duration_seconds_count
	LastGC       *float64  `json:"server_last_gc_unix"`     // go_memstats_last_gc_time_seconds
	Goroutines   *float64  `json:"server_goroutines"`
	FDs          *float64  `json:"server_open_fds"`
	Open         *float64  `json:"server_connections_open"`
	Slots        *float64  `json:"server_session_slots"`
	HistoryBytes *float64  `json:"server_history_bytes"`        // wsd_broker_history_bytes
	HistoryPubs  *float64  `json:"server_history_publications"` // wsd_broker_history_publications
	Clients      int64     `json:"clients_connected"`
	RecvPerSec   float64   `json:"client_received_per_second"` // since the previous line
	Received     int64     `json:"client_received"`
	Connects     int64     `json:"connects"`
	Disconnects  int64     `json:"disconnects"`
	Errors       int64     `json:"errors"`
	Lost         int64     `json:"lost"`
	Err          string    `json:"scrape_error,omitempty"`
}

// SoakVerdict says whether the server came back to its baseline.
type SoakVerdict struct {
	OpenOK        bool   `json:"connections_back_to_baseline"`
	GoroutinesOK  bool   `json:"goroutines_ok"`
	FDsOK         bool   `json:"fds_ok"`
	HeapJudged    bool   `json:"heap_gc_after_close"` // a GC ran after every connection had closed: the heap figure is current
	HeapOK        bool   `json:"heap_ok"`
	RSSOK         bool   `json:"rss_ok"`
	MemoryBasis   string `json:"memory_judged_on"` // "heap live" or "rss"
	MemoryOK      bool   `json:"memory_ok"`
	DeliveryOK    bool   `json:"delivery_ok"` // nothing lost, nothing unexpected
	ErrorsOK      bool   `json:"errors_ok"`
	Complete      bool   `json:"complete"` // the traffic phase ran its whole duration
	Pass          bool   `json:"pass"`
	RSSLimit      string `json:"rss_tolerance"`
	HeapLimit     string `json:"heap_tolerance"`
	FailedBecause string `json:"failed_because,omitempty"`
}

// SoakResult is what a soak run saw.
type SoakResult struct {
	URL                string  `json:"url"`
	Admin              string  `json:"admin"`
	ServerPID          int     `json:"server_pid"`
	N                  int     `json:"clients"`
	Channels           int     `json:"channels"`
	ChannelPrefix      string  `json:"channel_prefix"`
	Churn              float64 `json:"churn_per_second"`
	Vanish             float64 `json:"vanish_share"`
	MsgRate            float64 `json:"client_messages_per_second_asked"`
	PublishShare       float64 `json:"publish_share"`
	BroadcastRate      float64 `json:"api_publications_per_second_asked"`
	Size               int     `json:"data_bytes"`
	GoroutineTolerance int     `json:"goroutine_tolerance"`
	FDTolerance        int     `json:"fd_tolerance"`
	RampSeconds        float64 `json:"ramp_seconds"`
	RampFailed         int64   `json:"ramp_failed"`
	PhaseSeconds       float64 `json:"phase_seconds"`
	StoppedBy          string  `json:"stopped_by"`
	SettleSeconds      float64 `json:"settle_seconds"`
	Settled            string  `json:"settled"` // how the settle wait ended
	TotalSeconds       float64 `json:"total_seconds"`

	Connects        int64            `json:"connects"`
	ConnectFailures int64            `json:"connect_failures"`
	ChurnedClean    int64            `json:"churned_clean"`    // closed by us with a close frame, answered
	ChurnedVanished int64            `json:"churned_vanished"` // closed by us without a close frame
	ClosedAtEnd     int64            `json:"closed_at_end"`
	ServerClosed    int64            `json:"closed_by_server"` // unexpected: the server's close frame or FIN
	ConnLost        int64            `json:"connections_lost"` // unexpected: a read error
	CloseUnanswered int64            `json:"close_unanswered"` // our close frame got no close frame back in time
	ServerCodes     map[string]int64 `json:"closed_by_server_codes,omitempty"`

	EchoSent         int64 `json:"echo_sent"`
	EchoReplies      int64 `json:"echo_replies"`
	EchoAbandoned    int64 `json:"echo_abandoned"` // on connections closed before the reply could come (churn)
	EchoLost         int64 `json:"echo_lost"`      // on connections open at the end, after the drain
	PublishSent      int64 `json:"publish_sent"`
	PublishAcked     int64 `json:"publish_acked"`
	PublishBusy      int64 `json:"publish_busy"` // SERVER_BUSY: not published
	PublishAbandoned int64 `json:"publish_abandoned"`
	PublishLost      int64 `json:"publish_lost"`
	APIPublished     int64 `json:"api_published"`
	APIBusy          int64 `json:"api_busy"`
	APIFailed        int64 `json:"api_failed"`

	Received          int64             `json:"client_received"` // every text message
	Deliveries        int64             `json:"deliveries"`      // "message"s: publications delivered
	APIDeliveries     int64             `json:"api_deliveries"`
	ClientDeliveries  int64             `json:"client_publication_deliveries"`
	LostGaps          int64             `json:"lost_in_gaps"` // publications a subscriber skipped (offsets jumped)
	LostAtEnd         int64             `json:"lost_at_end"`  // publications subscribers open at the end never got
	Unexpected        int64             `json:"unexpected"`   // duplicates, out of order, other channels', replies to nothing sent
	EpochResets       int64             `json:"epoch_resets"`
	Errors            int64             `json:"errors"`
	ErrorKinds        map[string]int64  `json:"error_kinds,omitempty"`
	FirstErrors       map[string]string `json:"first_errors,omitempty"`
	PeakClients       int64             `json:"peak_clients"`
	PeakServerOpen    *float64          `json:"peak_server_connections_open"`
	Baseline          SoakSample        `json:"baseline"`
	End               SoakSample        `json:"end"`
	Final             SoakSample        `json:"final"`
	RSSPeak           *float64          `json:"server_rss_peak_bytes"` // sampled every second
	HeapLivePeak      *float64          `json:"server_heap_live_peak_bytes"`
	GoroutinesPeak    *float64          `json:"server_goroutines_peak"`
	FDsPeak           *float64          `json:"server_open_fds_peak"`
	BaselineHeap      *float64          `json:"server_heap_baseline_bytes"` // heap live, or heap alloc before the first GC
	BaselineHeapAlloc bool              `json:"server_heap_baseline_is_alloc"`
	Verdict           SoakVerdict       `json:"verdict"`
	Samples           []SoakSample      `json:"samples"`
}

// Why we close a connection.
const (
	soakOpen int32 = iota
	soakCloseClean
	soakCloseVanish
	soakCloseEnd
)

// soakConn is one connected client. Its reader goroutine owns the
// connection's stream position; mu lets the drain read it.
type soakConn struct {
	ws      *wsClient
	ch      int
	closing atomic.Int32 // soakOpen or why we close it

	mu    sync.Mutex
	epoch string // of the channel's stream ("" until its first publication)
	next  int64  // the offset expected next

	echoSent, echoGot atomic.Int64 // ids e1, e2, …: replies come in order
	pubSent, pubGot   atomic.Int64 // ids p1, p2, …: acks or errors, in order
}

// soakSlot is one of the N clients: a connection at a time.
type soakSlot struct {
	k, ch  int
	source net.IP
	mu     sync.Mutex
	c      *soakConn // nil while not connected
}

// soakStream is the newest publication known of a channel: from the API's
// answers and the clients' publish acks.
type soakStream struct {
	mu     sync.Mutex
	epoch  string
	offset int64
}

func (s *soakStream) note(epoch string, offset int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if epoch != s.epoch {
		s.epoch, s.offset = epoch, offset
		return
	}
	s.offset = max(s.offset, offset)
}

func (s *soakStream) get() (string, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.epoch, s.offset
}

// soakRun is one run's state.
type soakRun struct {
	o        SoakOptions
	ramp     progressLine
	lines    progressLine
	target   string
	path     string
	pid      int
	channels []string
	streams  []soakStream
	slots    []*soakSlot
	pub      *publisher
	r        *SoakResult

	phaseCtx  context.Context
	stopping  atomic.Bool // the traffic is over: no reconnects
	wg        sync.WaitGroup
	began     time.Time
	phase0    time.Time
	base      SoakSample
	header    bool
	lastLine  time.Time
	lastRecvd int64

	connected, peakClients                         atomic.Int64
	connects, connectFailures                      atomic.Int64
	churnClean, churnVanish, closedEnd             atomic.Int64
	serverClosed, connLost, closeUnanswered        atomic.Int64
	echoSent, echoReplies, echoAbandoned, echoLost atomic.Int64
	pubSent, pubAcked, pubBusy, pubAbandoned       atomic.Int64
	pubLost                                        atomic.Int64
	apiPublished, apiBusy, apiFailed               atomic.Int64
	received, deliveries, apiDeliv, clientDeliv    atomic.Int64
	lostGaps, lostEnd, unexpected, epochResets     atomic.Int64
	errTotal                                       atomic.Int64
	errMu                                          sync.Mutex
	errKinds                                       map[string]int64
	firstErrs                                      map[string]string
	codeMu                                         sync.Mutex
	serverCodes                                    map[string]int64
	peakMu                                         sync.Mutex
	rssPeak, heapPeak, gorPeak, fdPeak, openPeak   *float64
}

// loopbackHost reports whether hostport names a 127.0.0.0/8 address (or
// localhost): a soak run drives only servers on this host.
func loopbackHost(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host).To4()
	return ip != nil && ip[0] == 127
}

// ParseChurn reads a churn rate: "1%/s", "1%", "0.01/s" or "0.01", a
// fraction of the clients per second.
func ParseChurn(s string) (float64, error) {
	t := strings.TrimSuffix(strings.TrimSpace(s), "/s")
	pct := strings.HasSuffix(t, "%")
	v, err := strconv.ParseFloat(strings.TrimSuffix(t, "%"), 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("churn %q: want a share per second such as 1%%/s or 0.01", s)
	}
	if pct {
		v /= 100
	}
	if v > 1 {
		return 0, fmt.Errorf("churn %q: more than every client each second", s)
	}
	return v, nil
}

// RunSoak runs a soak against a running wsd.
func RunSoak(parent context.Context, o SoakOptions) (*SoakResult, error) {
	u, err := url.Parse(o.URL)
	if err != nil || u.Scheme != "ws" || u.Host == "" {
		return nil, fmt.Errorf("bad -url %q: want ws://host:port/path", o.URL)
	}
	a, err := url.Parse(o.Admin)
	if err != nil || a.Scheme != "http" || a.Host == "" {
		return nil, fmt.Errorf("bad -admin %q: want http://host:port", o.Admin)
	}
	if o.ChannelPrefix == "" {
		o.ChannelPrefix = SoakChannelPrefix
	}
	if o.closeWait == 0 {
		o.closeWait = 3 * time.Second
	}
	if o.Timeout == 0 {
		o.Timeout = o.Duration + o.Settle + 10*time.Minute
	}
	switch {
	case !loopbackHost(u.Host) || !loopbackHost(a.Host):
		return nil, fmt.Errorf("-url %s and -admin %s must be 127.0.0.0/8 addresses: a soak run drives only a server on this host", u.Host, a.Host)
	case o.Source == nil || o.Source.To4() == nil || o.Source.To4()[0] != 127:
		return nil, errors.New("-source must be a 127.0.0.0/8 address")
	case o.N < 1 || o.Channels < 1 || o.Concurrency < 1:
		return nil, errors.New("-n, -channels and -concurrency must be positive")
	case o.Churn < 0 || o.Churn > 1 || o.Vanish < 0 || o.Vanish > 1 || o.PublishShare < 0 || o.PublishShare > 1:
		return nil, errors.New("-churn, -vanish and -publish-share must be from 0 to 1")
	case o.MsgRate < 0 || o.BroadcastRate < 0:
		return nil, errors.New("-msg-rate and -broadcast-rate must not be negative")
	case o.MsgRate > 100000 || o.BroadcastRate > 10000:
		return nil, errors.New("-msg-rate is at most 100000 and -broadcast-rate at most 10000: a soak is not a load test")
	case o.Size < 40 || o.Size > 64<<10:
		return nil, errors.New("-size must be 40 bytes to 64 KiB")
	case o.Duration <= 0 || o.Interval <= 0 || o.Drain < 0 || o.Settle < 0 || o.Timeout <= 0:
		return nil, errors.New("-duration, -interval and -timeout must be positive, -drain and -settle not negative")
	case o.BroadcastRate > 0 && o.APIKey == "":
		return nil, errors.New("-broadcast-rate needs -api-key (the server's --api-key), or -broadcast-rate 0")
	}
	for i := range o.Channels {
		if !validSoakChannel(o.ChannelPrefix + strconv.Itoa(i)) {
			return nil, fmt.Errorf("-channel-prefix %q makes invalid channel names (printable ASCII, no spaces, segments separated by : . / and none empty; public, so not starting with $ or #)", o.ChannelPrefix)
		}
	}
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil {
		if need := uint64(o.N + 200); need > rl.Cur {
			return nil, fmt.Errorf("-n %d needs about %d file descriptors (one per client, 200 spare); this process may open %d: lower -n", o.N, need, rl.Cur)
		}
	}
	pid := 0
	if o.ServerPID >= 0 {
		if pid, err = serverPID(o.ServerPID, u); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(parent, o.Timeout)
	defer cancel()
	s := &soakRun{
		o: o, ramp: progressLine{o.Progress, o.Terminal}, lines: progressLine{o.Out, false},
		target: u.Host, path: u.RequestURI(), pid: pid, began: time.Now(),
		errKinds: map[string]int64{}, firstErrs: map[string]string{}, serverCodes: map[string]int64{},
		r: &SoakResult{URL: o.URL, Admin: o.Admin, ServerPID: pid, N: o.N, Channels: o.Channels, ChannelPrefix: o.ChannelPrefix,
			Churn: o.Churn, Vanish: o.Vanish, MsgRate: o.MsgRate, PublishShare: o.PublishShare, BroadcastRate: o.BroadcastRate, Size: o.Size,
			GoroutineTolerance: o.GoroutineTolerance, FDTolerance: o.FDTolerance},
	}
	s.channels = make([]string, o.Channels)
	for i := range s.channels {
		s.channels[i] = o.ChannelPrefix + strconv.Itoa(i)
	}
	s.streams = make([]soakStream, o.Channels)
	s.slots = make([]*soakSlot, o.N)
	for k := range s.slots {
		s.slots[k] = &soakSlot{k: k, ch: k % o.Channels, source: addIP(o.Source, k/connsPerSource)}
	}
	s.pub = newPublisher(BroadcastOptions{Target: TargetWsd, API: strings.TrimSuffix(o.Admin, "/") + "/api/publish", APIKey: o.APIKey, Size: o.Size})
	defer s.pub.client.CloseIdleConnections()

	// The baseline, before any connection of ours.
	s.base = s.sample(ctx, "baseline")
	if s.base.Err != "" {
		return nil, errors.New(s.base.Err)
	}
	s.keep(s.base)
	s.r.Baseline = s.base
	// Before its first GC a server's heap live reads 0: then what it has
	// allocated so far stands in (an upper bound on what is live).
	if s.base.GCs != nil && *s.base.GCs > 0 && s.base.HeapLive != nil {
		s.r.BaselineHeap = s.base.HeapLive
	} else if s.base.HeapAlloc != nil {
		s.r.BaselineHeap, s.r.BaselineHeapAlloc = s.base.HeapAlloc, true
	}
	if s.base.Open != nil && *s.base.Open > 0 {
		fmt.Fprintf(os.Stderr, "wsbench: note: the server already has %.0f connections open; the baseline counts them\n", *s.base.Open)
	}
	if err := s.check(ctx); err != nil {
		return nil, err
	}

	phaseCtx, stopPhase := context.WithCancel(ctx)
	defer stopPhase()
	s.phaseCtx = phaseCtx
	if err := s.rampUp(ctx); err != nil {
		s.stopping.Store(true)
		stopPhase()
		s.closeAll()
		return nil, err
	}
	s.trafficPhase(ctx, parent, stopPhase)
	s.drain()
	s.r.End = s.sample(context.Background(), "end")
	s.keep(s.r.End)
	s.closeAll()
	s.pub.client.CloseIdleConnections() // the server's side of them is counted in its goroutines and fds
	s.settle(ctx)
	s.finish()
	return s.r, nil
}

// validSoakChannel: a public channel name wsd accepts (auth.ValidChannel's
// rules, which this package does not import).
func validSoakChannel(name string) bool {
	if name == "" || len(name) > 255 || name[0] == '$' || name[0] == '#' {
		return false
	}
	seg := 0
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c < 0x21 || c > 0x7e {
			return false
		}
		if c == ':' || c == '.' || c == '/' {
			if seg == 0 {
				return false
			}
			seg = 0
			continue
		}
		seg++
	}
	return seg > 0
}

// check makes sure, before the ramp, that the server takes what the run
// will send: an API publication (the key) and a client publication
// (--allow-client-publish), each once, to the first channel.
func (s *soakRun) check(ctx context.Context) error {
	o := s.o
	if o.BroadcastRate > 0 {
		if err := s.apiPublish(ctx, 0, 0); err != nil {
			var pe *PublishError
			switch {
			case errors.As(err, &pe) && pe.Status == 401:
				return fmt.Errorf("the HTTP API refused -api-key: %w", err)
			case errors.As(err, &pe) && pe.Status == 404:
				return fmt.Errorf("%w: start wsd with --api-key KEY (and give -api-key KEY), or -broadcast-rate 0", err)
			}
			return fmt.Errorf("the first API publication: %w", err)
		}
	}
	if o.MsgRate > 0 && o.PublishShare > 0 {
		conn, err := dialUpgraded(ctx, s.target, s.path, o.Source)
		if err != nil {
			return fmt.Errorf("the check client: %w", err)
		}
		c := newWSClientSize(conn, 4096)
		defer c.close()
		check, _ := json.Marshal(map[string]any{"type": "publish", "channel": s.channels[0], "id": "check", "data": map[string]string{"soak": "check"}})
		if err := slowRequest(c, check, "publish", s.channels[0], "check", 10*time.Second); err != nil {
			if strings.Contains(err.Error(), slowCodeForbidden) {
				return fmt.Errorf("%w; or -publish-share 0 (echo only)", err)
			}
			return fmt.Errorf("the check client's publish: %w", err)
		}
	}
	return nil
}

// rampUp opens the N clients, Concurrency at a time; each then lives in
// its own goroutine (slotLoop), which reopens it after churn. A client
// that fails to open here is retried by its goroutine during the phase.
func (s *soakRun) rampUp(ctx context.Context) error {
	o := s.o
	pool := startOpenPool(ctx, o.N, o.Concurrency, func(k int) error {
		sl := s.slots[k]
		c, err := s.connect(ctx, sl)
		s.wg.Add(1)
		go s.slotLoop(sl, c)
		if err != nil {
			s.fail("connect", err)
		}
		return err
	})
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	show := func() {
		s.ramp.progress(fmt.Sprintf("ramp %6.1fs  opened %d/%d  failed %d", time.Since(s.began).Seconds(), pool.opened.Load(), o.N, pool.failed.Load()))
	}
	for waiting := true; waiting; {
		select {
		case <-pool.done:
			waiting = false
		case <-tick.C:
			show()
		}
	}
	show()
	s.ramp.endProgress()
	s.r.RampSeconds = time.Since(s.began).Seconds()
	s.r.RampFailed = pool.failed.Load()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("ramping up: %w (%d of %d open)", err, pool.opened.Load(), o.N)
	}
	if pool.opened.Load() == 0 {
		return fmt.Errorf("no client could connect: %v", pool.firstErr())
	}
	if pool.failed.Load() > 0 {
		fmt.Fprintf(os.Stderr, "wsbench: note: %d of %d clients failed to open (first: %v); they retry during the run\n", pool.failed.Load(), o.N, pool.firstErr())
	}
	return nil
}

// connect opens a client for sl and subscribes it to its channel.
func (s *soakRun) connect(ctx context.Context, sl *soakSlot) (*soakConn, error) {
	conn, err := dialUpgraded(ctx, s.target, s.path, sl.source)
	if err != nil {
		s.connectFailures.Add(1)
		return nil, err
	}
	// Messages are small: a small read buffer each keeps 19,000 clients
	// in a few tens of MiB.
	ws := newWSClientSize(conn, 4096)
	epoch, offset, err := soakSubscribe(ws, s.channels[sl.ch])
	if err != nil {
		conn.Close()
		s.connectFailures.Add(1)
		return nil, err
	}
	s.connects.Add(1)
	return &soakConn{ws: ws, ch: sl.ch, epoch: epoch, next: offset + 1}, nil
}

// soakMsg is any message the server sends on /ws.
type soakMsg struct {
	Type    string          `json:"type"`
	ID      json.RawMessage `json:"id"`
	Channel string          `json:"channel"`
	Offset  int64           `json:"offset"`
	Epoch   string          `json:"epoch"`
	Code    string          `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data"`
}

// soakSubscribe subscribes c to channel and returns the stream position
// its ack gives: every publication after it must follow, in order, once.
func soakSubscribe(c *wsClient, channel string) (epoch string, offset int64, err error) {
	if err := c.write(frame.OpText, subscribeMessage(channel), 10*time.Second); err != nil {
		return "", 0, err
	}
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.conn.SetReadDeadline(time.Time{})
	for {
		_, p, err := c.readMessage()
		if err != nil {
			return "", 0, fmt.Errorf("waiting for the subscribe ack: %w", err)
		}
		var m soakMsg
		if json.Unmarshal(p, &m) != nil || string(m.ID) != `"sub"` {
			continue
		}
		if m.Type != "ack" {
			return "", 0, slowRefusal("subscribe", channel, slowReply{Type: m.Type, ID: m.ID, Code: m.Code, Message: m.Message})
		}
		return m.Epoch, m.Offset, nil
	}
}

// slotLoop runs client sl: it reads its connection until that ends, then
// opens another, until the traffic is over.
func (s *soakRun) slotLoop(sl *soakSlot, c *soakConn) {
	defer s.wg.Done()
	backoff := c == nil
	for {
		if c != nil && s.register(sl, c) {
			err := s.read(c)
			s.unregister(sl, c, err)
		}
		c = nil
		if s.stopping.Load() {
			return
		}
		wait := time.Duration(rand.Int64N(int64(100 * time.Millisecond)))
		if backoff {
			wait = time.Second + wait
		}
		select {
		case <-time.After(wait):
		case <-s.phaseCtx.Done():
			return
		}
		nc, err := s.connect(s.phaseCtx, sl)
		if err != nil {
			if s.stopping.Load() {
				return
			}
			s.fail("connect", err)
			backoff = true
			continue
		}
		backoff, c = false, nc
	}
}

// register makes c sl's connection, unless the traffic is over (then it
// closes c at once).
func (s *soakRun) register(sl *soakSlot, c *soakConn) bool {
	sl.mu.Lock()
	if s.stopping.Load() {
		sl.mu.Unlock()
		c.closing.Store(soakCloseEnd)
		c.ws.close()
		s.closedEnd.Add(1)
		return false
	}
	sl.c = c
	sl.mu.Unlock()
	n := s.connected.Add(1)
	for {
		p := s.peakClients.Load()
		if n <= p || s.peakClients.CompareAndSwap(p, n) {
			break
		}
	}
	return true
}

// unregister takes c off sl and counts how it ended.
func (s *soakRun) unregister(sl *soakSlot, c *soakConn, err error) {
	sl.mu.Lock()
	if sl.c == c {
		sl.c = nil
	}
	sl.mu.Unlock()
	s.connected.Add(-1)
	c.ws.conn.Close()
	pendingEcho := c.echoSent.Load() - c.echoGot.Load()
	pendingPub := c.pubSent.Load() - c.pubGot.Load()
	answered := errors.Is(err, errPeerClosed) && c.ws.closeCode != 0
	switch c.closing.Load() {
	case soakCloseClean, soakCloseEnd:
		if c.closing.Load() == soakCloseClean {
			s.churnClean.Add(1)
		} else {
			s.closedEnd.Add(1)
		}
		if !answered {
			s.closeUnanswered.Add(1)
			s.fail("close unanswered", fmt.Errorf("no close frame back within %v: %v", s.o.closeWait, err))
		}
	case soakCloseVanish:
		s.churnVanish.Add(1)
	default:
		if errors.Is(err, errPeerClosed) {
			s.serverClosed.Add(1)
			code := "none (FIN)"
			if c.ws.closeCode != 0 {
				code = strconv.Itoa(int(c.ws.closeCode))
			}
			s.codeMu.Lock()
			s.serverCodes[code]++
			s.codeMu.Unlock()
			s.fail("closed by the server", fmt.Errorf("close code %s", code))
		} else {
			s.connLost.Add(1)
			s.fail("connection lost", err)
		}
	}
	if c.closing.Load() == soakCloseEnd {
		// The drain waited for these: they are lost.
		s.echoLost.Add(pendingEcho)
		s.pubLost.Add(pendingPub)
	} else {
		s.echoAbandoned.Add(pendingEcho)
		s.pubAbandoned.Add(pendingPub)
	}
}

// read reads c until its connection ends, checking what arrives.
func (s *soakRun) read(c *soakConn) error {
	for {
		op, p, err := c.ws.readMessage()
		if err != nil {
			return err
		}
		if op != frame.OpText {
			s.unexpected.Add(1)
			continue
		}
		s.received.Add(1)
		var m soakMsg
		if err := json.Unmarshal(p, &m); err != nil {
			s.fail("bad message", fmt.Errorf("%v: %s", err, truncate(p, 100)))
			continue
		}
		switch m.Type {
		case "message":
			s.deliver(c, &m)
		case "echo_reply":
			s.answer(c, m.ID, 'e', &c.echoGot, &s.echoReplies)
		case "ack":
			if s.answer(c, m.ID, 'p', &c.pubGot, &s.pubAcked) {
				s.streams[c.ch].note(m.Epoch, m.Offset)
			}
		case "error":
			if m.Code == slowCodeBusy {
				s.answer(c, m.ID, 'p', &c.pubGot, &s.pubBusy)
				continue
			}
			s.answer(c, m.ID, 'p', &c.pubGot, nil)
			s.fail("error reply", fmt.Errorf("%s: %s (id %s)", m.Code, m.Message, m.ID))
		default:
			s.unexpected.Add(1)
			s.fail("unexpected message", errors.New(truncate(p, 100)))
		}
	}
}

// answer checks that id ("<kind><n>") answers c's next request of that
// kind (replies to one connection come in the order of its requests) and
// counts it; a reply to nothing sent, or out of order, is unexpected.
func (s *soakRun) answer(c *soakConn, id json.RawMessage, kind byte, got *atomic.Int64, total *atomic.Int64) bool {
	var str string
	if json.Unmarshal(id, &str) != nil || len(str) < 2 || str[0] != kind {
		s.unexpected.Add(1)
		return false
	}
	n, err := strconv.ParseInt(str[1:], 10, 64)
	if err != nil || n != got.Load()+1 {
		s.unexpected.Add(1)
		return false
	}
	got.Store(n)
	if total != nil {
		total.Add(1)
	}
	return true
}

// clientMarker starts the data of the clients' publications (the API's
// start with seqMarker).
var clientMarker = []byte(`{"soak":"c"`)

// deliver checks a publication against c's stream position.
func (s *soakRun) deliver(c *soakConn, m *soakMsg) {
	s.deliveries.Add(1)
	switch {
	case bytes.HasPrefix(m.Data, seqMarker):
		s.apiDeliv.Add(1)
	case bytes.HasPrefix(m.Data, clientMarker):
		s.clientDeliv.Add(1)
	}
	if m.Channel != s.channels[c.ch] {
		s.unexpected.Add(1)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.epoch == "":
		// The stream began after the subscribe (whose ack said offset 0
		// and no epoch): this is its first publication.
		c.epoch = m.Epoch
	case m.Epoch != c.epoch:
		// The stream was lost and begun again: positions of the old one
		// say nothing about the new one.
		s.epochResets.Add(1)
		c.epoch, c.next = m.Epoch, m.Offset+1
		return
	}
	switch {
	case m.Offset == c.next:
	case m.Offset > c.next:
		s.lostGaps.Add(m.Offset - c.next)
	default:
		s.unexpected.Add(1) // at or before one already received: a duplicate or out of order
		return
	}
	c.next = m.Offset + 1
}

// behind is how many of its channel's known publications c has not
// received (0 when the stream was begun again since).
func (s *soakRun) behind(c *soakConn) int64 {
	epoch, offset := s.streams[c.ch].get()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.epoch != "" && c.epoch != epoch {
		return 0
	}
	return max(offset-(c.next-1), 0)
}

// fail counts an error of a kind, keeping the first of each.
func (s *soakRun) fail(kind string, err error) {
	if s.stopping.Load() && errors.Is(err, context.Canceled) {
		return
	}
	s.errTotal.Add(1)
	s.errMu.Lock()
	defer s.errMu.Unlock()
	s.errKinds[kind]++
	if _, ok := s.firstErrs[kind]; !ok {
		s.firstErrs[kind] = err.Error()
	}
}

// closeConn begins closing c for why: a close frame (its answer ends the
// reader, or the read deadline does), or, to vanish, just the socket.
func (s *soakRun) closeConn(c *soakConn, why int32) bool {
	if !c.closing.CompareAndSwap(soakOpen, why) {
		return false
	}
	if why == soakCloseVanish {
		c.ws.conn.Close()
		return true
	}
	_ = c.ws.write(frame.OpClose, frame.AppendClose(nil, 1000, ""), time.Second)
	c.ws.conn.SetReadDeadline(time.Now().Add(s.o.closeWait))
	return true
}

// pick returns a random connected client that we are not closing (nil
// if a few tries find none).
func (s *soakRun) pick() *soakConn {
	for range 16 {
		sl := s.slots[rand.IntN(len(s.slots))]
		sl.mu.Lock()
		c := sl.c
		sl.mu.Unlock()
		if c != nil && c.closing.Load() == soakOpen {
			return c
		}
	}
	return nil
}

// pace calls f at rate per second until ctx ends; a late f is not made up
// for with a burst.
func pace(ctx context.Context, rate float64, f func(seq int64)) {
	if rate <= 0 {
		return
	}
	period := time.Duration(float64(time.Second) / rate)
	next := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for seq := int64(0); ; seq++ {
		now := time.Now()
		if d := next.Sub(now); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				return
			}
		} else if -d > period {
			next = now
		}
		if ctx.Err() != nil {
			return
		}
		next = next.Add(period)
		f(seq)
	}
}

// soakData is a client message's JSON data: {"soak":"<kind>","pad":"xxx…"},
// size bytes.
func soakData(kind string, size int) []byte {
	b := append([]byte(`{"soak":"`), kind...)
	b = append(b, `","pad":"`...)
	for len(b) < size-2 {
		b = append(b, 'x')
	}
	return append(b, `"}`...)
}

// sendClient sends one client message on a random client: a publish to
// its channel (PublishShare of them) or an echo.
func (s *soakRun) sendClient(echoData, pubData []byte) {
	c := s.pick()
	if c == nil {
		return
	}
	var msg []byte
	if rand.Float64() < s.o.PublishShare {
		n := c.pubSent.Add(1)
		s.pubSent.Add(1)
		ch, _ := json.Marshal(s.channels[c.ch])
		msg = fmt.Appendf(nil, `{"type":"publish","channel":%s,"id":"p%d","data":%s}`, ch, n, pubData)
	} else {
		n := c.echoSent.Add(1)
		s.echoSent.Add(1)
		msg = fmt.Appendf(nil, `{"type":"echo","id":"e%d","data":%s}`, n, echoData)
	}
	if err := c.ws.write(frame.OpText, msg, 2*time.Second); err != nil && c.closing.Load() == soakOpen {
		s.fail("client write", err)
	}
}

// apiPublish publishes seq to channel ch through the HTTP API and notes
// the stream position it got.
func (s *soakRun) apiPublish(ctx context.Context, ch int, seq int64) error {
	chName, _ := json.Marshal(s.channels[ch])
	reply, err := s.pub.post(ctx, chName, publicationData(int(seq), time.Now().UnixNano(), s.o.Size))
	if err != nil {
		return err
	}
	var pos struct {
		Offset int64  `json:"offset"`
		Epoch  string `json:"epoch"`
	}
	if err := json.Unmarshal(reply, &pos); err != nil {
		return fmt.Errorf("publish answer %s: %w", truncate(reply, 100), err)
	}
	s.streams[ch].note(pos.Epoch, pos.Offset)
	return nil
}

// trafficPhase runs the churn, the client messages and the API
// publications for Duration (or until the timeout or an interrupt), with a
// line every Interval.
func (s *soakRun) trafficPhase(ctx, parent context.Context, stopPhase context.CancelFunc) {
	o := s.o
	s.phase0 = time.Now()
	s.lastLine, s.lastRecvd = s.phase0, s.received.Load()
	var workers sync.WaitGroup
	pc := s.phaseCtx
	echoData, pubData := soakData("e", o.Size), soakData("c", o.Size)
	workers.Go(func() { pace(pc, o.MsgRate, func(int64) { s.sendClient(echoData, pubData) }) })
	workers.Go(func() {
		pace(pc, o.BroadcastRate, func(seq int64) {
			err := s.apiPublish(pc, int(seq%int64(o.Channels)), seq+1)
			var pe *PublishError
			switch {
			case err == nil:
				s.apiPublished.Add(1)
			case errors.As(err, &pe) && pe.Status == 503:
				s.apiBusy.Add(1)
			case pc.Err() != nil:
			default:
				s.apiFailed.Add(1)
				s.fail("api publish", err)
			}
		})
	})
	workers.Go(func() {
		// Every second, Churn × N clients close: Vanish of them by just
		// closing the socket, the rest with a close frame. Their
		// goroutines open them again.
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		var owed float64
		for {
			select {
			case <-pc.Done():
				return
			case <-tick.C:
			}
			owed += o.Churn * float64(o.N)
			for ; owed >= 1; owed-- {
				c := s.pick()
				if c == nil {
					continue
				}
				why := soakCloseClean
				if rand.Float64() < o.Vanish {
					why = soakCloseVanish
				}
				s.closeConn(c, why)
			}
		}
	})

	phaseEnd := time.NewTimer(o.Duration)
	defer phaseEnd.Stop()
	lineTick := time.NewTicker(o.Interval)
	defer lineTick.Stop()
	rssTick := time.NewTicker(time.Second)
	defer rssTick.Stop()
	for s.r.StoppedBy == "" {
		select {
		case <-phaseEnd.C:
			s.r.StoppedBy = "duration"
		case <-ctx.Done():
			s.r.StoppedBy = "timeout"
			if parent.Err() != nil {
				s.r.StoppedBy = "interrupted"
			}
		case <-rssTick.C:
			s.peakRSS()
		case <-lineTick.C:
			s.keep(s.sample(ctx, "run"))
		}
	}
	s.stopping.Store(true)
	stopPhase()
	workers.Wait()
	s.r.PhaseSeconds = time.Since(s.phase0).Seconds()
}

// peakRSS reads the server's RSS for the peak (every second: a line every
// Interval would miss short peaks).
func (s *soakRun) peakRSS() {
	if s.pid <= 0 {
		return
	}
	if v := procRSS(s.pid); v > 0 {
		s.peakMu.Lock()
		s.rssPeak = maxOpt(s.rssPeak, &v)
		s.peakMu.Unlock()
	}
}

// drain waits, at most Drain, for every open client to have its answers
// and its channel's publications; what is still missing then is lost. It
// waits even after an interrupt or the timeout (it is bounded), so that
// what it counts lost is lost.
func (s *soakRun) drain() {
	deadline := time.Now().Add(s.o.Drain)
	for {
		missing := int64(0)
		for _, sl := range s.slots {
			sl.mu.Lock()
			c := sl.c
			sl.mu.Unlock()
			if c == nil || c.closing.Load() != soakOpen {
				continue
			}
			missing += c.echoSent.Load() - c.echoGot.Load() + c.pubSent.Load() - c.pubGot.Load() + s.behind(c)
		}
		if missing == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, sl := range s.slots {
		sl.mu.Lock()
		c := sl.c
		sl.mu.Unlock()
		if c != nil && c.closing.Load() == soakOpen {
			s.lostEnd.Add(s.behind(c))
		}
	}
}

// closeAll closes every client with a close frame and waits (bounded) for
// their goroutines to end.
func (s *soakRun) closeAll() {
	s.stopping.Store(true)
	for _, sl := range s.slots {
		sl.mu.Lock()
		c := sl.c
		sl.mu.Unlock()
		if c != nil {
			s.closeConn(c, soakCloseEnd)
		}
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-time.After(s.o.closeWait + 10*time.Second):
	}
	// Still open (a close that never finished, a dial still on its way):
	// close the sockets.
	for _, sl := range s.slots {
		sl.mu.Lock()
		if sl.c != nil {
			sl.c.ws.conn.Close()
		}
		sl.mu.Unlock()
	}
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		s.fail("close", errors.New("client goroutines still running 25 s after the close"))
	}
}

// historyOverhead is what the memory broker holds per publication kept
// besides its data: the Publication (offset, slice header, time: 40 B)
// and its slot, the data's allocation rounded up to a size class.
const historyOverhead = 64

// limits is what the verdict allows at the end.
type limits struct {
	rss, heap     *float64 // final RSS and heap live allowed
	history       float64  // of which for the channels' history (both)
	peakConns     float64
	rssAllowance  float64
	heapAllowance float64
}

// tolerances returns the final RSS and heap live the verdict allows, with
// smp the final sample. Three things stay in a server that leaks nothing:
// the channels' history, kept for --history-ttl after the last
// publication (wsd_broker_history_bytes and _publications tell how much);
// capacity sized to the peak number of connections (session slab pages
// are never freed, Go maps never shrink: about 260 B a connection here);
// and noise. A leak grows with the connections made, which churn makes
// many times the peak: a per-peak-connection allowance leaves it visible.
func (s *soakRun) tolerances(smp SoakSample) limits {
	o := s.o
	var l limits
	if smp.HistoryBytes != nil {
		l.history = *smp.HistoryBytes
		if smp.HistoryPubs != nil {
			l.history += historyOverhead * *smp.HistoryPubs
		}
	}
	l.peakConns = float64(s.peakClients.Load())
	if s.openPeak != nil {
		l.peakConns = max(l.peakConns, *s.openPeak)
	}
	if s.base.RSS != nil {
		growth := 0.0
		if s.rssPeak != nil {
			growth = max(*s.rssPeak-*s.base.RSS, 0)
		}
		l.rssAllowance = max(o.RSSTolerance, o.RSSGrowthShare*growth)
		v := *s.base.RSS + l.history + l.rssAllowance
		l.rss = &v
	}
	if s.r.BaselineHeap != nil {
		l.heapAllowance = max(o.HeapTolerance, o.HeapPerConn*l.peakConns)
		v := *s.r.BaselineHeap + l.history + l.heapAllowance
		l.heap = &v
	}
	return l
}

// settle waits, at most Settle, for the server to come back: connections
// open back to the baseline, goroutines and fds within their tolerance,
// and a garbage collection run since then whose live heap is within its
// tolerance (nothing is forced: an idle Go program collects at least every
// two minutes). It polls every second and prints a line every Interval.
func (s *soakRun) settle(ctx context.Context) {
	o := s.o
	began := time.Now()
	deadline := began.Add(o.Settle)
	var openAt time.Time // when the connections were back to the baseline
	var gcAt time.Time   // when a GC since openAt was first seen
	lastLine := began
	s.r.Settled = "timeout"
	for {
		smp := s.sample(ctx, "settle")
		now := time.Now()
		openOK := smp.Open != nil && s.base.Open != nil && *smp.Open <= *s.base.Open
		if openOK && openAt.IsZero() {
			openAt = now
		}
		lim := s.tolerances(smp)
		gOK := within(smp.Goroutines, s.base.Goroutines, float64(o.GoroutineTolerance))
		fOK := within(smp.FDs, s.base.FDs, float64(o.FDTolerance))
		gcSeen := !openAt.IsZero() && smp.LastGC != nil && *smp.LastGC >= float64(openAt.UnixNano())/1e9
		if gcSeen && gcAt.IsZero() {
			gcAt = now
		}
		heapOK := gcSeen && lim.heap != nil && smp.HeapLive != nil && *smp.HeapLive <= *lim.heap
		rssOK := lim.rss != nil && smp.RSS != nil && *smp.RSS <= *lim.rss
		// Done when everything is back; RSS follows the heap down as the
		// scavenger returns pages, so give it up to 15 s after the GC.
		done := openOK && gOK && fOK && heapOK && (rssOK || now.Sub(gcAt) >= 15*time.Second)
		if done {
			s.r.Settled = "settled"
		}
		if done || now.After(deadline) || ctx.Err() != nil {
			if ctx.Err() != nil {
				s.r.Settled = "stopped"
			}
			smp.Phase = "final"
			s.keep(smp)
			s.r.Final = smp
			s.r.Verdict.OpenOK, s.r.Verdict.GoroutinesOK, s.r.Verdict.FDsOK = openOK, gOK, fOK
			s.r.Verdict.HeapJudged, s.r.Verdict.HeapOK, s.r.Verdict.RSSOK = gcSeen, heapOK, rssOK
			break
		}
		if now.Sub(lastLine) >= o.Interval-500*time.Millisecond {
			lastLine = now
			s.keep(smp)
		} else {
			s.note(smp)
		}
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
		}
	}
	s.r.SettleSeconds = time.Since(began).Seconds()
}

// within reports whether v is at most base + tol (false if either is
// unknown).
func within(v, base *float64, tol float64) bool {
	return v != nil && base != nil && *v <= *base+tol
}

// The series a soak run reads.
const (
	seriesGoroutines   = "go_goroutines"
	seriesFDs          = "process_open_fds"
	seriesHeapLive     = "wsd_go_heap_live_bytes"
	seriesHeapAlloc    = "go_memstats_heap_alloc_bytes"
	seriesGCCount      = "go_gc_duration_seconds_count"
	seriesLastGC       = "go_memstats_last_gc_time_seconds"
	seriesSlots        = "wsd_session_slots"
	seriesHistoryBytes = "wsd_broker_history_bytes"
	seriesHistoryPubs  = "wsd_broker_history_publications"
)

// sample reads the server (RSS from /proc/PID/status, the rest from
// /metrics) and the run's counters.
func (s *soakRun) sample(ctx context.Context, phase string) SoakSample {
	smp := SoakSample{Phase: phase, At: time.Now(),
		Clients: s.connected.Load(), Received: s.received.Load(), Connects: s.connects.Load(),
		Disconnects: s.churnClean.Load() + s.churnVanish.Load() + s.closedEnd.Load() + s.serverClosed.Load() + s.connLost.Load(),
		Errors:      s.errTotal.Load(), Lost: s.lostGaps.Load() + s.lostEnd.Load() + s.echoLost.Load() + s.pubLost.Load()}
	if !s.phase0.IsZero() {
		smp.Elapsed = smp.At.Sub(s.phase0).Seconds()
	}
	m, err := ScrapeMetrics(ctx, s.o.Admin, 5*time.Second)
	if err != nil {
		smp.Err = err.Error()
	} else {
		smp.HeapLive, smp.HeapAlloc = m.Get(seriesHeapLive), m.Get(seriesHeapAlloc)
		smp.GCs, smp.LastGC = m.Get(seriesGCCount), m.Get(seriesLastGC)
		smp.Goroutines, smp.FDs = m.Get(seriesGoroutines), m.Get(seriesFDs)
		smp.Open, smp.Slots = m.Get(seriesOpen), m.Get(seriesSlots)
		smp.HistoryBytes, smp.HistoryPubs = m.Get(seriesHistoryBytes), m.Get(seriesHistoryPubs)
		smp.RSS = m.Get(seriesRSS)
	}
	if s.pid > 0 {
		if v := procRSS(s.pid); v > 0 {
			smp.RSS = &v
		}
		if smp.FDs == nil {
			if fds, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(s.pid), "fd")); err == nil {
				v := float64(len(fds))
				smp.FDs = &v
			}
		}
	}
	return smp
}

// note takes a sample's figures into the peaks.
func (s *soakRun) note(smp SoakSample) {
	s.peakMu.Lock()
	defer s.peakMu.Unlock()
	if smp.Phase == "baseline" {
		return
	}
	s.rssPeak = maxOpt(s.rssPeak, smp.RSS)
	s.heapPeak = maxOpt(s.heapPeak, smp.HeapLive)
	s.gorPeak = maxOpt(s.gorPeak, smp.Goroutines)
	s.fdPeak = maxOpt(s.fdPeak, smp.FDs)
	s.openPeak = maxOpt(s.openPeak, smp.Open)
}

const soakLineFormat = "%8s %-8s %8s %9s %7s %6s %6s %7s %8s %9s %6s %6s"

// keep records a sample and prints its line.
func (s *soakRun) keep(smp SoakSample) {
	s.note(smp)
	if smp.Phase != "baseline" {
		if d := smp.At.Sub(s.lastLine).Seconds(); d > 0 && !s.lastLine.IsZero() {
			smp.RecvPerSec = float64(smp.Received-s.lastRecvd) / d
		}
		s.lastLine, s.lastRecvd = smp.At, smp.Received
	}
	s.r.Samples = append(s.r.Samples, smp)
	if !s.header {
		s.header = true
		s.lines.progress(fmt.Sprintf(soakLineFormat, "time", "phase", "rss MiB", "heap MiB", "gorout", "fds", "open", "clients", "recv/s", "connects", "errors", "lost"))
	}
	if smp.Err != "" {
		s.lines.progress(fmt.Sprintf("%7.1fs %-8s scrape failed: %s", smp.Elapsed, smp.Phase, smp.Err))
		return
	}
	s.lines.progress(fmt.Sprintf(soakLineFormat, fmt.Sprintf("%.1fs", smp.Elapsed), smp.Phase, mib(smp.RSS), mib(smp.HeapLive),
		count(smp.Goroutines), count(smp.FDs), count(smp.Open), strconv.FormatInt(smp.Clients, 10),
		fmt.Sprintf("%.0f", smp.RecvPerSec), strconv.FormatInt(smp.Connects, 10), strconv.FormatInt(smp.Errors, 10), strconv.FormatInt(smp.Lost, 10)))
}

// finish fills in the totals and the verdict.
func (s *soakRun) finish() {
	r, o := s.r, s.o
	r.Connects, r.ConnectFailures = s.connects.Load(), s.connectFailures.Load()
	r.ChurnedClean, r.ChurnedVanished, r.ClosedAtEnd = s.churnClean.Load(), s.churnVanish.Load(), s.closedEnd.Load()
	r.ServerClosed, r.ConnLost, r.CloseUnanswered = s.serverClosed.Load(), s.connLost.Load(), s.closeUnanswered.Load()
	if len(s.serverCodes) > 0 {
		r.ServerCodes = s.serverCodes
	}
	r.EchoSent, r.EchoReplies, r.EchoAbandoned, r.EchoLost = s.echoSent.Load(), s.echoReplies.Load(), s.echoAbandoned.Load(), s.echoLost.Load()
	r.PublishSent, r.PublishAcked, r.PublishBusy = s.pubSent.Load(), s.pubAcked.Load(), s.pubBusy.Load()
	r.PublishAbandoned, r.PublishLost = s.pubAbandoned.Load(), s.pubLost.Load()
	r.APIPublished, r.APIBusy, r.APIFailed = s.apiPublished.Load(), s.apiBusy.Load(), s.apiFailed.Load()
	r.Received, r.Deliveries, r.APIDeliveries, r.ClientDeliveries = s.received.Load(), s.deliveries.Load(), s.apiDeliv.Load(), s.clientDeliv.Load()
	r.LostGaps, r.LostAtEnd, r.Unexpected, r.EpochResets = s.lostGaps.Load(), s.lostEnd.Load(), s.unexpected.Load(), s.epochResets.Load()
	r.PeakClients = s.peakClients.Load()
	r.Errors = s.errTotal.Load()
	s.errMu.Lock()
	if len(s.errKinds) > 0 {
		r.ErrorKinds, r.FirstErrors = s.errKinds, s.firstErrs
	}
	s.errMu.Unlock()
	s.peakMu.Lock()
	r.RSSPeak, r.HeapLivePeak, r.GoroutinesPeak, r.FDsPeak, r.PeakServerOpen = s.rssPeak, s.heapPeak, s.gorPeak, s.fdPeak, s.openPeak
	s.peakMu.Unlock()
	r.TotalSeconds = time.Since(s.began).Seconds()

	v := &r.Verdict
	lim := s.tolerances(r.Final)
	v.RSSLimit = fmt.Sprintf("baseline + history %.1f + max(%.0f MiB, %.0f%% of the peak growth) = %s MiB",
		lim.history/(1<<20), o.RSSTolerance/(1<<20), 100*o.RSSGrowthShare, mib(lim.rss))
	v.HeapLimit = fmt.Sprintf("baseline + history %.1f + max(%.0f MiB, %.0f B × %.0f peak connections) = %s MiB",
		lim.history/(1<<20), o.HeapTolerance/(1<<20), o.HeapPerConn, lim.peakConns, mib(lim.heap))
	// The memory verdict: wsd_go_heap_live_bytes measured by a collection
	// that ran after every connection had closed is what the server still
	// references, exactly: a leak shows there and nothing else does. RSS
	// also holds heap that is free but not yet returned: the runtime's
	// scavenger keeps about 10% over the heap goal, and the goal (twice
	// the live heap at the last GC with GOGC=100) only falls when a GC
	// runs, which in a server gone idle may be up to two minutes later
	// (the runtime's forced GC); pages also come back a chunk at a time.
	// So RSS judges only when no GC was seen in the settle time.
	if v.HeapJudged {
		v.MemoryBasis, v.MemoryOK = "heap live", v.HeapOK
	} else {
		v.MemoryBasis, v.MemoryOK = "rss (no GC ran after the close within the settle time)", v.RSSOK
	}
	v.DeliveryOK = r.LostGaps+r.LostAtEnd+r.EchoLost+r.PublishLost == 0 && r.Unexpected == 0
	v.ErrorsOK = r.Errors <= o.MaxErrors
	v.Complete = r.StoppedBy == "duration"
	var why []string
	for _, c := range []struct {
		ok   bool
		what string
	}{
		{v.Complete, "the traffic phase ended early (" + r.StoppedBy + ")"},
		{v.OpenOK, "the server's open connections did not return to the baseline"},
		{v.GoroutinesOK, "goroutines did not return to the baseline"},
		{v.FDsOK, "open fds did not return to the baseline"},
		{v.MemoryOK, "memory did not return to the baseline (" + v.MemoryBasis + ")"},
		{v.DeliveryOK, "messages were lost or unexpected"},
		{v.ErrorsOK, fmt.Sprintf("%d errors (at most %d allowed)", r.Errors, o.MaxErrors)},
	} {
		if !c.ok {
			why = append(why, c.what)
		}
	}
	v.Pass = len(why) == 0
	v.FailedBecause = strings.Join(why, "; ")
}

// Print writes the summary.
func (r *SoakResult) Print(w io.Writer) {
	v := r.Verdict
	ok := func(b bool) string {
		if b {
			return "ok"
		}
		return "NOT OK"
	}
	pid := strconv.Itoa(r.ServerPID)
	if r.ServerPID <= 0 {
		pid = "not known (RSS and fds from /metrics)"
	}
	fmt.Fprintf(w, "soak              %d clients on %d channels (%s0 … %s%d) of %s, %.1f s of traffic (stopped by %s); server pid %s\n",
		r.N, r.Channels, r.ChannelPrefix, r.ChannelPrefix, r.Channels-1, r.URL, r.PhaseSeconds, r.StoppedBy, pid)
	fmt.Fprintf(w, "asked             churn %.2f%%/s (%.0f%% vanish without a close frame), %.0f client messages/s (%.0f%% publish, the rest echo), %.0f API publications/s, %d B of data each\n",
		100*r.Churn, 100*r.Vanish, r.MsgRate, 100*r.PublishShare, r.BroadcastRate, r.Size)
	fmt.Fprintf(w, "ramp              %d clients in %.1f s (%d failed to open at first)\n", r.N, r.RampSeconds, r.RampFailed)
	fmt.Fprintf(w, "connects          %d (%d failed; peak %d clients connected at once)\n", r.Connects, r.ConnectFailures, r.PeakClients)
	fmt.Fprintf(w, "disconnects       %d: churn %d (%d clean, %d vanished), %d closed at the end, %d closed by the server%s, %d lost; %d of our close frames unanswered\n",
		r.ChurnedClean+r.ChurnedVanished+r.ClosedAtEnd+r.ServerClosed+r.ConnLost, r.ChurnedClean+r.ChurnedVanished, r.ChurnedClean, r.ChurnedVanished,
		r.ClosedAtEnd, r.ServerClosed, codes(r.ServerCodes), r.ConnLost, r.CloseUnanswered)
	fmt.Fprintf(w, "client messages   echo %d sent, %d replies (%d abandoned on churned connections, %d lost); publish %d sent, %d acked, %d SERVER_BUSY (%d abandoned, %d lost)\n",
		r.EchoSent, r.EchoReplies, r.EchoAbandoned, r.EchoLost, r.PublishSent, r.PublishAcked, r.PublishBusy, r.PublishAbandoned, r.PublishLost)
	fmt.Fprintf(w, "API publications  %d published, %d SERVER_BUSY, %d failed\n", r.APIPublished, r.APIBusy, r.APIFailed)
	rate := 0.0
	if r.PhaseSeconds > 0 {
		rate = float64(r.Received) / r.PhaseSeconds
	}
	fmt.Fprintf(w, "received          %d messages (%.0f/s over the phase): %d publications delivered (%d broadcast through the API, %d published by clients)\n",
		r.Received, rate, r.Deliveries, r.APIDeliveries, r.ClientDeliveries)
	fmt.Fprintf(w, "delivery          lost %d (%d skipped offsets, %d not received by the end); unexpected %d; stream restarts %d: %s\n",
		r.LostGaps+r.LostAtEnd, r.LostGaps, r.LostAtEnd, r.Unexpected, r.EpochResets, ok(v.DeliveryOK))
	fmt.Fprintf(w, "errors            %d%s\n", r.Errors, errorKinds(r.ErrorKinds, r.FirstErrors))
	fmt.Fprintf(w, "server RSS        baseline %s MiB, peak %s, end of traffic %s, final %s: final - baseline %s MiB (tolerance: %s): %s\n",
		mib(r.Baseline.RSS), mib(r.RSSPeak), mib(r.End.RSS), mib(r.Final.RSS), signedMiB(sub(r.Final.RSS, r.Baseline.RSS)), v.RSSLimit, ok(v.RSSOK))
	base := "live at last GC"
	if r.BaselineHeapAlloc {
		base = "allocated: no GC had run yet"
	}
	judged := "no GC ran after the close within the settle time: not judged"
	if v.HeapJudged {
		judged = fmt.Sprintf("a GC ran after the close: %s", ok(v.HeapOK))
	}
	fmt.Fprintf(w, "server heap live  baseline %s MiB (%s), peak %s, end of traffic %s, final %s: final - baseline %s MiB (tolerance: %s); %s\n",
		mib(r.BaselineHeap), base, mib(r.HeapLivePeak), mib(r.End.HeapLive), mib(r.Final.HeapLive), signedMiB(sub(r.Final.HeapLive, r.BaselineHeap)), v.HeapLimit, judged)
	fmt.Fprintf(w, "server goroutines baseline %s, peak %s, final %s: %s (tolerance +%d): %s\n",
		count(r.Baseline.Goroutines), count(r.GoroutinesPeak), count(r.Final.Goroutines), signed(sub(r.Final.Goroutines, r.Baseline.Goroutines)), r.GoroutineTolerance, ok(v.GoroutinesOK))
	fmt.Fprintf(w, "server open fds   baseline %s, peak %s, final %s: %s (tolerance +%d): %s\n",
		count(r.Baseline.FDs), count(r.FDsPeak), count(r.Final.FDs), signed(sub(r.Final.FDs, r.Baseline.FDs)), r.FDTolerance, ok(v.FDsOK))
	fmt.Fprintf(w, "server conns open baseline %s, peak %s, end of traffic %s, final %s; session slots %s at the end: %s\n",
		count(r.Baseline.Open), count(r.PeakServerOpen), count(r.End.Open), count(r.Final.Open), count(r.Final.Slots), ok(v.OpenOK))
	fmt.Fprintf(w, "settle            %.1f s after the close (%s); run %.1f s in all\n", r.SettleSeconds, r.Settled, r.TotalSeconds)
	if v.Pass {
		fmt.Fprintf(w, "verdict           PASS (memory judged on %s)\n", v.MemoryBasis)
	} else {
		fmt.Fprintf(w, "verdict           FAIL: %s\n", v.FailedBecause)
	}
}

func signed(p *float64) string {
	if p == nil {
		return "n/a"
	}
	return fmt.Sprintf("%+.0f", *p)
}

func codes(m map[string]int64) string {
	if len(m) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString(" (codes")
	for _, k := range slices.Sorted(maps.Keys(m)) {
		fmt.Fprintf(&b, " %s: %d", k, m[k])
	}
	b.WriteString(")")
	return b.String()
}

func errorKinds(kinds map[string]int64, first map[string]string) string {
	if len(kinds) == 0 {
		return ""
	}
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(kinds)) {
		fmt.Fprintf(&b, "\n  %-16s %d (first: %s)", k, kinds[k], first[k])
	}
	return b.String()
}
