package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/wsdproject/wsd/frame"
)

// TestFanoutAccounting feeds synthetic arrivals to the tally and checks
// what it makes of them: missing, duplicate, out-of-order and foreign
// deliveries, complete subscribers, and per-publication first and last
// arrivals.
func TestFanoutAccounting(t *testing.T) {
	const n = 5
	st := newFanoutStats(n)
	subs := []*subscriber{newSubscriber(n), newSubscriber(n), newSubscriber(n), newSubscriber(n)}
	at := int64(1_000_000_000)
	feed := func(s *subscriber, seqs ...int64) {
		for _, q := range seqs {
			at += 1000
			st.deliver(s, q, at-500_000, at) // each 0.5 ms after it was sent
		}
	}
	feed(subs[0], 0, 1, 2, 3, 4)    // complete
	feed(subs[1], 0, 2, 1, 3, 3)    // 1 after 2: out of order; 3 twice; 4 missing
	feed(subs[2], 0, 1, 2, 3, 4, 7) // complete, and a seq outside the run (foreign)
	feed(subs[3], 1, 2, -1)         // 0, 3 and 4 missing; a foreign seq
	feed(subs[0])                   // nothing
	if got := st.received(); got != 5+5+5+2 {
		t.Fatalf("received() = %d, want 17", got)
	}
	f := st.final(append(subs, nil), nil) // a slot never subscribed (nil) is skipped
	want := fanoutFinal{Subscribers: 4, Received: 17, Duplicates: 1, OutOfOrder: 1, Missing: 1 + 3, Foreign: 2, Complete: 2}
	got := f
	got.SeqCount, got.SeqFirst, got.SeqLast, got.Hist = nil, nil, nil, nil
	if !equalJSON(got, want) {
		t.Fatalf("final tally\n got %+v\nwant %+v", got, want)
	}
	if !slices.Equal(f.SeqCount, []int64{3, 4, 4, 4, 2}) {
		t.Fatalf("per-seq counts %v, want [3 4 4 4 2]", f.SeqCount)
	}
	// Arrivals were 1000 ns apart in feeding order: seq 0 first arrived at
	// the 1st delivery (subs[0]) and last at the 11th (subs[2]).
	base := int64(1_000_000_000)
	if f.SeqFirst[0] != base+1000 || f.SeqLast[0] != base+11*1000 {
		t.Fatalf("seq 0 first/last arrival %d/%d, want %d/%d", f.SeqFirst[0], f.SeqLast[0], base+1000, base+11*1000)
	}
	if f.SeqLast[1] != base+17*1000 { // subs[3]'s 1, the 17th delivery
		t.Fatalf("seq 1 last arrival %d, want %d", f.SeqLast[1], base+17*1000)
	}
	// Every delivery of the run was 500 µs after its send.
	var histTotal int64
	for i, c := range f.Hist {
		histTotal += c
		if lo, hi := histRange(i); c != 0 && (lo > 500 || hi < 500) {
			t.Fatalf("histogram bucket %d [%d, %d] µs holds %d deliveries; all took 500 µs", i, lo, hi, c)
		}
	}
	if histTotal != 17 {
		t.Fatalf("histogram holds %d deliveries, want 17", histTotal)
	}

	// Publication 4 failed to publish: those who got it got something
	// unexpected; nobody misses it.
	f = st.final(subs, []int{4})
	// subs[3] still misses 0 and 3; subs[0] and subs[2] got 4 unexpectedly.
	if f.Missing != 2 || f.Unexpected != 2 || f.Complete != 0 {
		t.Fatalf("with seq 4 unpublished: missing %d, unexpected %d, complete %d; want 2, 2, 0", f.Missing, f.Unexpected, f.Complete)
	}
}

func equalJSON(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

// TestFanoutConcurrent delivers from several goroutines at once (as event
// loops do) and checks that the shared per-publication counters add up and
// keep the true first and last arrivals; run it under -race.
func TestFanoutConcurrent(t *testing.T) {
	const n, loops, perLoop = 50, 4, 25
	st := newFanoutStats(n)
	subs := make([]*subscriber, loops*perLoop)
	var wg sync.WaitGroup
	for l := range loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := l * perLoop; k < (l+1)*perLoop; k++ {
				subs[k] = newSubscriber(n)
				for q := range int64(n) {
					st.deliver(subs[k], q, 1, 1_000_000+int64(k)*10+q)
				}
			}
		}()
	}
	wg.Wait()
	f := st.final(subs, nil)
	if f.Complete != loops*perLoop || f.Received != n*loops*perLoop || f.Missing != 0 {
		t.Fatalf("complete %d, received %d, missing %d", f.Complete, f.Received, f.Missing)
	}
	for q := range n {
		first, last := int64(1_000_000+q), int64(1_000_000+(loops*perLoop-1)*10+q)
		if f.SeqCount[q] != loops*perLoop || f.SeqFirst[q] != first || f.SeqLast[q] != last {
			t.Fatalf("seq %d: count %d first %d last %d; want %d, %d, %d", q, f.SeqCount[q], f.SeqFirst[q], f.SeqLast[q], loops*perLoop, first, last)
		}
	}
}

