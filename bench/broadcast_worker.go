package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/wsdproject/wsd/frame"
)

// The servers a broadcast run can measure. Each has its own client
// protocol (how a subscriber subscribes and how publications arrive) and
// its own publish API.
const (
	TargetWsd        = "wsd"
	TargetCentrifugo = "centrifugo"
)

// seqMarker starts every publication's data: {"seq":N,"t":UNIXNANOS,"pad":"xxx…"}.
var (
	seqMarker = []byte(`{"seq":`)
	tMarker   = []byte(`,"t":`)
)

// parsePublication finds the run's publication data in one server message
// (wsd: the "data" of a "message"; Centrifugo: the "data" of a push's
// "pub") and returns its sequence number and publish time (Unix ns).
func parsePublication(msg []byte) (seq, sent int64, ok bool) {
	i := bytes.Index(msg, seqMarker)
	if i < 0 {
		return 0, 0, false
	}
	rest := msg[i+len(seqMarker):]
	seq, n := parseDigits(rest)
	if n == 0 {
		return 0, 0, false
	}
	rest = rest[n:]
	if !bytes.HasPrefix(rest, tMarker) {
		return 0, 0, false
	}
	sent, n = parseDigits(rest[len(tMarker):])
	if n == 0 {
		return 0, 0, false
	}
	return seq, sent, true
}

// parseDigits reads a non-negative decimal int64 at the start of b; n is
// 0 when there is none (or it overflows).
func parseDigits(b []byte) (v int64, n int) {
	for n < len(b) && b[n] >= '0' && b[n] <= '9' {
		d := int64(b[n] - '0')
		if v > (math.MaxInt64-d)/10 {
			return 0, 0
		}
		v = v*10 + d
		n++
	}
	return v, n
}

// latency histogram: log-linear buckets of microseconds, 32 per power of
// two (at most 1/32 apart, so a bucket's midpoint is within 1.6% of any
// value in it); values below 32 µs are exact.
const (
	histSub     = 32
	histBuckets = histSub * 60
)

func histIndex(us int64) int {
	if us < histSub {
		return int(max(us, 0))
	}
	shift := bits.Len64(uint64(us)) - 6
	return min(histSub*(shift+1)+int(uint64(us)>>shift)-histSub, histBuckets-1)
}

// histRange returns the smallest and largest value of bucket i.
func histRange(i int) (lo, hi int64) {
	if i < histSub {
		return int64(i), int64(i)
	}
	shift := i/histSub - 1
	lo = int64(histSub+i%histSub) << shift
	return lo, lo + 1<<shift - 1
}

// histPercentile returns the nearest-rank p-th percentile (0 < p <= 100) of
// the histogram h as its bucket's midpoint, in µs, and false when h is empty.
func histPercentile(h []int64, p float64) (float64, bool) {
	var total int64
	for _, n := range h {
		total += n
	}
	if total == 0 {
		return 0, false
	}
	rank := int64(ceilRank(p, int(total)))
	var cum int64
	for i, n := range h {
		cum += n
		if cum >= rank {
			lo, hi := histRange(i)
			return float64(lo+hi) / 2, true
		}
	}
	return 0, false // unreachable
}

// ceilRank is the nearest rank of the p-th percentile among n values: a
// 1-based index, ceil(p/100 × n), at least 1.
func ceilRank(p float64, n int) int {
	r := int(p / 100 * float64(n))
	if float64(r) < p/100*float64(n) {
		r++
	}
	return min(max(r, 1), n)
}

// percentile returns the nearest-rank p-th percentile of sorted values.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[ceilRank(p, len(sorted))-1]
}

// fanoutStats is one client process's tally of a broadcast run: per
// publication, how many deliveries and the first and last arrival; per
// subscriber (in subscriber), which publications it got. Event loops
// update it concurrently: the per-publication counters are atomics, each
// subscriber is touched only by the loop that serves its connection.
type fanoutStats struct {
	count   int
	n       []atomic.Int64 // deliveries of seq, duplicates included
	first   []atomic.Int64 // earliest arrival of seq (Unix ns; 0: none)
	last    []atomic.Int64 // latest arrival of seq
	hist    [histBuckets]atomic.Int64
	foreign atomic.Int64 // data messages that are none of the run's publications
}

