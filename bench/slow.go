package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"

	"github.com/wsdproject/wsd/frame"
)

// SlowOptions describe a slow-consumer run: N clients that never read, a
// few fast readers and a broadcaster, all subscribed to one channel; the
// broadcaster publishes to it (as a client: the server must allow client
// publishing, wsd --allow-client-publish) while the fast readers check
// that they still get everything, with the server's memory sampled
// throughout.
type SlowOptions struct {
	URL         string        // ws://host:port/path of a running wsd's JSON protocol endpoint
	Admin       string        // http://host:port of its admin listener
	Channel     string        // the channel every client subscribes to and the broadcaster publishes to; "": SlowChannel
	N           int           // non-reading clients
	Readers     int           // fast readers
	Size        int           // bytes of each broadcast's data (a JSON string), at least 32
	Rate        float64       // broadcasts per second; 0: as fast as Window allows
	Window      int           // most broadcasts sent and not yet back at the broadcaster
	Count       int           // stop after this many broadcasts; 0: no limit
	Duration    time.Duration // length of the broadcast phase
	Interval    time.Duration // sample period
	Timeout     time.Duration // bound on the whole run
	MaxRSS      float64       // stop broadcasting once the server's RSS, plus what the broadcasts in flight may add, passes this many bytes; 0: half the host's memory; negative: never
	Source      net.IP        // first source address; connection k dials from Source + k/10000
	Concurrency int           // dials in flight while opening
	Progress    io.Writer     // live progress (nil: none)
	Terminal    bool          // Progress is a terminal: rewrite one line instead of printing lines
}

// SlowChannel is the channel of a slow run unless SlowOptions.Channel
// names another.
const SlowChannel = "bench"

// connsPerSource is how many connections dial from one source address:
// well inside one address's ephemeral port range towards one server.
const connsPerSource = 10000

// The series a slow run reads. Those the engine does not export (yet) are
// reported as absent ("n/a", null in JSON), never as zero.
const (
	seriesRSS               = "process_resident_memory_bytes"
	seriesCPU               = "process_cpu_seconds_total"
	seriesOpen              = "wsd_connections_open"
	seriesBuffered          = "wsd_outbound_buffered_bytes"
	seriesSlowClose         = `wsd_slow_consumer_total{action="close"}`
	seriesSlowDrop          = `wsd_slow_consumer_total{action="drop"}`
	seriesDroppedFrames     = `wsd_outbound_dropped_frames_total{reason="slow_consumer"}`
	seriesClosed1013        = `wsd_connections_closed_by_code_total{code="1013"}`
	seriesHeartbeatTimeouts = "wsd_heartbeat_timeouts_total"
	seriesHeapInuse         = "go_memstats_heap_inuse_bytes"
)

// SlowSample is one reading of the server (nil: metric absent) and of the
// run's own counters.
type SlowSample struct {
	Phase             string    `json:"phase"` // baseline, start, run, end, drained, released
	At                time.Time `json:"at"`
	Elapsed           float64   `json:"elapsed_seconds"` // since the broadcast phase began (0 before it)
	Sent              int64     `json:"broadcasts_sent"`
	Refused           int64     `json:"broadcasts_refused"` // answered SERVER_BUSY: not published
	ReadersMin        int64     `json:"fast_readers_min_received"`
	BroadcasterGot    int64     `json:"broadcaster_received"`
	RSS               *float64  `json:"server_rss_bytes"`
	HeapInuse         *float64  `json:"server_heap_inuse_bytes"`
	Buffered          *float64  `json:"server_outbound_buffered_bytes"`
	SlowClose         *float64  `json:"server_slow_consumer_close_total"`
	SlowDrop          *float64  `json:"server_slow_consumer_drop_total"`
	DroppedFrames     *float64  `json:"server_outbound_dropped_frames_total"`
	Closed1013        *float64  `json:"server_closed_1013_total"`
	HeartbeatTimeouts *float64  `json:"server_heartbeat_timeouts_total"`
	Open              *float64  `json:"server_connections_open"`
	CPUSeconds        *float64  `json:"server_cpu_seconds_total"`
	HostTCPMem        float64   `json:"host_tcp_mem_bytes"` // /proc/net/sockstat: kernel TCP buffers, both ends
	Err               string    `json:"error,omitempty"`
}

// NonReaderProbe is what the kernel says about the non-readers' sockets at
// the end of the broadcast phase, before they are closed.
type NonReaderProbe struct {
	Probed      int   `json:"probed"`
	Established int   `json:"established"`
	PeerFIN     int   `json:"peer_closed_fin"`   // CLOSE_WAIT: the server's FIN arrived
	PeerReset   int   `json:"peer_closed_reset"` // CLOSE: reset by the server
	Other       int   `json:"other_state"`
	UnreadBytes int64 `json:"unread_bytes"` // sitting in our receive buffers
}

