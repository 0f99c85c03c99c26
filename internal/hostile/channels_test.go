package hostile

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/internal/wstest"
)

// reply is what the channel tests read of a server reply.
type reply struct {
	Type, Channel, Code, Message string
	ID                           int
	Offset                       uint64
}

// exchange sends msgs to c in one write (each a message whose "id" is its
// index plus first) and reads one reply for each, in order. Nothing else
// may come on c meanwhile (c is subscribed to no channel that is published
// to).
func exchange(c *wstest.Client, first int, msgs [][]byte) ([]reply, error) {
	var wire []byte
	for _, m := range msgs {
		wire = append(wire, c.Frame(true, frame.OpText, 0, m)...)
	}
	if err := c.SendRaw(wire); err != nil {
		return nil, err
	}
	out := make([]reply, len(msgs))
	for i := range out {
		_, p, err := c.ReadMessage()
		if err != nil {
			return nil, fmt.Errorf("reply %d of %d: %w", i, len(msgs), err)
		}
		if err := json.Unmarshal(p, &out[i]); err != nil {
			return nil, fmt.Errorf("reply %d: %w: %.200s", i, err, p)
		}
		if out[i].ID != first+i {
			return nil, fmt.Errorf("reply to %d, want to %d: %.200s", out[i].ID, first+i, p)
		}
	}
	return out, nil
}

// exchangeAll sends n messages on each connection, msg(i, j) the j-th on
// connection i (its "id" must be j), in writes of batch messages, reading
// the replies to each batch before the next; the connections run at once.
// It counts the replies by kind: "ack", or an error's code, and passes
// each to seen, if not nil: called on each connection's goroutine, in the
// order of its messages, so concurrently for different i.
func exchangeAll(cs []*wstest.Client, n, batch int, msg func(i, j int) []byte, seen func(i, j int, r reply)) (map[string]int, error) {
	var (
		mu    sync.Mutex
		tally = map[string]int{}
		errs  = make(chan error, len(cs))
	)
	for i, c := range cs {
		go func() {
			local := map[string]int{}
			for j := 0; j < n; j += batch {
				msgs := make([][]byte, min(batch, n-j))
				for k := range msgs {
					msgs[k] = msg(i, j+k)
				}
				rs, err := exchange(c, j, msgs)
				if err != nil {
					errs <- fmt.Errorf("connection %d: %w", i, err)
					return
				}
				for k, r := range rs {
					if seen != nil {
						seen(i, j+k, r)
					}
					if r.Type == "ack" {
						local["ack"]++
					} else {
						local[r.Code]++
					}
				}
			}
			mu.Lock()
			for k, v := range local {
				tally[k] += v
			}
			mu.Unlock()
			errs <- nil
		}()
	}
	var err error
	for range cs {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	return tally, err
}

// scrape reads the given integer samples from the server's /metrics.
func (s *server) scrape(samples ...string) (map[string]int, error) {
	resp, err := http.Get("http://" + s.Admin + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	got := make(map[string]int, len(samples))
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		for _, name := range samples {
			if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
				n, err := strconv.Atoi(v)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", name, err)
				}
				got[name] = n
			}
		}
	}
	for _, name := range samples {
		if _, ok := got[name]; !ok {
			return nil, fmt.Errorf("no metric %s", name)
		}
	}
	return got, sc.Err()
}

// watchMetrics samples the given metrics every 5ms until stop is called,
// which returns the highest value each had (the last scrape, made by stop
// itself, included) and how many scrapes there were.
func (s *server) watchMetrics(t testing.TB, samples ...string) (stop func() (peak map[string]int, scrapes int)) {
	var (
		peak    = map[string]int{}
		n       int
		scrErr  error
		observe = func() bool {
			got, err := s.scrape(samples...)
			if err != nil {
				scrErr = err
				return true
			}
			n++
			for k, v := range got {
				peak[k] = max(peak[k], v)
			}
			return true
		}
	)
	stopSampling := every(5*time.Millisecond, observe)
	return func() (map[string]int, int) {
		t.Helper()
		stopSampling()
		observe()
		if scrErr != nil {
			t.Fatalf("scraping /metrics: %v", scrErr)
		}
		return peak, n
	}
}

// channelName returns a random channel name of n bytes (n ≥ 3): "h:" and
// hex digits.
func channelName(n int) string {
	b := make([]byte, (n-1)/2)
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
	return ("h:" + hex.EncodeToString(b))[:n]
}