func newFanoutStats(count int) *fanoutStats {
	return &fanoutStats{count: count, n: make([]atomic.Int64, count), first: make([]atomic.Int64, count), last: make([]atomic.Int64, count)}
}

// subscriber is one subscribed connection's record.
type subscriber struct {
	got  []uint64 // bit seq: publication seq arrived
	max  int64    // highest seq arrived (-1: none)
	recv int64
	dup  int64 // arrivals of a seq that had arrived already
	ooo  int64 // arrivals of a seq lower than one that had arrived already
	frag []byte
}

func newSubscriber(count int) *subscriber {
	return &subscriber{got: make([]uint64, (count+63)/64), max: -1}
}

// deliver records that s received publication seq, published at sent,
// at arrival (both Unix ns).
func (f *fanoutStats) deliver(s *subscriber, seq, sent, arrival int64) {
	if seq < 0 || seq >= int64(f.count) {
		f.foreign.Add(1)
		return
	}
	s.recv++
	w, b := seq>>6, uint64(1)<<(seq&63)
	switch {
	case s.got[w]&b != 0:
		s.dup++
	case seq < s.max:
		s.ooo++
	}
	s.got[w] |= b
	s.max = max(s.max, seq)
	f.n[seq].Add(1)
	for {
		old := f.first[seq].Load()
		if (old != 0 && old <= arrival) || f.first[seq].CompareAndSwap(old, arrival) {
			break
		}
	}
	for {
		old := f.last[seq].Load()
		if old >= arrival || f.last[seq].CompareAndSwap(old, arrival) {
			break
		}
	}
	f.hist[histIndex((arrival-sent)/1000)].Add(1)
}

// received is the deliveries so far, duplicates included.
func (f *fanoutStats) received() int64 {
	var n int64
	for i := range f.n {
		n += f.n[i].Load()
	}
	return n
}

// fanoutFinal is a client process's final tally, merged over processes by
// the coordinator. Missing and Complete count only the publications that
// were published (the coordinator names those that failed).
type fanoutFinal struct {
	Subscribers int64   `json:"subscribers"`
	Received    int64   `json:"received"`
	Duplicates  int64   `json:"duplicates"`
	OutOfOrder  int64   `json:"out_of_order"`
	Missing     int64   `json:"missing"`
	Unexpected  int64   `json:"unexpected"` // deliveries of a publication that failed to publish
	Foreign     int64   `json:"foreign"`
	Complete    int64   `json:"complete_subscribers"` // got every publication once, in order
	SeqCount    []int64 `json:"seq_count"`
	SeqFirst    []int64 `json:"seq_first"`
	SeqLast     []int64 `json:"seq_last"`
	Hist        []int64 `json:"hist"`
}

// final tallies the subscribers against the publications published
// (unpublished: the sequence numbers that failed to publish).
func (f *fanoutStats) final(subs []*subscriber, unpublished []int) fanoutFinal {
	skip := make([]uint64, (f.count+63)/64)
	for _, q := range unpublished {
		if q >= 0 && q < f.count {
			skip[q>>6] |= 1 << (q & 63)
		}
	}
	published := int64(f.count - popcount(skip))
	r := fanoutFinal{
		Foreign:  f.foreign.Load(),
		SeqCount: make([]int64, f.count), SeqFirst: make([]int64, f.count), SeqLast: make([]int64, f.count),
		Hist: make([]int64, histBuckets),
	}
	for i := range f.count {
		r.SeqCount[i], r.SeqFirst[i], r.SeqLast[i] = f.n[i].Load(), f.first[i].Load(), f.last[i].Load()
	}
	for i := range r.Hist {
		r.Hist[i] = f.hist[i].Load()
	}
	for _, s := range subs {
		if s == nil {
			continue
		}
		r.Subscribers++
		r.Received += s.recv
		r.Duplicates += s.dup
		r.OutOfOrder += s.ooo
		var got, unexpected int64
		for w := range s.got {
			got += int64(bits.OnesCount64(s.got[w] &^ skip[w]))
			unexpected += int64(bits.OnesCount64(s.got[w] & skip[w]))
		}
		r.Missing += published - got
		r.Unexpected += unexpected
		if got == published && unexpected == 0 && s.dup == 0 && s.ooo == 0 {
			r.Complete++
		}
	}
	return r
}

func popcount(b []uint64) int {
	n := 0
	for _, w := range b {
		n += bits.OnesCount64(w)
	}
	return n
}