// SlowResult is what a slow run saw. Counter figures are growths from the
// baseline to the drained sample; nil means the server does not export
// the metric.
type SlowResult struct {
	Channel             string         `json:"channel"`
	NonReaders          int            `json:"non_readers_opened"`
	NonReadersFailed    int            `json:"non_readers_failed"`
	FirstError          string         `json:"first_dial_error,omitempty"`
	Readers             int            `json:"fast_readers"`
	Size                int            `json:"data_bytes"`
	Rate                float64        `json:"rate_asked"`
	Window              int            `json:"window"`
	RampSeconds         float64        `json:"ramp_seconds"`
	PhaseSeconds        float64        `json:"phase_seconds"`
	Sent                int64          `json:"broadcasts_sent"`
	Acked               int64          `json:"broadcasts_acknowledged"` // published (the server's ack)
	Refused             int64          `json:"broadcasts_refused"`      // not published: SERVER_BUSY (the server was behind)
	StoppedBy           string         `json:"stopped_by"`
	ReaderReceived      []int64        `json:"fast_reader_received"`
	ReaderMissing       []int64        `json:"fast_reader_missing"`      // of those published
	ReaderOutOfOrder    []int64        `json:"fast_reader_out_of_order"` // at or before one already received
	ReaderClosed        []string       `json:"fast_reader_closed"`       // why a reader's connection ended early ("" if it did not)
	AllReadersComplete  bool           `json:"all_fast_readers_got_every_broadcast"`
	BroadcasterReceived int64          `json:"broadcaster_received"`
	RSSBaseline         *float64       `json:"server_rss_baseline_bytes"`
	RSSStart            *float64       `json:"server_rss_phase_start_bytes"`
	RSSEnd              *float64       `json:"server_rss_phase_end_bytes"`
	RSSPeak             *float64       `json:"server_rss_peak_bytes"`
	RSSGrowthMax        *float64       `json:"server_rss_max_growth_bytes"`
	RSSReleased         *float64       `json:"server_rss_after_close_bytes"`
	BufferedPeak        *float64       `json:"server_outbound_buffered_peak_bytes"`
	BufferedEnd         *float64       `json:"server_outbound_buffered_phase_end_bytes"`
	BufferedReleased    *float64       `json:"server_outbound_buffered_after_close_bytes"`
	SlowClose           *float64       `json:"slow_consumer_close"`
	SlowDrop            *float64       `json:"slow_consumer_drop"`
	DroppedFrames       *float64       `json:"dropped_frames"`
	Closed1013          *float64       `json:"closed_1013"`
	HeartbeatTimeouts   *float64       `json:"heartbeat_timeouts"`
	CPUSeconds          *float64       `json:"server_cpu_seconds_phase"`
	OpenStart           *float64       `json:"server_open_phase_start"`
	OpenEnd             *float64       `json:"server_open_drained"`
	OpenReleased        *float64       `json:"server_open_after_close"`
	HostTCPMemPeak      float64        `json:"host_tcp_mem_peak_bytes"`
	Probe               NonReaderProbe `json:"non_readers_at_end"`
	TotalSeconds        float64        `json:"total_seconds"`
	Samples             []SlowSample   `json:"samples"`
}

// fastReader reads everything its connection is sent and counts the run's
// publications (the messages with the run's tag), checking their order.
// The broadcaster's reader is one too, and also counts the answers to its
// publishes.
type fastReader struct {
	c        *wsClient
	received atomic.Int64 // the run's publications, each later than the one before
	disorder atomic.Int64 // the run's publications at or before one already received
	next     int64        // the sequence number expected next (reader goroutine only)
	onOwn    func()       // called for each of the run's publications (the broadcaster's window)
	pub      *publishAcks // the broadcaster's answers; nil for a fast reader
	closing  atomic.Bool  // we are closing it: its end is not an error
	started  bool         // run was started (by the goroutine that runs RunSlow)
	stopOnce sync.Once
	done     chan struct{}
	endErr   error // why it ended, if not by our close; set before done closes
}

// publishAcks counts the server's answers to the broadcaster's publishes.
type publishAcks struct {
	channel   string
	acked     atomic.Int64 // published
	refused   atomic.Int64 // SERVER_BUSY: not published, not retried
	onRefused func()       // called for each refusal (its slot in the window is free)
	failOnce  sync.Once
	failed    chan struct{} // closed at the first other error answer
	failErr   error         // that answer; set before failed closes
}

// answer counts msg if it answers one of the run's publishes (ids "p…").
func (a *publishAcks) answer(msg []byte) {
	if !bytes.HasPrefix(msg, []byte(`{"type":"ack"`)) && !bytes.HasPrefix(msg, []byte(`{"type":"error"`)) {
		return
	}
	var r slowReply
	if json.Unmarshal(msg, &r) != nil || !bytes.HasPrefix(r.ID, []byte(`"p`)) {
		return
	}
	switch {
	case r.Type == "ack":
		a.acked.Add(1)
	case r.Code == slowCodeBusy:
		a.refused.Add(1)
		if a.onRefused != nil {
			a.onRefused()
		}
	default:
		a.failOnce.Do(func() {
			a.failErr = slowRefusal("publish", a.channel, r)
			close(a.failed)
		})
	}
}

func (f *fastReader) run(needle []byte) {
	defer close(f.done)
	for {
		op, msg, err := f.c.readMessage()
		if err != nil {
			if !f.closing.Load() {
				if errors.Is(err, errPeerClosed) && f.c.closeCode != 0 {
					err = fmt.Errorf("%w with %d", err, f.c.closeCode)
				}
				f.endErr = err
			}
			return
		}
		if op != frame.OpText {
			continue
		}
		seq, ok := parseSeq(msg, needle)
		if !ok {
			if f.pub != nil {
				f.pub.answer(msg)
			}
			continue // someone else's message
		}
		if seq < f.next {
			f.disorder.Add(1)
		} else {
			f.next = seq + 1
			f.received.Add(1)
		}
		if f.onOwn != nil {
			f.onOwn()
		}
	}
}