func TestFanoutMerge(t *testing.T) {
	a := fanoutFinal{Subscribers: 2, Received: 3, Missing: 1, Complete: 1,
		SeqCount: []int64{2, 1}, SeqFirst: []int64{10, 0}, SeqLast: []int64{20, 30}, Hist: []int64{1, 2}}
	b := fanoutFinal{Subscribers: 3, Received: 6, Duplicates: 1, OutOfOrder: 2, Foreign: 1, Complete: 2,
		SeqCount: []int64{3, 3}, SeqFirst: []int64{15, 5}, SeqLast: []int64{25, 8}, Hist: []int64{0, 1, 4}}
	var m fanoutFinal
	m.merge(a)
	m.merge(b)
	want := fanoutFinal{Subscribers: 5, Received: 9, Duplicates: 1, OutOfOrder: 2, Missing: 1, Foreign: 1, Complete: 3,
		SeqCount: []int64{5, 4}, SeqFirst: []int64{10, 5}, SeqLast: []int64{25, 30}, Hist: []int64{1, 3, 4}}
	if !equalJSON(m, want) {
		t.Fatalf("merged\n got %+v\nwant %+v", m, want)
	}
}

// TestLatencies checks the percentile arithmetic: 100 publications whose
// last deliveries came 1 … 100 ms after them (in a shuffled order), one
// that failed to publish and one that nobody received.
func TestLatencies(t *testing.T) {
	const n = 102
	sent := make([]int64, n)
	fin := fanoutFinal{SeqCount: make([]int64, n), SeqFirst: make([]int64, n), SeqLast: make([]int64, n), Hist: make([]int64, histBuckets)}
	t0 := int64(1e18)
	for i := range 100 {
		seq := (i * 37) % 100 // a permutation of 0…99
		sent[seq] = t0 + int64(seq)*int64(time.Second)
		fin.SeqCount[seq] = 7
		fin.SeqFirst[seq] = sent[seq] + int64(time.Millisecond)/2
		fin.SeqLast[seq] = sent[seq] + int64(i+1)*int64(time.Millisecond)
	}
	sent[101] = t0 + 101*int64(time.Second) // published, never delivered; 100 never published
	for v := int64(1); v <= 1000; v++ {     // deliveries of 1 … 1000 µs
		fin.Hist[histIndex(v)]++
	}
	l := latencies(sent, fin)
	if l.LastP50 != 50 || l.LastP99 != 99 || l.LastMax != 100 {
		t.Fatalf("last delivery p50/p99/max %v/%v/%v ms, want 50/99/100", l.LastP50, l.LastP99, l.LastMax)
	}
	if l.FirstP50 != 0.5 || l.FirstP99 != 0.5 {
		t.Fatalf("first delivery p50/p99 %v/%v, want 0.5", l.FirstP50, l.FirstP99)
	}
	if l.perPub[100] != -1 || l.perPub[101] != -1 {
		t.Fatalf("publications without deliveries: %v, %v; want -1", l.perPub[100], l.perPub[101])
	}
	if last := slices.Max(fin.SeqLast); l.firstSent != t0 || l.lastArrival != last {
		t.Fatalf("phase from %d to %d, want %d to %d", l.firstSent, l.lastArrival, t0, last)
	}
	near := func(got, want float64) bool { return math.Abs(got-want) <= want*0.02 }
	if !near(l.DelivP50, 0.5) || !near(l.DelivP99, 0.99) || !near(l.DelivMax, 1.0) {
		t.Fatalf("delivery p50/p99/max %v/%v/%v ms, want 0.5/0.99/1.0 within 2%%", l.DelivP50, l.DelivP99, l.DelivMax)
	}
}