// merge adds another process's tally to r.
func (r *fanoutFinal) merge(o fanoutFinal) {
	r.Subscribers += o.Subscribers
	r.Received += o.Received
	r.Duplicates += o.Duplicates
	r.OutOfOrder += o.OutOfOrder
	r.Missing += o.Missing
	r.Unexpected += o.Unexpected
	r.Foreign += o.Foreign
	r.Complete += o.Complete
	grow := func(a []int64, n int) []int64 {
		if len(a) < n {
			a = append(a, make([]int64, n-len(a))...)
		}
		return a
	}
	r.SeqCount = grow(r.SeqCount, len(o.SeqCount))
	r.SeqFirst = grow(r.SeqFirst, len(o.SeqFirst))
	r.SeqLast = grow(r.SeqLast, len(o.SeqLast))
	r.Hist = grow(r.Hist, len(o.Hist))
	for i, v := range o.SeqCount {
		r.SeqCount[i] += v
	}
	for i, v := range o.SeqFirst {
		if v != 0 && (r.SeqFirst[i] == 0 || v < r.SeqFirst[i]) {
			r.SeqFirst[i] = v
		}
	}
	for i, v := range o.SeqLast {
		r.SeqLast[i] = max(r.SeqLast[i], v)
	}
	for i, v := range o.Hist {
		r.Hist[i] += v
	}
}

// pongCentrifugo answers Centrifugo's application-level ping ({}).
var pongCentrifugo = frame.AppendMaskedFrame(nil, true, frame.OpText, 0, clientMask, []byte("{}"))

// fanoutHandler reads the subscribers' connections on the client's event
// loops: it answers pings (WebSocket pings; Centrifugo's {} too), and
// records each publication that arrives, with one clock reading per read.
type fanoutHandler struct {
	gnet.BuiltinEventEngine
	st         *fanoutStats
	centrifugo bool
	closing    atomic.Bool
	dropped    atomic.Int64 // connections that ended while we held them
	badFrames  atomic.Int64
}

func (h *fanoutHandler) OnTraffic(c gnet.Conn) gnet.Action {
	s, _ := c.Context().(*subscriber)
	if s == nil {
		return gnet.Close
	}
	now := time.Now().UnixNano()
	for {
		hd, payload, size, err := peekFrame(c)
		if err != nil {
			h.badFrames.Add(1)
			return gnet.Close
		}
		if size == 0 {
			return gnet.None
		}
		if hd.Masked {
			frame.Cipher(payload, hd.Mask, 0)
		}
		switch hd.OpCode {
		case frame.OpPing, frame.OpClose:
			if answerControl(c, hd.OpCode, payload) {
				_, _ = c.Discard(size)
				return gnet.Close
			}
		case frame.OpText, frame.OpBinary, frame.OpContinuation:
			switch {
			case hd.Fin && s.frag == nil:
				h.message(c, s, payload, now)
			case hd.Fin:
				h.message(c, s, append(s.frag, payload...), now)
				s.frag = nil
			default:
				s.frag = append(s.frag, payload...)
			}
		}
		_, _ = c.Discard(size)
	}
}

// message handles one data message: for Centrifugo, several JSON replies
// or pushes, one a line.
func (h *fanoutHandler) message(c gnet.Conn, s *subscriber, msg []byte, now int64) {
	for len(msg) > 0 {
		line := msg
		if i := bytes.IndexByte(msg, '\n'); i >= 0 {
			line, msg = msg[:i], msg[i+1:]
		} else {
			msg = nil
		}
		if seq, sent, ok := parsePublication(line); ok {
			h.st.deliver(s, seq, sent, now)
			continue
		}
		if h.centrifugo && string(bytes.TrimSpace(line)) == "{}" {
			_, _ = c.Write(pongCentrifugo)
		}
	}
}

func (h *fanoutHandler) OnClose(c gnet.Conn, err error) gnet.Action {
	if !h.closing.Load() {
		h.dropped.Add(1)
	}
	return gnet.None
}