// channelNames returns count random channel names of n bytes: random, so
// that each makes a channel of its own on the server.
func channelNames(count, n int) []string {
	names := make([]string, count)
	for i := range names {
		names[i] = channelName(n)
	}
	return names
}

// dialAll opens n connections and checks each with an echo.
func dialAll(t *testing.T, s *server, n int) []*wstest.Client {
	t.Helper()
	cs := make([]*wstest.Client, n)
	for i := range cs {
		cs[i] = wstest.Dial(t, s.WS, "/ws", wstest.Options{})
		if _, err := exchange(cs[i], 0, [][]byte{[]byte(`{"type":"echo","id":0,"data":1}`)}); err != nil {
			t.Fatal(err)
		}
	}
	return cs
}

// TestChannelNamesRSS: channel names come from clients, and every channel
// with subscribers costs the server its name (copied by the hub and by the
// broker), the hub's records and the broker's entry and stream. 200
// connections each subscribe to 128 distinct random names of 250 bytes on
// a server started with --max-channels 2000: 25,600 channels asked for,
// 2,000 kept, the rest refused with TOO_MANY_CHANNELS and counted. The
// server's RSS grows by less than what 2,000 channels may cost (measured:
// 2.6 to 2.8 MiB, budget 7.5 MiB); a server without the cap keeps all
// 25,600 and grows by 25.5 MiB. One connection first takes its 128
// subscriptions and is refused more (--max-subscriptions: counted as a
// refused subscribe, not as a refused channel). When the connections
// close, the hub's channel records go with them; the broker's streams
// (no history) stay until they have been idle a minute, within the cap.
func TestChannelNamesRSS(t *testing.T) {
	const (
		maxChannels = 2000
		maxSubs     = 128
		conns       = 200
		nameLen     = 250
		// chanCost is what one channel may cost: the name, 256 bytes in
		// its size class, twice (the hub's copy, shared by its records,
		// and the broker's), the broker's entry and epoch, the hub's
		// channel record, a slot in three maps; measured 1 KiB with the
		// collector's headroom (25.5 MiB for 25,728 channels without the
		// cap), doubled.
		chanCost = 2 << 10
		// subCost is what one subscription may cost: the connection's
		// entry and the channel's member (16 and 32 bytes, in slices
		// that grow by doubling), rounded up.
		subCost = 256
		// slack: the garbage of refused subscribes (each decoded name is
		// a new string) and of replies, and the heap's granularity.
		slack = 2 * MiB
		// Each subscription acknowledged makes a channel (the names are
		// distinct): at most maxChannels of either.
		budget = (maxChannels*chanCost+maxChannels*subCost)*5/4 + slack
	)
	s := start(t, "--max-channels", strconv.Itoa(maxChannels), "--max-subscriptions", strconv.Itoa(maxSubs))
	warm(t, s)
	first := dialAll(t, s, 1)[0]
	cs := dialAll(t, s, conns)
	names := make([][]string, conns)
	for i := range names {
		names[i] = channelNames(maxSubs, nameLen)
	}
	msgs := func(typ string, names []string) [][]byte {
		out := make([][]byte, len(names))
		for i, n := range names {
			out[i] = fmt.Appendf(nil, `{"type":%q,"id":%d,"channel":%q}`, typ, i, n)
		}
		return out
	}
	// Each connection first sends the same names to unsubscribe from
	// (NOT_SUBSCRIBED, nothing kept): its buffers and the server's error
	// path reach their working size before the baseline.
	for i, c := range cs {
		rs, err := exchange(c, 0, msgs("unsubscribe", names[i]))
		if err != nil {
			t.Fatal(err)
		}
		if rs[0].Code != "NOT_SUBSCRIBED" {
			t.Fatalf("unsubscribe without a subscription: %+v", rs[0])
		}
	}
	before := s.rss(t)
	stopRSS := s.watchRSS(t)
	stopMetrics := s.watchMetrics(t, "wsd_channels", "wsd_broker_streams")

	// One connection takes --max-subscriptions channels, then is refused
	// more on its own account.
	own := channelNames(maxSubs+16, nameLen)
	rs, err := exchange(first, 0, msgs("subscribe", own))
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range rs {
		switch {
		case i < maxSubs && r.Type != "ack":
			t.Fatalf("subscribe %d of a fresh connection on a fresh server: %+v", i, r)
		case i >= maxSubs && (r.Type != "error" || r.Code != "TOO_MANY_CHANNELS"):
			t.Fatalf("subscribe %d, over --max-subscriptions %d: %+v, want TOO_MANY_CHANNELS", i, maxSubs, r)
		}
	}
	if m, err := s.scrape("wsd_subscribes_refused_total", "wsd_channels_refused_total", "wsd_channels"); err != nil {
		t.Fatal(err)
	} else if m["wsd_subscribes_refused_total"] != 16 || m["wsd_channels_refused_total"] != 0 || m["wsd_channels"] != maxSubs {
		t.Fatalf("after 16 subscribes over --max-subscriptions: %v, want 16 refused, none for --max-channels, %d channels", m, maxSubs)
	}

	// The others at once, each its 128 new names in one write.
	got, err := exchangeAll(cs, maxSubs, maxSubs, func(i, j int) []byte {
		return fmt.Appendf(nil, `{"type":"subscribe","id":%d,"channel":%q}`, j, names[i][j])
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	acks, refused := got["ack"], got["TOO_MANY_CHANNELS"]
	if acks+refused != conns*maxSubs {
		t.Fatalf("subscribes answered %v, want acks and TOO_MANY_CHANNELS only", got)
	}
	peak := stopRSS()
	metrics, scrapes := stopMetrics()
	m, err := s.scrape("wsd_channels_refused_total", "wsd_subscribes_refused_total", "wsd_channels", "wsd_broker_streams", "wsd_broker_channels_refused_total")
	if err != nil {
		t.Fatal(err)
	}
	growth := peak - before
	t.Logf("%d subscribes of %d-byte names: %d acked, %d refused; metrics %v, peaks over %d scrapes %v",
		conns*maxSubs, nameLen, acks, refused, m, scrapes, metrics)
	t.Logf("server anonymous RSS %.1f MiB before, peak growth %.2f MiB, budget %.2f MiB",
		float64(before)/MiB, float64(growth)/MiB, float64(budget)/MiB)
	if acks != maxChannels-maxSubs || refused != conns*maxSubs-acks {
		t.Errorf("%d acked and %d refused, want %d acked (the cap less the first connection's)", acks, refused, maxChannels-maxSubs)
	}
	if metrics["wsd_channels"] > maxChannels || m["wsd_channels"] != maxChannels {
		t.Errorf("wsd_channels peaked at %d, is %d; cap %d", metrics["wsd_channels"], m["wsd_channels"], maxChannels)
	}
	if metrics["wsd_broker_streams"] > maxChannels {
		t.Errorf("wsd_broker_streams peaked at %d; cap %d", metrics["wsd_broker_streams"], maxChannels)
	}
	if m["wsd_channels_refused_total"] != refused || m["wsd_subscribes_refused_total"] != refused+16 {
		t.Errorf("wsd_channels_refused_total %d, wsd_subscribes_refused_total %d; want %d and %d",
			m["wsd_channels_refused_total"], m["wsd_subscribes_refused_total"], refused, refused+16)
	}
	if growth >= budget {
		t.Errorf("server RSS grew by %.2f MiB, want under %.2f MiB for %d channels", float64(growth)/MiB, float64(budget)/MiB, maxChannels)
	}

	// Closed, the connections leave no channel behind.
	first.Conn.Close()
	for _, c := range cs {
		c.Conn.Close()
	}
	s.WaitMetric(t, "wsd_channels", 0)
	s.WaitMetric(t, "wsd_connections_open", 0)
	if n := s.Metric(t, "wsd_broker_streams"); n > maxChannels {
		t.Errorf("wsd_broker_streams %d after the connections closed; cap %d", n, maxChannels)
	}
}

// TestHistoryBytesRSS: clients with the right to publish make the server
// keep their publications in the channels' histories. 8 clients publish
// 64 MiB (4,096 publications of 16 KiB) to 128 channels that keep up to
// 1,000 publications each, on a server started with --max-history-bytes
// 4 MiB: the histories never hold more than 4 MiB, the oldest publications
// are evicted and counted, and the server's RSS grows by less than twice
// the cap plus what moves (measured: 5.5 to 5.8 MiB, budget 11 MiB).
// Without the cap it keeps all 64 MiB and grows by 66 MiB.
func TestHistoryBytesRSS(t *testing.T) {
	const (
		maxHistory = 4 * MiB
		channels   = 128
		publishers = 8
		dataLen    = 16 << 10 // a size class: the copy kept is no larger
		total      = 64 * MiB
		perPub     = total / dataLen / publishers
		// budget: the history's copies, twice (the collector's headroom,
		// and copies made before their publication finds no room), and
		// 3 MiB for what moves (inbound messages assembled across reads,
		// replies, the evicted copies not yet collected).
		budget = 2*maxHistory + 3*MiB
	)
	s := start(t, "--allow-client-publish", "--max-history-bytes", strconv.Itoa(maxHistory),
		"--history-size", "1000", "--max-channels", strconv.Itoa(channels))
	warm(t, s)
	cs := dialAll(t, s, publishers)
	names := channelNames(channels, 64)
	filler := strings.Repeat("x", dataLen-8) // the data: "NNNNNN…", dataLen bytes with its quotes
	publish := func(i, j int) []byte {
		return fmt.Appendf(nil, `{"type":"publish","id":%d,"channel":%q,"data":"%06d%s"}`, j, names[(j*publishers+i)%channels], j, filler)
	}
	// The publishers' working size (buffers, messages assembled across
	// reads) before the baseline: the same messages without the right to
	// publish to a private channel (FORBIDDEN, nothing kept).
	if got, err := exchangeAll(cs, 16, 16, func(i, j int) []byte {
		return bytes.Replace(publish(i, j), []byte(`"channel":"h:`), []byte(`"channel":"$h:`), 1)
	}, nil); err != nil || got["FORBIDDEN"] != 16*publishers {
		t.Fatalf("publishing to private channels: %v %v, want FORBIDDEN", got, err)
	}
	before := s.rss(t)
	stopRSS := s.watchRSS(t)
	stopMetrics := s.watchMetrics(t, "wsd_broker_history_bytes", "wsd_broker_streams")
	begin := time.Now()
	got, err := exchangeAll(cs, perPub, 16, publish, nil)
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(begin)
	peak := stopRSS()
	metrics, scrapes := stopMetrics()
	m, err := s.scrape("wsd_broker_history_bytes", "wsd_broker_history_publications", "wsd_broker_published_total",
		`wsd_broker_history_evicted_total{reason="bytes"}`, `wsd_broker_history_evicted_total{reason="size"}`,
		"wsd_broker_not_retained_total", "wsd_broker_streams")
	if err != nil {
		t.Fatal(err)
	}
	growth := peak - before
	t.Logf("%d MiB published in %v: replies %v; metrics %v; peaks over %d scrapes %v",
		total/MiB, elapsed.Round(time.Millisecond), got, m, scrapes, metrics)
	t.Logf("server anonymous RSS %.1f MiB before, peak growth %.2f MiB, budget %.2f MiB",
		float64(before)/MiB, float64(growth)/MiB, float64(budget)/MiB)
	if got["ack"] != perPub*publishers || m["wsd_broker_published_total"] != perPub*publishers {
		t.Errorf("replies %v, wsd_broker_published_total %d; want %d acks", got, m["wsd_broker_published_total"], perPub*publishers)
	}
	if metrics["wsd_broker_history_bytes"] > maxHistory {
		t.Errorf("wsd_broker_history_bytes peaked at %d, over --max-history-bytes %d", metrics["wsd_broker_history_bytes"], maxHistory)
	}
	if m[`wsd_broker_history_evicted_total{reason="bytes"}`] == 0 {
		t.Error(`wsd_broker_history_evicted_total{reason="bytes"} is 0 after 64 MiB through a 4 MiB history`)
	}
	if metrics["wsd_broker_streams"] > channels {
		t.Errorf("wsd_broker_streams peaked at %d; cap %d", metrics["wsd_broker_streams"], channels)
	}
	if growth >= budget {
		t.Errorf("server RSS grew by %.2f MiB, want under %.2f MiB for a %d MiB history", float64(growth)/MiB, float64(budget)/MiB, maxHistory/MiB)
	}
}

// TestPublishChannelsRSS: each channel published to gets a stream in the
// broker (an entry, its name, an epoch, a history) whether or not anyone
// subscribes. 8 clients publish to 20,000 distinct random names of 250
// bytes on a server started with --max-channels 1000: 1,000 streams are
// made, every other publication is refused with TOO_MANY_CHANNELS and
// counted, the streams made go on taking publications, and the server's
// RSS grows by less than what 1,000 streams may cost (measured: 1.8 MiB,
// budget 4.4 MiB); a server without the cap keeps 20,000 and grows by
// 14.3 MiB.
func TestPublishChannelsRSS(t *testing.T) {
	const (
		maxChannels = 1000
		publishers  = 8
		perPub      = 2500
		nameLen     = 250
		// streamCost is what one stream may cost: the broker's entry, its
		// copy of the name (256 bytes in its size class), an epoch, a
		// history ring of 4 and the publication's copy, a map slot;
		// measured 0.75 KiB with the collector's headroom (14.3 MiB for
		// 20,000 streams without the cap), more than doubled.
		streamCost = 2 << 10
		// slack: the garbage of refused publications (each decoded name
		// is a new string, and so is the entry made for it and dropped)
		// and of replies, and the heap's granularity.
		slack  = 2 * MiB
		budget = maxChannels*streamCost*5/4 + slack
	)
	s := start(t, "--allow-client-publish", "--max-channels", strconv.Itoa(maxChannels))
	warm(t, s)
	cs := dialAll(t, s, publishers)
	names := make([][]string, publishers)
	for i := range names {
		names[i] = channelNames(perPub, nameLen)
	}
	// The working size first, with publications that make nothing: no
	// data (MISSING_DATA).
	if got, err := exchangeAll(cs, 256, 128, func(i, j int) []byte {
		return fmt.Appendf(nil, `{"type":"publish","id":%d,"channel":%q}`, j, names[i][j])
	}, nil); err != nil || got["MISSING_DATA"] != 256*publishers {
		t.Fatalf("publishing without data: %v %v, want MISSING_DATA", got, err)
	}
	before := s.rss(t)
	stopRSS := s.watchRSS(t)
	stopMetrics := s.watchMetrics(t, "wsd_broker_streams")
	kept := make([][]string, publishers) // the names acknowledged, by connection
	got, err := exchangeAll(cs, perPub, 128, func(i, j int) []byte {
		return fmt.Appendf(nil, `{"type":"publish","id":%d,"channel":%q,"data":{"n":%d}}`, j, names[i][j], j)
	}, func(i, j int, r reply) {
		if r.Type == "ack" {
			kept[i] = append(kept[i], names[i][j])
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	peak := stopRSS()
	metrics, scrapes := stopMetrics()
	m, err := s.scrape("wsd_broker_streams", "wsd_broker_channels_refused_total", "wsd_broker_published_total")
	if err != nil {
		t.Fatal(err)
	}
	growth := peak - before
	t.Logf("%d publications to distinct %d-byte names: replies %v; metrics %v; peaks over %d scrapes %v",
		perPub*publishers, nameLen, got, m, scrapes, metrics)
	t.Logf("server anonymous RSS %.1f MiB before, peak growth %.2f MiB, budget %.2f MiB",
		float64(before)/MiB, float64(growth)/MiB, float64(budget)/MiB)
	refused := perPub*publishers - maxChannels
	if got["ack"] != maxChannels || got["TOO_MANY_CHANNELS"] != refused {
		t.Errorf("replies %v, want %d acks and %d TOO_MANY_CHANNELS", got, maxChannels, refused)
	}
	if metrics["wsd_broker_streams"] > maxChannels || m["wsd_broker_streams"] != maxChannels {
		t.Errorf("wsd_broker_streams peaked at %d, is %d; cap %d", metrics["wsd_broker_streams"], m["wsd_broker_streams"], maxChannels)
	}
	if m["wsd_broker_channels_refused_total"] != refused || m["wsd_broker_published_total"] != maxChannels {
		t.Errorf("wsd_broker_channels_refused_total %d, wsd_broker_published_total %d; want %d and %d",
			m["wsd_broker_channels_refused_total"], m["wsd_broker_published_total"], refused, maxChannels)
	}
	if growth >= budget {
		t.Errorf("server RSS grew by %.2f MiB, want under %.2f MiB for %d streams", float64(growth)/MiB, float64(budget)/MiB, maxChannels)
	}
	// The streams made go on: a second publication to each gets offset 2.
	var again []string
	for _, k := range kept {
		again = append(again, k...)
	}
	msgs := make([][]byte, len(again))
	for j, name := range again {
		msgs[j] = fmt.Appendf(nil, `{"type":"publish","id":%d,"channel":%q,"data":2}`, j, name)
	}
	rs, err := exchange(cs[0], 0, msgs)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Type != "ack" || r.Offset != 2 {
			t.Fatalf("second publication to a stream made: %+v, want an ack with offset 2", r)
		}
	}
}