func TestPercentile(t *testing.T) {
	for _, c := range []struct {
		v    []float64
		p    float64
		want float64
	}{
		{[]float64{7}, 50, 7},
		{[]float64{7}, 99, 7},
		{[]float64{1, 2}, 50, 1},
		{[]float64{1, 2}, 51, 2},
		{[]float64{1, 2, 3, 4}, 50, 2},
		{[]float64{1, 2, 3, 4}, 75, 3},
		{[]float64{1, 2, 3, 4}, 100, 4},
		{[]float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 99, 10},
		{[]float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 10, 1},
		{nil, 50, 0},
	} {
		if got := percentile(c.v, c.p); got != c.want {
			t.Errorf("percentile(%v, %v) = %v, want %v", c.v, c.p, got, c.want)
		}
	}
}

// TestHistogram checks that every value falls in a bucket that contains it,
// that buckets are ordered and at most 1/32 wide, and the percentiles of
// exact (small) values.
func TestHistogram(t *testing.T) {
	prev := -1
	for _, v := range []int64{0, 1, 31, 32, 33, 63, 64, 65, 127, 128, 1000, 1 << 20, 123456789, 1 << 40, math.MaxInt64} {
		i := histIndex(v)
		lo, hi := histRange(i)
		if v < lo || v > hi {
			t.Fatalf("%d in bucket %d [%d, %d]", v, i, lo, hi)
		}
		if i < prev {
			t.Fatalf("bucket of %d (%d) below the previous value's (%d)", v, i, prev)
		}
		prev = i
		if lo >= 32 && float64(hi-lo+1)/float64(lo) > 1.0/32+1e-12 {
			t.Fatalf("bucket %d [%d, %d] wider than 1/32", i, lo, hi)
		}
	}
	if histIndex(-5) != 0 {
		t.Fatal("a negative latency is not counted as 0")
	}
	for i := 1; i < histBuckets; i++ { // contiguous
		plo, phi := histRange(i - 1)
		lo, _ := histRange(i)
		if lo != phi+1 || phi < plo {
			t.Fatalf("buckets %d and %d are not contiguous: ..%d, %d..", i-1, i, phi, lo)
		}
	}
	h := make([]int64, histBuckets)
	if _, ok := histPercentile(h, 50); ok {
		t.Fatal("percentile of an empty histogram")
	}
	for v := int64(1); v <= 20; v++ {
		h[histIndex(v)]++
	}
	for _, c := range []struct{ p, want float64 }{{50, 10}, {95, 19}, {100, 20}, {1, 1}} {
		if got, _ := histPercentile(h, c.p); got != c.want {
			t.Errorf("p%v = %v, want %v", c.p, got, c.want)
		}
	}
}

func TestParsePublication(t *testing.T) {
	data := publicationData(12, 1786000000123456789, 100)
	if len(data) != 100 || !json.Valid(data) {
		t.Fatalf("publication data %q: %d bytes, valid JSON %v; want 100 and valid", data, len(data), json.Valid(data))
	}
	for _, msg := range []string{
		`{"type":"message","channel":"bench","offset":13,"epoch":"e1","data":` + string(data) + `}`,
		`{"push":{"channel":"bench","pub":{"data":` + string(data) + `,"offset":13}}}`,
	} {
		seq, sent, ok := parsePublication([]byte(msg))
		if !ok || seq != 12 || sent != 1786000000123456789 {
			t.Fatalf("parsePublication(%s) = %d, %d, %v", msg, seq, sent, ok)
		}
	}
	for _, bad := range []string{
		`{}`, `{"id":1,"connect":{}}`, `{"seq":,"t":1}`, `{"seq":1,"t":}`, `{"seq":1,"x":2}`,
		`{"seq":1,"t":99999999999999999999}`, // overflows int64
	} {
		if _, _, ok := parsePublication([]byte(bad)); ok {
			t.Errorf("parsePublication(%s) accepted it", bad)
		}
	}
}