// subscribeMessages are what a subscriber sends, in turn, after the
// upgrade, each answered before the next is sent.
func subscribeMessages(target, channel string) ([][]byte, error) {
	ch, _ := json.Marshal(channel)
	switch target {
	case TargetWsd:
		return [][]byte{[]byte(`{"type":"subscribe","channel":` + string(ch) + `,"id":1}`)}, nil
	case TargetCentrifugo:
		return [][]byte{[]byte(`{"id":1,"connect":{}}`), []byte(`{"id":2,"subscribe":{"channel":` + string(ch) + `}}`)}, nil
	}
	return nil, fmt.Errorf("unknown target %q (want %s or %s)", target, TargetWsd, TargetCentrifugo)
}

// checkReply tells whether line answers the command with id (true, and an
// error if it refuses it) or is something else (false).
func checkReply(target string, line []byte, id int) (bool, error) {
	if !hasID(line, id) {
		return false, nil
	}
	switch target {
	case TargetWsd:
		if !bytes.Contains(line, []byte(`"type":"ack"`)) {
			return true, fmt.Errorf("subscribe refused: %s", truncate(line, 200))
		}
	case TargetCentrifugo:
		if bytes.Contains(line, []byte(`"error"`)) {
			return true, fmt.Errorf("command %d refused: %s", id, truncate(line, 200))
		}
	}
	return true, nil
}