// start starts the reader.
func (f *fastReader) start(needle []byte) {
	f.started = true
	go f.run(needle)
}

// stop closes the connection and waits for the reader, if started, to
// end; it may be called more than once.
func (f *fastReader) stop() {
	f.stopOnce.Do(func() {
		f.closing.Store(true)
		f.c.close()
	})
	if f.started {
		<-f.done
	}
}

// ended reports whether the reader's connection ended before we closed it.
func (f *fastReader) ended() bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

const seqDigits = 10

// parseSeq finds the run's tag (needle: `"<tag>:`) in msg and returns the
// sequence number that follows it.
func parseSeq(msg, needle []byte) (int64, bool) {
	i := bytes.Index(msg, needle)
	if i < 0 || len(msg) < i+len(needle)+seqDigits {
		return 0, false
	}
	var n int64
	for _, c := range msg[i+len(needle) : i+len(needle)+seqDigits] {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// publishMessage builds the client message
// {"type":"publish","channel":…,"id":"p<seq>","data":"<tag>:<seq>:xxx…"} whose data
// is size bytes, and returns it with the offsets of the two copies of the
// sequence digits (putSeq fills both).
func publishMessage(channel, tag string, size int) ([]byte, [2]int) {
	ch, _ := json.Marshal(channel)
	m := append([]byte(`{"type":"publish","channel":`), ch...)
	m = append(m, `,"id":"p`...)
	var at [2]int
	at[0] = len(m)
	m = append(m, strings.Repeat("0", seqDigits)+`","data":"`+tag+":"...)
	at[1] = len(m)
	m = append(m, strings.Repeat("0", seqDigits)+":"...)
	// data is `"` tag `:` digits `:` padding `"`
	m = append(m, strings.Repeat("x", size-(len(tag)+seqDigits+4))...)
	return append(m, `"}`...), at
}

func putSeq(m []byte, at [2]int, seq int64) {
	for i := seqDigits - 1; i >= 0; i-- {
		m[at[0]+i] = byte('0' + seq%10)
		m[at[1]+i] = m[at[0]+i]
		seq /= 10
	}
}

// slowReply is a server answer: an ack or an error.
type slowReply struct {
	Type    string          `json:"type"`
	ID      json.RawMessage `json:"id"`
	Code    string          `json:"code"`
	Message string          `json:"message"`
}

const (
	slowCodeBusy      = "SERVER_BUSY"
	slowCodeForbidden = "FORBIDDEN"
	slowCodeRate      = "RATE_LIMIT_EXCEEDED"
)

// slowRefusal is the error for an error answer to a subscribe or a
// publish, with what to do about the usual one.
func slowRefusal(what, channel string, r slowReply) error {
	err := fmt.Errorf("the server refused to %s on channel %q: %s: %s", what, channel, r.Code, r.Message)
	switch {
	case r.Code == slowCodeForbidden && what == "publish":
		return fmt.Errorf("%w; start wsd with --allow-client-publish (the broadcaster publishes as an anonymous client)", err)
	case r.Code == slowCodeForbidden:
		return fmt.Errorf("%w (the run's clients are anonymous: the channel must be a public one)", err)
	case r.Code == slowCodeRate:
		return fmt.Errorf("%w; start wsd with --max-messages-per-sec 0 --max-inbound-bytes-per-sec 0 (the broadcaster publishes from one connection)", err)
	}
	return err
}

// slowAnswer decodes msg if it is the answer to the request with id (a
// JSON string).
func slowAnswer(msg []byte, id string) (slowReply, bool) {
	var r slowReply
	if !bytes.HasPrefix(msg, []byte(`{"type":"ack"`)) && !bytes.HasPrefix(msg, []byte(`{"type":"error"`)) {
		return r, false
	}
	if json.Unmarshal(msg, &r) != nil || string(r.ID) != `"`+id+`"` {
		return r, false
	}
	return r, true
}

// slowRequest sends msg on c and reads (at most timeout) until the answer
// to id, skipping anything else; an error answer is an error. Only before
// c's reader starts.
func slowRequest(c *wsClient, msg []byte, what, channel, id string, timeout time.Duration) error {
	if err := c.write(frame.OpText, msg, timeout); err != nil {
		return err
	}
	c.conn.SetReadDeadline(time.Now().Add(timeout))
	defer c.conn.SetReadDeadline(time.Time{})
	for {
		_, p, err := c.readMessage()
		if err != nil {
			return fmt.Errorf("waiting for the answer to %s: %w", what, err)
		}
		if r, ok := slowAnswer(p, id); ok {
			if r.Type != "ack" {
				return slowRefusal(what, channel, r)
			}
			return nil
		}
	}
}

func subscribeMessage(channel string) []byte {
	ch, _ := json.Marshal(channel)
	return []byte(`{"type":"subscribe","channel":` + string(ch) + `,"id":"sub"}`)
}

// subscribeNonReader subscribes a non-reader's socket to channel and reads
// the ack, the one message it ever reads: frame by frame straight from the
// socket, so nothing after the ack is taken from the kernel's buffer.
func subscribeNonReader(conn *net.TCPConn, channel string) error {
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	defer conn.SetDeadline(time.Time{})
	if _, err := conn.Write(frame.AppendMaskedFrame(nil, true, frame.OpText, 0, clientMask, subscribeMessage(channel))); err != nil {
		return err
	}
	for {
		h, err := ws.ReadHeader(conn)
		if err != nil {
			return fmt.Errorf("waiting for the subscribe ack: %w", err)
		}
		if h.Length > 64<<10 {
			return fmt.Errorf("a %d-byte frame before the subscribe ack", h.Length)
		}
		p := make([]byte, h.Length)
		if _, err := io.ReadFull(conn, p); err != nil {
			return fmt.Errorf("waiting for the subscribe ack: %w", err)
		}
		if h.OpCode == frame.OpClose {
			return errors.New("closed by the server before the subscribe ack")
		}
		if h.OpCode != frame.OpText || !h.Fin {
			continue
		}
		if r, ok := slowAnswer(p, "sub"); ok {
			if r.Type != "ack" {
				return slowRefusal("subscribe", channel, r)
			}
			return nil
		}
	}
}

// slowRun is one run's state.
type slowRun struct {
	progressLine
	o       SlowOptions
	target  string
	path    string
	r       *SlowResult
	began   time.Time
	phase0  time.Time // start of the broadcast phase (zero before)
	sent    atomic.Int64
	readers []*fastReader
	bcast   *fastReader
	base    SlowSample
	start   SlowSample
	header  bool // the progress header is printed
}

// RunSlow runs the slow-consumer measurement against a running wsd.
func RunSlow(parent context.Context, o SlowOptions) (*SlowResult, error) {
	u, err := url.Parse(o.URL)
	if err != nil || u.Scheme != "ws" || u.Host == "" {
		return nil, fmt.Errorf("bad -url %q: want ws://host:port/path", o.URL)
	}
	switch {
	case o.N < 0 || o.Readers < 0:
		return nil, errors.New("-n and -readers must not be negative")
	case o.Size < 32 || o.Size > 16<<20:
		return nil, errors.New("-size must be 32 bytes to 16 MiB")
	case o.Rate < 0 || o.Count < 0:
		return nil, errors.New("-rate and -count must not be negative")
	case o.Window < 1 || o.Concurrency < 1:
		return nil, errors.New("-window and -concurrency must be positive")
	case o.Duration <= 0 || o.Interval <= 0 || o.Timeout <= 0:
		return nil, errors.New("-duration, -interval and -timeout must be positive")
	case o.Source == nil || o.Source.To4() == nil:
		return nil, errors.New("-source must be an IPv4 address")
	}
	if o.MaxRSS == 0 {
		o.MaxRSS = meminfoBytes("MemTotal") / 2
	}
	if o.Channel == "" {
		o.Channel = SlowChannel
	}
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil {
		if need := uint64(o.N + o.Readers + 64); need > rl.Cur {
			return nil, fmt.Errorf("%d connections need about %d file descriptors; this process may open %d: lower -n", o.N+o.Readers+1, need, rl.Cur)
		}
	}
	ctx, cancel := context.WithTimeout(parent, o.Timeout)
	defer cancel()
	s := &slowRun{progressLine: progressLine{o.Progress, o.Terminal}, o: o, target: u.Host, path: u.RequestURI(), began: time.Now(),
		r: &SlowResult{Channel: o.Channel, Readers: o.Readers, Size: o.Size, Rate: o.Rate, Window: o.Window}}

	s.base = s.sample(ctx, "baseline")
	if s.base.Err != "" {
		return nil, errors.New(s.base.Err)
	}
	s.keep(s.base)
	if s.base.Open != nil && *s.base.Open > 0 {
		fmt.Fprintf(os.Stderr, "wsbench: note: the server already has %.0f connections open; those subscribed to %q get the broadcasts too\n", *s.base.Open, o.Channel)
	}

	// The broadcaster first: it subscribes and publishes a check message, so
	// that a server that does not let clients publish is caught at once. Then
	// the non-readers, then the fast readers, each subscribed (the ack
	// read) before the next step.
	tag := fmt.Sprintf("%08x", rand.Uint32())
	needle := []byte(`"` + tag + ":")
	tokens := make(chan struct{}, o.Window)
	defer func() {
		for _, f := range s.readers {
			f.stop()
		}
		if s.bcast != nil {
			s.bcast.stop()
		}
	}()
	bc, err := s.openReader(ctx)
	if err != nil {
		return nil, fmt.Errorf("open the broadcaster: %w", err)
	}
	s.bcast = bc
	check, _ := json.Marshal(map[string]any{"type": "publish", "channel": o.Channel, "id": "check", "data": map[string]string{"wsbench": "slow check"}})
	if err := slowRequest(bc.c, check, "publish", o.Channel, "check", 10*time.Second); err != nil {
		return nil, fmt.Errorf("the broadcaster's first publish: %w", err)
	}
	bc.onOwn = func() {
		select {
		case <-tokens:
		default:
		}
	}
	bc.pub = &publishAcks{channel: o.Channel, onRefused: bc.onOwn, failed: make(chan struct{})}
	nonReaders, err := s.openNonReaders(ctx)
	defer func() {
		for _, c := range nonReaders {
			if c != nil {
				c.Close()
			}
		}
	}()
	if err != nil {
		return nil, err
	}
	for range o.Readers {
		f, err := s.openReader(ctx)
		if err != nil {
			return nil, fmt.Errorf("open a fast reader: %w", err)
		}
		s.readers = append(s.readers, f)
	}
	for _, f := range append([]*fastReader{s.bcast}, s.readers...) {
		f.start(needle)
	}
	s.r.RampSeconds = time.Since(s.began).Seconds()
	s.r.ReaderClosed = make([]string, o.Readers)

	s.broadcastPhase(ctx, parent, tag, tokens)
	s.drain(ctx)
	final := s.sample(context.Background(), "drained")
	s.keep(final)
	s.r.Probe = probeNonReaders(nonReaders)
	for _, c := range nonReaders {
		if c != nil {
			c.Close() // unread data makes this a reset: the server learns at once
		}
	}
	nonReaders = nil
	for i, f := range s.readers {
		if f.ended() && f.endErr != nil {
			s.r.ReaderClosed[i] = f.endErr.Error()
		}
		f.stop()
	}
	s.bcast.stop()
	released := s.released(ctx)
	s.finish(final, released)
	return s.r, nil
}

// openReader opens a reading client (a fast reader or the broadcaster) and
// subscribes it to the channel; its reader is not started.
func (s *slowRun) openReader(ctx context.Context) (*fastReader, error) {
	conn, err := dialUpgraded(ctx, s.target, s.path, s.o.Source)
	if err != nil {
		return nil, err
	}
	f := &fastReader{c: newWSClient(conn), done: make(chan struct{})}
	if err := slowRequest(f.c, subscribeMessage(s.o.Channel), "subscribe", s.o.Channel, "sub", 10*time.Second); err != nil {
		conn.Close()
		return nil, err
	}
	return f, nil
}

// openNonReaders opens the non-reading clients: plain blocking sockets
// that, after the upgrade, subscribe to the channel, read the ack and
// then never read again, no goroutine each. It goes on if some fail (the
// server may refuse some), but not if all do.
func (s *slowRun) openNonReaders(ctx context.Context) ([]*net.TCPConn, error) {
	o := s.o
	conns := make([]*net.TCPConn, o.N)
	pool := startOpenPool(ctx, o.N, o.Concurrency, func(k int) error {
		c, err := dialUpgraded(ctx, s.target, s.path, addIP(o.Source, k/connsPerSource))
		if err != nil {
			return err
		}
		if err := subscribeNonReader(c, o.Channel); err != nil {
			c.Close()
			return err
		}
		conns[k] = c
		return nil
	})
	opened, failed := &pool.opened, &pool.failed
	tick := time.NewTicker(s.progressPeriod())
	defer tick.Stop()
	ramp := func() {
		s.progress(fmt.Sprintf("ramp %6.1fs  opened %d/%d  failed %d", time.Since(s.began).Seconds(), opened.Load(), o.N, failed.Load()))
	}
	for waiting := true; waiting; {
		select {
		case <-pool.done:
			waiting = false
		case <-tick.C:
			ramp()
		}
	}
	ramp()
	s.endProgress()
	firstErr := pool.firstErr()
	s.r.NonReaders, s.r.NonReadersFailed = int(opened.Load()), int(failed.Load())
	if firstErr != nil {
		s.r.FirstError = firstErr.Error()
	}
	if err := ctx.Err(); err != nil {
		return conns, fmt.Errorf("opening the non-readers: %w (%d of %d open)", err, opened.Load(), o.N)
	}
	if o.N > 0 && opened.Load() == 0 {
		return conns, fmt.Errorf("no non-reader could connect: %v", firstErr)
	}
	if failed.Load() > 0 {
		fmt.Fprintf(os.Stderr, "wsbench: note: %d of %d non-readers failed to connect (first: %v); going on with %d\n", failed.Load(), o.N, firstErr, opened.Load())
	}
	return conns, nil
}

// broadcastPhase sends broadcasts until Duration, Count, MaxRSS, the
// timeout or an interrupt ends it, sampling the server meanwhile.
func (s *slowRun) broadcastPhase(ctx, parent context.Context, tag string, tokens chan struct{}) {
	o := s.o
	s.phase0 = time.Now()
	s.start = s.sample(ctx, "start")
	s.keep(s.start)
	s.printHeader()
	s.progress(s.line(s.start))

	phaseCtx, stopPhase := context.WithCancel(ctx)
	defer stopPhase()
	senderDone := make(chan string, 1)
	go func() { senderDone <- s.send(phaseCtx, tag, tokens) }()

	phaseEnd := time.NewTimer(o.Duration)
	defer phaseEnd.Stop()
	guard := min(o.Interval, 250*time.Millisecond)
	tick := time.NewTicker(guard)
	defer tick.Stop()
	last := s.phase0
	senderExited := false
	stopped := ""
	for stopped == "" {
		select {
		case <-phaseEnd.C:
			stopped = "duration"
		case reason := <-senderDone:
			stopped, senderExited = reason, true
		case <-ctx.Done():
			stopped = "timeout"
			if parent.Err() != nil {
				stopped = "interrupted"
			}
		case now := <-tick.C:
			// Every tick checks the server's RSS against MaxRSS; a sample
			// is kept (and printed) once per Interval.
			smp := s.sample(ctx, "run")
			// A server that queues every broadcast for every subscriber
			// will still queue the broadcasts on their way (sent, not
			// refused, not yet back at the broadcaster) after we stop:
			// count them in.
			var rss, pending float64
			if smp.RSS != nil {
				rss = *smp.RSS
				pending = float64(max(smp.Sent-smp.Refused-smp.BroadcasterGot, 0)) * float64(s.r.NonReaders+o.Readers+1) * float64(o.Size+128)
			}
			over := o.MaxRSS > 0 && smp.RSS != nil && rss+pending > o.MaxRSS
			if over || now.Sub(last) >= o.Interval-guard/2 {
				last = now
				s.keep(smp)
			}
			if over {
				stopped = fmt.Sprintf("max-rss (server RSS %.0f MiB + up to %.0f MiB for the broadcasts in flight > %.0f MiB)",
					rss/(1<<20), pending/(1<<20), o.MaxRSS/(1<<20))
			}
		}
	}
	stopPhase()
	if !senderExited {
		s.bcast.c.conn.SetWriteDeadline(time.Now()) // unblock a write stuck on a server that stopped reading
		if reason := <-senderDone; reason != "" && reason != "stopped" {
			stopped += "; then " + reason
		}
	}
	s.r.StoppedBy = stopped
	s.r.PhaseSeconds = time.Since(s.phase0).Seconds()
	end := s.sample(context.Background(), "end")
	s.keep(end)
	s.endProgress()
}

// send is the broadcaster: it paces broadcasts (publishes) at Rate, keeps
// at most Window of them on their way back to itself, and returns why it
// stopped. A publish the server refuses as SERVER_BUSY is not retried (its
// number is skipped: the readers expect only what was published); the
// broadcaster pauses 50 ms after one. Any other error answer ends the run.
func (s *slowRun) send(ctx context.Context, tag string, tokens chan struct{}) string {
	o := s.o
	acks := s.bcast.pub
	msg, at := publishMessage(o.Channel, tag, o.Size)
	var refused int64
	var period time.Duration
	if o.Rate > 0 {
		period = time.Duration(float64(time.Second) / o.Rate)
	}
	next := time.Now()
	timer := time.NewTimer(0)
	<-timer.C
	for seq := int64(0); o.Count == 0 || seq < int64(o.Count); seq++ {
		if period > 0 {
			now := time.Now()
			if d := next.Sub(now); d > 0 {
				timer.Reset(d)
				select {
				case <-timer.C:
				case <-ctx.Done():
					return "stopped"
				}
			} else if -d > period {
				next = now // behind (the window held us): no burst to catch up
			}
			next = next.Add(period)
		}
		if n := acks.refused.Load(); n > refused {
			refused = n
			timer.Reset(50 * time.Millisecond)
			select {
			case <-timer.C:
			case <-ctx.Done():
				return "stopped"
			}
		}
		select {
		case tokens <- struct{}{}:
		case <-ctx.Done():
			return "stopped"
		case <-s.bcast.done:
			return fmt.Sprintf("broadcaster's connection ended: %v", s.bcast.endErr)
		case <-acks.failed:
			return acks.failErr.Error()
		}
		if ctx.Err() != nil {
			return "stopped"
		}
		putSeq(msg, at, seq)
		if err := s.bcast.c.write(frame.OpText, msg, 10*time.Second); err != nil {
			if ctx.Err() != nil {
				return "stopped"
			}
			return fmt.Sprintf("broadcaster's write failed: %v", err)
		}
		s.sent.Add(1)
	}
	return "count"
}

// drain waits (at most 10 s) for the broadcaster to have an answer to
// every publish, and for it and the fast readers to receive every
// broadcast published.
func (s *slowRun) drain(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		sent, refused := s.sent.Load(), s.bcast.pub.refused.Load()
		behind := !s.bcast.ended() && s.bcast.pub.acked.Load()+refused < sent
		for _, f := range append([]*fastReader{s.bcast}, s.readers...) {
			if !f.ended() && f.received.Load() < sent-refused {
				behind = true
			}
		}
		if !behind {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// released waits (at most 3 s) after our sockets closed for the server to
// count them closed, and samples it.
func (s *slowRun) released(ctx context.Context) SlowSample {
	var smp SlowSample
	deadline := time.Now().Add(3 * time.Second)
	for {
		smp = s.sample(context.Background(), "released")
		if ctx.Err() != nil || time.Now().After(deadline) || smp.Open == nil || s.base.Open == nil || *smp.Open <= *s.base.Open {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.keep(smp)
	return smp
}

// sample scrapes the server and reads the run's counters.
func (s *slowRun) sample(ctx context.Context, phase string) SlowSample {
	smp := SlowSample{Phase: phase, At: time.Now(), Sent: s.sent.Load()}
	if !s.phase0.IsZero() {
		smp.Elapsed = smp.At.Sub(s.phase0).Seconds()
	}
	smp.ReadersMin = -1
	for _, f := range s.readers {
		if n := f.received.Load(); smp.ReadersMin < 0 || n < smp.ReadersMin {
			smp.ReadersMin = n
		}
	}
	if smp.ReadersMin < 0 {
		smp.ReadersMin = 0
	}
	if s.bcast != nil {
		smp.BroadcasterGot = s.bcast.received.Load()
		if s.bcast.pub != nil {
			smp.Refused = s.bcast.pub.refused.Load()
		}
	}
	_, smp.HostTCPMem = sockstatTCP()
	m, err := ScrapeMetrics(ctx, s.o.Admin, 5*time.Second)
	if err != nil {
		smp.Err = err.Error()
		return smp
	}
	smp.RSS = m.Get(seriesRSS)
	smp.HeapInuse = m.Get(seriesHeapInuse)
	smp.Buffered = m.Get(seriesBuffered)
	smp.SlowClose = m.Get(seriesSlowClose)
	smp.SlowDrop = m.Get(seriesSlowDrop)
	smp.DroppedFrames = m.Get(seriesDroppedFrames)
	smp.Closed1013 = m.Get(seriesClosed1013)
	smp.HeartbeatTimeouts = m.Get(seriesHeartbeatTimeouts)
	smp.Open = m.Get(seriesOpen)
	smp.CPUSeconds = m.Get(seriesCPU)
	return smp
}

// keep records a sample and shows it.
func (s *slowRun) keep(smp SlowSample) {
	s.r.Samples = append(s.r.Samples, smp)
	if smp.Phase == "run" || smp.Phase == "end" {
		s.progress(s.line(smp))
	}
}

func (s *slowRun) progressPeriod() time.Duration {
	if s.o.Terminal {
		return min(s.o.Interval, 250*time.Millisecond)
	}
	return s.o.Interval
}

const lineFormat = "%7s %7s %9s %9s %9s %9s %7s %7s %8s %6s %15s"

func (s *slowRun) printHeader() {
	if s.o.Progress == nil || s.header {
		return
	}
	s.header = true
	fmt.Fprintf(s.o.Progress, lineFormat+"\n", "time", "sent", "rss MiB", "growth", "buf MiB", "kTCP MiB", "sc-cls", "sc-drop", "dropped", "open", "readers got")
}

// line formats a sample as a progress line; counters are growths since
// the baseline.
func (s *slowRun) line(smp SlowSample) string {
	if smp.Err != "" {
		return fmt.Sprintf("%6.1fs %7d  scrape failed: %s", smp.Elapsed, smp.Sent, smp.Err)
	}
	return fmt.Sprintf(lineFormat, fmt.Sprintf("%.1fs", smp.Elapsed), fmt.Sprint(smp.Sent),
		mib(smp.RSS), signedMiB(sub(smp.RSS, s.start.RSS)), mib(smp.Buffered), mib(&smp.HostTCPMem),
		count(sub(smp.SlowClose, s.base.SlowClose)), count(sub(smp.SlowDrop, s.base.SlowDrop)),
		count(sub(smp.DroppedFrames, s.base.DroppedFrames)), count(smp.Open),
		fmt.Sprintf("%d/%d", smp.ReadersMin, smp.Sent-smp.Refused))
}

// finish computes the result's summary figures.
func (s *slowRun) finish(final, released SlowSample) {
	r := s.r
	r.Sent = s.sent.Load()
	r.Acked, r.Refused = s.bcast.pub.acked.Load(), s.bcast.pub.refused.Load()
	// Every publish answered, and every reader got, in order, as many of
	// the run's publications as were published: exactly those, since the
	// refused ones are never delivered.
	published := r.Sent - r.Refused
	r.AllReadersComplete = r.Acked == published
	for i, f := range s.readers {
		n, disorder := f.received.Load(), f.disorder.Load()
		r.ReaderReceived = append(r.ReaderReceived, n)
		r.ReaderMissing = append(r.ReaderMissing, max(published-n, 0))
		r.ReaderOutOfOrder = append(r.ReaderOutOfOrder, disorder)
		if n != published || disorder != 0 || r.ReaderClosed[i] != "" {
			r.AllReadersComplete = false
		}
	}
	r.BroadcasterReceived = final.BroadcasterGot
	r.RSSBaseline, r.RSSStart, r.RSSReleased = s.base.RSS, s.start.RSS, released.RSS
	r.BufferedReleased = released.Buffered
	r.OpenStart, r.OpenEnd, r.OpenReleased = s.start.Open, final.Open, released.Open
	for _, smp := range r.Samples {
		if smp.Phase == "end" {
			r.RSSEnd, r.BufferedEnd = smp.RSS, smp.Buffered
		}
		if smp.Phase != "baseline" {
			r.RSSPeak = maxOpt(r.RSSPeak, smp.RSS)
			r.BufferedPeak = maxOpt(r.BufferedPeak, smp.Buffered)
		}
		r.HostTCPMemPeak = max(r.HostTCPMemPeak, smp.HostTCPMem)
	}
	r.RSSGrowthMax = sub(r.RSSPeak, s.start.RSS)
	r.SlowClose = sub(final.SlowClose, s.base.SlowClose)
	r.SlowDrop = sub(final.SlowDrop, s.base.SlowDrop)
	r.DroppedFrames = sub(final.DroppedFrames, s.base.DroppedFrames)
	r.Closed1013 = sub(final.Closed1013, s.base.Closed1013)
	r.HeartbeatTimeouts = sub(final.HeartbeatTimeouts, s.base.HeartbeatTimeouts)
	var endCPU *float64
	for _, smp := range r.Samples {
		if smp.Phase == "end" {
			endCPU = smp.CPUSeconds
		}
	}
	r.CPUSeconds = sub(endCPU, s.start.CPUSeconds)
	r.TotalSeconds = time.Since(s.began).Seconds()
}

// probeNonReaders asks the kernel about each non-reader's socket: its TCP
// state (did the server's FIN or reset arrive?) and its unread bytes.
func probeNonReaders(conns []*net.TCPConn) NonReaderProbe {
	const (
		tcpEstablished = 1
		tcpClose       = 7
		tcpCloseWait   = 8
	)
	var p NonReaderProbe
	for _, c := range conns {
		if c == nil {
			continue
		}
		rc, err := c.SyscallConn()
		if err != nil {
			continue
		}
		var state uint8
		var unread int
		var serr error
		if err := rc.Control(func(fd uintptr) {
			var info *unix.TCPInfo
			info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
			if serr == nil {
				state = info.State
			}
			unread, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		}); err != nil || serr != nil {
			continue
		}
		p.Probed++
		p.UnreadBytes += int64(unread)
		switch state {
		case tcpEstablished:
			p.Established++
		case tcpCloseWait:
			p.PeerFIN++
		case tcpClose:
			p.PeerReset++
		default:
			p.Other++
		}
	}
	return p
}

// Print writes the result as a table.
func (r *SlowResult) Print(w io.Writer) {
	rate := 0.0
	if r.PhaseSeconds > 0 {
		rate = float64(r.Sent) / r.PhaseSeconds
	}
	asked := "as fast as the window allows"
	if r.Rate > 0 {
		asked = fmt.Sprintf("%.0f/s asked", r.Rate)
	}
	fmt.Fprintf(w, "clients                        %d non-readers (%d failed to open), %d fast readers, 1 broadcaster, all on channel %q; ramp %.1f s\n",
		r.NonReaders, r.NonReadersFailed, r.Readers, r.Channel, r.RampSeconds)
	fmt.Fprintf(w, "broadcasts                     %d of %d data bytes in %.1f s: %.1f/s (%s, window %d); stopped by %s\n",
		r.Sent, r.Size, r.PhaseSeconds, rate, asked, r.Window, r.StoppedBy)
	fmt.Fprintf(w, "published                      %d acknowledged, %d refused (SERVER_BUSY: the server was behind)\n", r.Acked, r.Refused)
	lo, hi := int64(-1), int64(0)
	var missing, disorder int64
	for i, n := range r.ReaderReceived {
		if lo < 0 || n < lo {
			lo = n
		}
		hi = max(hi, n)
		missing += r.ReaderMissing[i]
		disorder += r.ReaderOutOfOrder[i]
	}
	lo = max(lo, 0)
	verdict := "NO"
	if r.AllReadersComplete {
		verdict = "yes"
	}
	fmt.Fprintf(w, "every fast reader got all      %s (received %d to %d of %d published; %d missing, %d out of order; broadcaster got %d back)\n",
		verdict, lo, hi, r.Sent-r.Refused, missing, disorder, r.BroadcasterReceived)
	for i, why := range r.ReaderClosed {
		if why != "" {
			fmt.Fprintf(w, "  fast reader %d ended early:   %s\n", i, why)
		}
	}
	fmt.Fprintf(w, "server RSS                     baseline %s, phase start %s, phase end %s MiB\n", mib(r.RSSBaseline), mib(r.RSSStart), mib(r.RSSEnd))
	fmt.Fprintf(w, "server RSS peak                %s MiB (max growth since the phase began %s MiB); %s MiB after our sockets closed\n",
		mib(r.RSSPeak), signedMiB(r.RSSGrowthMax), mib(r.RSSReleased))
	fmt.Fprintf(w, "server outbound buffered       peak %s, phase end %s, after close %s MiB\n", mib(r.BufferedPeak), mib(r.BufferedEnd), mib(r.BufferedReleased))
	fmt.Fprintf(w, "slow-consumer actions          close %s, drop %s; connections closed with 1013: %s\n", count(r.SlowClose), count(r.SlowDrop), count(r.Closed1013))
	fmt.Fprintf(w, "dropped frames (slow consumer) %s\n", count(r.DroppedFrames))
	fmt.Fprintf(w, "heartbeat timeouts             %s\n", count(r.HeartbeatTimeouts))
	cpu := "n/a"
	if r.CPUSeconds != nil && r.PhaseSeconds > 0 {
		cpu = fmt.Sprintf("%.1f s (%.0f%% of one core over the phase)", *r.CPUSeconds, 100**r.CPUSeconds/r.PhaseSeconds)
	}
	fmt.Fprintf(w, "server CPU during the phase    %s\n", cpu)
	fmt.Fprintf(w, "server connections open        %s at phase start, %s after the drain, %s after our sockets closed\n", count(r.OpenStart), count(r.OpenEnd), count(r.OpenReleased))
	p := r.Probe
	fmt.Fprintf(w, "non-readers' sockets at end    %d probed: %d closed by the server (%d FIN, %d reset), %d established, %d other; %.1f MiB unread in their receive buffers\n",
		p.Probed, p.PeerFIN+p.PeerReset, p.PeerFIN, p.PeerReset, p.Established, p.Other, float64(p.UnreadBytes)/(1<<20))
	fmt.Fprintf(w, "host TCP buffer memory peak    %.1f MiB (kernel, both ends)\n", r.HostTCPMemPeak/(1<<20))
	fmt.Fprintf(w, "run                            %.1f s in all\n", r.TotalSeconds)
}

func sub(a, b *float64) *float64 {
	if a == nil || b == nil {
		return nil
	}
	v := *a - *b
	return &v
}

func maxOpt(a, b *float64) *float64 {
	if a == nil {
		return b
	}
	if b == nil || *a >= *b {
		return a
	}
	return b
}

func mib(p *float64) string {
	if p == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.1f", *p/(1<<20))
}

func signedMiB(p *float64) string {
	if p == nil {
		return "n/a"
	}
	return fmt.Sprintf("%+.1f", *p/(1<<20))
}

func count(p *float64) string {
	if p == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.0f", *p)
}