func TestCheckReply(t *testing.T) {
	for _, c := range []struct {
		target, line string
		id           int
		answered     bool
		refused      bool
	}{
		{TargetWsd, `{"type":"ack","id":1,"offset":0,"epoch":"x"}`, 1, true, false},
		{TargetWsd, `{"type":"ack","id":10}`, 1, false, false},
		{TargetWsd, `{"type":"error","id":1,"code":"FORBIDDEN"}`, 1, true, true},
		{TargetWsd, `{"type":"message","channel":"bench"}`, 1, false, false},
		{TargetCentrifugo, `{"id":1,"connect":{"client":"c","ping":25,"pong":true}}`, 1, true, false},
		{TargetCentrifugo, `{"id":2,"error":{"code":103,"message":"permission denied"}}`, 2, true, true},
		{TargetCentrifugo, `{"id":21,"subscribe":{}}`, 2, false, false},
		{TargetCentrifugo, `{}`, 2, false, false},
	} {
		answered, err := checkReply(c.target, []byte(c.line), c.id)
		if answered != c.answered || (err != nil) != c.refused {
			t.Errorf("checkReply(%s, %s, %d) = %v, %v; want answered %v, refused %v", c.target, c.line, c.id, answered, err, c.answered, c.refused)
		}
	}
}

// TestSubscribeHandshake runs the subscription handshake against scripted
// servers: Centrifugo pinging ({}) in the middle of it and batching lines,
// wsd with a WebSocket ping first, and wsd refusing.
func TestSubscribeHandshake(t *testing.T) {
	type step struct {
		expect string   // the client message expected next ("" : none)
		reply  []string // frames sent after it (text, or "PING")
	}
	run := func(target string, steps []step) ([]string, error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		server, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		var seen []string
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer server.Close()
			for _, s := range steps {
				if s.expect != "" {
					for {
						msg, op, err := wsutil.ReadClientData(server)
						if err != nil {
							return
						}
						seen = append(seen, fmt.Sprintf("%v:%s", op, msg))
						if string(msg) == s.expect {
							break
						}
					}
				}
				for _, r := range s.reply {
					op, p := ws.OpText, []byte(r)
					if r == "PING" {
						op, p = ws.OpPing, []byte("hi")
					}
					if err := wsutil.WriteServerMessage(server, op, p); err != nil {
						return
					}
				}
			}
			// Anything after the last reply would be a publication: the
			// handshake must not have read it.
			_ = wsutil.WriteServerText(server, []byte("AFTER"))
		}()
		msgs, _ := subscribeMessages(target, "bench")
		err = subscribe(client, target, msgs)
		if err == nil {
			op, p, rerr := readFrameExact(client)
			if rerr != nil || op != frame.OpText || string(p) != "AFTER" {
				err = fmt.Errorf("after the handshake: %v %q %v", op, p, rerr)
			}
		}
		client.Close()
		<-done
		return seen, err
	}

	seen, err := run(TargetCentrifugo, []step{
		{expect: `{"id":1,"connect":{}}`, reply: []string{"{}\n" + `{"id":1,"connect":{"client":"x","ping":25,"pong":true}}`}},
		{expect: "{}"}, // the pong
		{expect: `{"id":2,"subscribe":{"channel":"bench"}}`, reply: []string{"{}", `{"id":2,"subscribe":{}}`}},
		{expect: "{}"},
	})
	if err != nil {
		t.Fatalf("centrifugo: %v (server saw %q)", err, seen)
	}

	seen, err = run(TargetWsd, []step{
		{reply: []string{"PING"}}, // answered (wsutil's reader takes the pong)
		{expect: `{"type":"subscribe","channel":"bench","id":1}`, reply: []string{
			`{"type":"ack","id":10}`, // not the answer: the handshake reads on
			`{"type":"ack","id":1,"offset":0,"epoch":"e"}`,
		}},
	})
	if err != nil {
		t.Fatalf("wsd: %v (server saw %q)", err, seen)
	}

	_, err = run(TargetWsd, []step{
		{expect: `{"type":"subscribe","channel":"bench","id":1}`, reply: []string{`{"type":"error","id":1,"code":"FORBIDDEN"}`}},
	})
	if err == nil || !strings.Contains(err.Error(), "FORBIDDEN") {
		t.Fatalf("wsd refusing: err %v, want the refusal", err)
	}
}