// hasID reports whether line carries "id":id (not "id":id0…).
func hasID(line []byte, id int) bool {
	needle := []byte(`"id":` + strconv.Itoa(id))
	for rest := line; ; {
		i := bytes.Index(rest, needle)
		if i < 0 {
			return false
		}
		rest = rest[i+len(needle):]
		if len(rest) == 0 || rest[0] < '0' || rest[0] > '9' {
			return true
		}
	}
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

// subscribe runs the subscription handshake on a freshly upgraded blocking
// connection, reading exactly the frames it is sent (nothing past the
// last reply, so the event loop that takes the connection over misses
// nothing).
func subscribe(conn net.Conn, target string, msgs [][]byte) error {
	conn.SetDeadline(time.Now().Add(15 * time.Second))
	defer conn.SetDeadline(time.Time{})
	for i, m := range msgs {
		id := i + 1
		if _, err := conn.Write(frame.AppendMaskedFrame(nil, true, frame.OpText, 0, clientMask, m)); err != nil {
			return err
		}
		for answered := false; !answered; {
			op, payload, err := readFrameExact(conn)
			if err != nil {
				return fmt.Errorf("waiting for the reply to %s: %w", m, err)
			}
			switch op {
			case frame.OpPing:
				if _, err := conn.Write(frame.AppendMaskedFrame(nil, true, frame.OpPong, 0, clientMask, payload)); err != nil {
					return err
				}
				continue
			case frame.OpClose:
				code, reason, _ := frame.ParseClose(payload)
				return fmt.Errorf("closed by the server (%d %s) after %s", code, reason, m)
			case frame.OpText, frame.OpBinary:
			default:
				continue
			}
			for line := range bytes.SplitSeq(payload, []byte("\n")) {
				if target == TargetCentrifugo && string(bytes.TrimSpace(line)) == "{}" {
					if _, err := conn.Write(pongCentrifugo); err != nil {
						return err
					}
					continue
				}
				ok, err := checkReply(target, line, id)
				if err != nil {
					return err
				}
				answered = answered || ok
			}
		}
	}
	return nil
}

// readFrameExact reads one whole unfragmented frame from a blocking
// connection without reading past it.
func readFrameExact(r io.Reader) (frame.OpCode, []byte, error) {
	var hb [frame.MaxHeaderSize]byte
	if _, err := io.ReadFull(r, hb[:2]); err != nil {
		return 0, nil, err
	}
	n := 2
	switch hb[1] & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if hb[1]&0x80 != 0 {
		n += 4
	}
	if _, err := io.ReadFull(r, hb[2:n]); err != nil {
		return 0, nil, err
	}
	h, hn, err := frame.ParseHeader(hb[:n])
	if err != nil || hn != n {
		return 0, nil, fmt.Errorf("bad frame header: %v", err)
	}
	if h.Length > 1<<20 {
		return 0, nil, fmt.Errorf("a %d-byte reply", h.Length)
	}
	if !h.Fin {
		return 0, nil, errors.New("a fragmented reply (not supported here)")
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, err
	}
	if h.Masked {
		frame.Cipher(p, h.Mask, 0)
	}
	return h.OpCode, p, nil
}

// BroadcastWorker describes one client process of a broadcast run.
type BroadcastWorker struct {
	Target      string
	URL         string
	Channel     string
	N           int    // subscribers
	Count       int    // publications to expect (sequence numbers 0 … Count-1)
	Source      net.IP // subscriber k dials from Source + k/10000
	Concurrency int    // subscriptions in flight
	Loops       int    // event loops
}

// bcastReport is a client process's progress line (and, once, its final tally).
type bcastReport struct {
	Subscribed int64        `json:"subscribed"`
	Failed     int64        `json:"failed"`
	Received   int64        `json:"received"`
	Dropped    int64        `json:"dropped"`
	Ready      bool         `json:"ready"` // every subscriber is subscribed
	Err        string       `json:"err,omitempty"`
	Final      *fanoutFinal `json:"final,omitempty"`
}

// bcastCommand is what the coordinator tells a client process: report its
// final tally (naming the publications that failed to publish) and exit.
type bcastCommand struct {
	Report      bool  `json:"report"`
	Unpublished []int `json:"unpublished,omitempty"`
}

// RunBroadcastWorker is one client process of a broadcast run: it opens
// and subscribes N subscribers, reports progress on out every 100 ms, and
// when told on in, stops and writes its final tally. It returns when in
// closes too.
func RunBroadcastWorker(ctx context.Context, w BroadcastWorker, out io.Writer, in io.Reader) error {
	u, err := url.Parse(w.URL)
	if err != nil || u.Host == "" {
		return fmt.Errorf("bad url %q", w.URL)
	}
	msgs, err := subscribeMessages(w.Target, w.Channel)
	if err != nil {
		return err
	}
	if w.Count < 1 || w.N < 0 || w.Concurrency < 1 || w.Loops < 1 {
		return errors.New("bad worker parameters")
	}
	st := newFanoutStats(w.Count)
	h := &fanoutHandler{st: st, centrifugo: w.Target == TargetCentrifugo}
	cli, err := gnet.NewClient(h,
		gnet.WithMulticore(true),
		gnet.WithNumEventLoop(w.Loops),
		gnet.WithReadBufferCap(64<<10),
		gnet.WithWriteBufferCap(4096),
		gnet.WithLogger(quietLogger{}),
	)
	if err != nil {
		return err
	}
	if err := cli.Start(); err != nil {
		return err
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			h.closing.Store(true)
			_ = cli.Stop()
		}
	}
	defer stop()

	var outMu sync.Mutex
	write := func(r bcastReport) {
		b, _ := json.Marshal(r)
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Fprintf(out, "%s\n", b)
	}
	dialCtx, cancelDial := context.WithCancel(ctx)
	defer cancelDial()
	subs := make([]*subscriber, w.N)
	pool := startOpenPool(dialCtx, w.N, w.Concurrency, func(k int) error {
		conn, err := dialUpgraded(dialCtx, u.Host, u.RequestURI(), addIP(w.Source, k/connsPerSource))
		if err != nil {
			return err
		}
		if err := subscribe(conn, w.Target, msgs); err != nil {
			conn.Close()
			return err
		}
		s := newSubscriber(w.Count)
		if _, err := cli.EnrollContext(conn, s); err != nil { // closes conn after taking a dup of it
			return err
		}
		subs[k] = s
		return nil
	})
	progress := func() bcastReport {
		r := bcastReport{Subscribed: pool.opened.Load(), Failed: pool.failed.Load(), Received: st.received(), Dropped: h.dropped.Load()}
		r.Ready = r.Subscribed == int64(w.N)
		if e := pool.firstErr(); e != nil && r.Failed > 0 {
			r.Err = fmt.Sprintf("%d of %d subscribers failed; first: %s", r.Failed, w.N, e)
		}
		return r
	}

	cmds := make(chan bcastCommand, 1)
	eof := make(chan struct{})
	go func() {
		defer close(eof)
		sc := bufio.NewScanner(in)
		sc.Buffer(make([]byte, 64<<10), 64<<20)
		for sc.Scan() {
			var c bcastCommand
			if json.Unmarshal(sc.Bytes(), &c) == nil && c.Report {
				select {
				case cmds <- c:
				default:
				}
			}
		}
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			write(progress())
		case c := <-cmds:
			cancelDial()
			<-pool.done
			r := progress()
			stop() // the loops are done with the subscribers: their records can be read
			fin := st.final(subs, c.Unpublished)
			r.Final = &fin
			write(r)
		case <-eof:
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}