func TestParseProcStat(t *testing.T) {
	// The command name may hold spaces and parentheses.
	stat := "4242 (we ird) name) S 1 4242 4242 0 -1 4194560 123 0 0 0 250 75 0 0 20 0 9 0 100 0 0"
	v, err := parseProcStatCPU([]byte(stat))
	if err != nil || v != 3.25 {
		t.Fatalf("parseProcStatCPU = %v, %v; want 3.25", v, err)
	}
	if _, err := parseProcStatCPU([]byte("4242 (x) S 1 2")); err == nil {
		t.Fatal("a short stat line was accepted")
	}
	self, err := ProcCPUSeconds(os.Getpid())
	if err != nil || self < 0 {
		t.Fatalf("ProcCPUSeconds(self) = %v, %v", self, err)
	}
	// The per-thread figure (nanoseconds) and the process's own (clock
	// ticks) tell the same time, here after at least 300 ms of work. The
	// work is counted in CPU time, not wall time: on a machine busy with
	// other tests 300 ms of wall time can give this process far less.
	x := 0
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		if used, ok := schedstatCPU(os.Getpid()); !ok || used >= 0.3 {
			break
		}
		for end := time.Now().Add(10 * time.Millisecond); time.Now().Before(end); {
			x++
		}
	}
	_ = x
	fine, ok := schedstatCPU(os.Getpid())
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	coarse, err := parseProcStatCPU(b)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Skip("no schedstat on this kernel")
	}
	if fine < 0.3 || math.Abs(fine-coarse) > 0.05+0.1*coarse {
		t.Fatalf("CPU from schedstat %.3f s, from stat %.3f s", fine, coarse)
	}
}

func TestListenInodes(t *testing.T) {
	table := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F40 0200007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0000000000000000 20 4 30 10 -1
`
	if got := listenInodes([]byte(table), 8000); !slices.Equal(got, []string{"111"}) {
		t.Fatalf("listening on 8000: %v, want [111] (the established socket 333 is not listening)", got)
	}
	if got := listenInodes([]byte(table), 9000); len(got) != 0 {
		t.Fatalf("listening on 9000: %v", got)
	}
	// This test's own listener is found.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pid, err := ListenerPID(ln.Addr().(*net.TCPAddr).Port)
	if err != nil || pid != os.Getpid() {
		t.Fatalf("ListenerPID = %d, %v; want %d", pid, err, os.Getpid())
	}
}

// fakeCentrifugo speaks enough of Centrifugo's JSON protocol and publish
// API for an end-to-end run: connect, subscribe, publish (to every
// subscriber, each push after a {} ping in the same frame, so that the
// client must split lines and answer pings).
type fakeCentrifugo struct {
	mu     sync.Mutex
	subs   map[net.Conn]*sync.Mutex
	offset int
	pongs  atomic.Int64
}

func (f *fakeCentrifugo) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/api/publish" {
		f.publish(w, r)
		return
	}
	conn, _, _, err := ws.UpgradeHTTP(r, w)
	if err != nil {
		return
	}
	go f.serve(conn)
}

func (f *fakeCentrifugo) serve(conn net.Conn) {
	defer conn.Close()
	wmu := &sync.Mutex{}
	defer func() {
		f.mu.Lock()
		delete(f.subs, conn)
		f.mu.Unlock()
	}()
	for {
		msg, _, err := wsutil.ReadClientData(conn)
		if err != nil {
			return
		}
		for line := range bytes.SplitSeq(msg, []byte("\n")) {
			var cmd struct {
				ID        int             `json:"id"`
				Connect   json.RawMessage `json:"connect"`
				Subscribe *struct {
					Channel string `json:"channel"`
				} `json:"subscribe"`
			}
			if string(line) == "{}" {
				f.pongs.Add(1)
				continue
			}
			if json.Unmarshal(line, &cmd) != nil {
				return
			}
			var reply string
			switch {
			case cmd.Connect != nil:
				reply = fmt.Sprintf(`{"id":%d,"connect":{"client":"c","ping":25,"pong":true}}`, cmd.ID)
			case cmd.Subscribe != nil && cmd.Subscribe.Channel == "bench":
				reply = fmt.Sprintf(`{"id":%d,"subscribe":{}}`, cmd.ID)
				f.mu.Lock()
				f.subs[conn] = wmu
				f.mu.Unlock()
			default:
				reply = fmt.Sprintf(`{"id":%d,"error":{"code":103,"message":"permission denied"}}`, cmd.ID)
			}
			wmu.Lock()
			err := wsutil.WriteServerText(conn, []byte(reply))
			wmu.Unlock()
			if err != nil {
				return
			}
		}
	}
}

func (f *fakeCentrifugo) publish(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-API-Key") != "k" {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	var req struct {
		Channel string          `json:"channel"`
		Data    json.RawMessage `json:"data"`
	}
	body, _ := io.ReadAll(r.Body)
	if json.Unmarshal(body, &req) != nil || req.Channel != "bench" {
		io.WriteString(w, `{"error":{"code":107,"message":"bad request"}}`)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.offset++
	push := fmt.Appendf(nil, "{}\n"+`{"push":{"channel":"bench","pub":{"data":%s,"offset":%d}}}`, req.Data, f.offset)
	for conn, wmu := range f.subs {
		wmu.Lock()
		_ = wsutil.WriteServerText(conn, push)
		wmu.Unlock()
	}
	io.WriteString(w, `{"result":{}}`)
}

// TestBroadcastRun runs the whole measurement, client workers in process,
// against the fake Centrifugo: every subscriber must get every
// publication once, in order, and the figures must be filled in.
func TestBroadcastRun(t *testing.T) {
	fake := &fakeCentrifugo{subs: map[net.Conn]*sync.Mutex{}}
	srv := httptest.NewServer(fake)
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	var progress bytes.Buffer
	r, err := RunBroadcast(context.Background(), BroadcastOptions{
		Target: TargetCentrifugo, URL: "ws://" + host + "/connection/websocket", API: srv.URL + "/api/publish", APIKey: "k",
		Subs: 150, Channel: "bench", Size: 100, Rate: 200, Count: 30,
		Settle: 100 * time.Millisecond, Drain: 10 * time.Second, Timeout: 60 * time.Second,
		ServerPID: os.Getpid(), PerProcess: 100, Loops: 2, Concurrency: 8, Source: net.ParseIP("127.0.0.2"),
		Progress: &progress, inProcess: true,
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	var table bytes.Buffer
	r.Print(&table)
	t.Logf("\n%s%s", progress.String(), table.String())
	if !r.Complete || r.Subscribers != 150 || r.Processes != 2 || r.Published != 30 || r.Received != 150*30 || r.Expected != 150*30 {
		t.Fatalf("complete %v: %d subscribers in %d processes, %d published, %d of %d received", r.Complete, r.Subscribers, r.Processes, r.Published, r.Received, r.Expected)
	}
	if r.Missing != 0 || r.Duplicates != 0 || r.OutOfOrder != 0 || r.Foreign != 0 || r.CompleteSubs != 150 {
		t.Fatalf("missing %d, duplicates %d, out of order %d, foreign %d, complete %d", r.Missing, r.Duplicates, r.OutOfOrder, r.Foreign, r.CompleteSubs)
	}
	if fake.pongs.Load() < 150*30 {
		t.Fatalf("the fake server got %d pongs ({}), want at least one per push (%d)", fake.pongs.Load(), 150*30)
	}
	l := r.Latency
	if !(l.LastP50 > 0 && l.LastP50 <= l.LastP99 && l.LastP99 <= l.LastMax && l.FirstP50 <= l.LastP50 && l.DelivP50 > 0) {
		t.Fatalf("latencies %+v", l)
	}
	if r.PhaseSeconds <= 0 || r.DeliveriesPerS <= 0 || r.StoppedBy != "count" || len(r.PerPublicationLastMs) != 30 {
		t.Fatalf("phase %v s, %v deliveries/s, stopped by %q", r.PhaseSeconds, r.DeliveriesPerS, r.StoppedBy)
	}

	// A wrong key: every publish fails and the run says so.
	r, err = RunBroadcast(context.Background(), BroadcastOptions{
		Target: TargetCentrifugo, URL: "ws://" + host + "/connection/websocket", API: srv.URL + "/api/publish", APIKey: "wrong",
		Subs: 10, Channel: "bench", Size: 100, Rate: 0, Count: 3,
		Drain: time.Second, Timeout: 30 * time.Second,
		ServerPID: os.Getpid(), PerProcess: 100, Loops: 1, Concurrency: 4, Source: net.ParseIP("127.0.0.2"), inProcess: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if r.Complete || r.PublishFailed != 3 || !strings.Contains(r.FirstPublishError, "401") {
		t.Fatalf("with a wrong key: complete %v, %d failed, first error %q", r.Complete, r.PublishFailed, r.FirstPublishError)
	}

	// A channel the server refuses: the run fails with the server's answer.
	_, err = RunBroadcast(context.Background(), BroadcastOptions{
		Target: TargetCentrifugo, URL: "ws://" + host + "/connection/websocket", API: srv.URL + "/api/publish", APIKey: "k",
		Subs: 3, Channel: "other", Size: 100, Count: 1, Drain: time.Second, Timeout: 20 * time.Second,
		ServerPID: os.Getpid(), PerProcess: 10, Loops: 1, Concurrency: 2, Source: net.ParseIP("127.0.0.2"), inProcess: true,
	})
	if err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("subscribing to a channel the server refuses: err %v", err)
	}
}
