package broker

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsdproject/wsd/internal/redistest"
)

// waitFor bounds the waits for what must happen (a delivery over pub/sub,
// a reconnection): never what a test decides on.
const waitFor = 10 * time.Second

func newTestRedis(t testing.TB, srv *redistest.Server, h Handler, mod func(*RedisOptions)) *Redis {
	t.Helper()
	o := RedisOptions{Addrs: []string{srv.Addr}, NodeID: "n" + strconv.Itoa(int(nodeSeq.Add(1))), Prefix: "t"}
	if mod != nil {
		mod(&o)
	}
	r, err := NewRedis(o)
	if err != nil {
		t.Fatal(err)
	}
	if h == nil {
		h = nopHandler{}
	}
	if err := r.Run(h); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	waitReady(t, r)
	return r
}

var nodeSeq atomic.Int64

// abandon makes the broker stop as a killed node would: no more refreshes
// or announcements, nothing taken out of Redis.
func (r *Redis) abandon() {
	r.life.Lock()
	r.closed.Store(true)
	close(r.stop)
	r.life.Unlock()
	r.wg.Wait()
	r.client.Close()
}

// between says whether a RESP integer reply (":N") is within [lo, hi].
func between(reply string, lo, hi int64) bool {
	n, err := strconv.ParseInt(strings.TrimPrefix(reply, ":"), 10, 64)
	return err == nil && n >= lo && n <= hi
}

func waitReady(t testing.TB, r *Redis) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for r.Ready() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("broker not ready: %v", r.Ready())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitEvents waits until rec holds n events and returns them.
func waitEvents(t testing.TB, rec *recorder, n int) []event {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		rec.mu.Lock()
		k := len(rec.events)
		rec.mu.Unlock()
		if k >= n {
			return rec.take()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d events delivered, want %d: %v", k, n, rec.take())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRedisPublishHistory(t *testing.T) {
	srv := redistest.Start(t)
	r := newTestRedis(t, srv, nil, nil)
	opts := ChannelOptions{HistorySize: 5}

	// No stream: {0, ""}, and only {0, ""} (or nothing) recovers.
	pubs, pos, err := r.History("c", nil, 0)
	if err != nil || len(pubs) != 0 || pos != (Position{}) {
		t.Fatalf("history of a new channel: %v %v %v", pubs, pos, err)
	}
	if _, _, err := r.History("c", &Position{Offset: 3, Epoch: "x"}, 0); err != ErrUnrecoverable {
		t.Fatalf("recovery from an offset of no stream: %v", err)
	}
	if _, _, err := r.History("c", &Position{}, 0); err != nil {
		t.Fatalf("recovery from {0,\"\"} of no stream: %v", err)
	}
	// Reading and subscribing create nothing in Redis: made-up channel
	// names take no room there.
	if err := r.Subscribe("made-up"); err != nil {
		t.Fatal(err)
	}
	_, _, _ = r.History("made-up", nil, 0)
	if n, _ := srv.Do("EXISTS", "t:m:{made-up}", "t:h:{made-up}", "t:m:{c}", "t:h:{c}"); n != ":0" {
		t.Fatalf("channel keys after reads and a subscribe: EXISTS %s", n)
	}

	var first Position
	for i := 1; i <= 8; i++ {
		p, err := r.Publish("c", []byte(strconv.Itoa(i)), opts)
		if err != nil {
			t.Fatal(err)
		}
		if p.Offset != uint64(i) || len(p.Epoch) != 8 {
			t.Fatalf("publication %d at %+v", i, p)
		}
		if i == 1 {
			first = p
		} else if p.Epoch != first.Epoch {
			t.Fatalf("epoch changed from %q to %q", first.Epoch, p.Epoch)
		}
	}
	cur := Position{Offset: 8, Epoch: first.Epoch}

	pubs, pos, err = r.History("c", nil, 0)
	if err != nil || pos != cur || !equalOffsets(offsets(pubs), span(4, 8)) {
		t.Fatalf("history: %v %v %v", offsets(pubs), pos, err)
	}
	for _, p := range pubs {
		if string(p.Data) != strconv.FormatUint(p.Offset, 10) || p.Time <= 0 {
			t.Fatalf("publication %d: %q at %d", p.Offset, p.Data, p.Time)
		}
	}
	if pubs, _, _ := r.History("c", nil, 2); !equalOffsets(offsets(pubs), span(7, 8)) {
		t.Fatalf("newest 2: %v", offsets(pubs))
	}
	for _, c := range []struct {
		since Position
		limit int
		want  []uint64
		err   error
	}{
		{Position{5, first.Epoch}, 0, span(6, 8), nil},
		{Position{3, first.Epoch}, 0, span(4, 8), nil},
		{Position{8, first.Epoch}, 0, nil, nil},
		{Position{}, 0, nil, ErrUnrecoverable},               // offset 1 is trimmed
		{Position{2, first.Epoch}, 0, nil, ErrUnrecoverable}, // 3 is trimmed
		{Position{5, "other"}, 0, nil, ErrUnrecoverable},
		{Position{9, first.Epoch}, 0, nil, ErrUnrecoverable}, // ahead
		{Position{1 << 62, first.Epoch}, 0, nil, ErrUnrecoverable},
		{Position{5, first.Epoch}, 2, nil, ErrUnrecoverable}, // 3 follow, limit 2
		{Position{5, first.Epoch}, 3, span(6, 8), nil},
	} {
		pubs, pos, err := r.History("c", &c.since, c.limit)
		if err != c.err || pos != cur || !equalOffsets(offsets(pubs), c.want) {
			t.Errorf("since %+v limit %d: %v %v %v, want %v %v", c.since, c.limit, offsets(pubs), pos, err, c.want, c.err)
		}
	}

	// A channel that keeps no history still advances its offset, and its
	// stream stays a contiguous run ending at the current offset.
	if p, err := r.Publish("c", []byte("9"), ChannelOptions{}); err != nil || p.Offset != 9 {
		t.Fatalf("publish without history: %v %v", p, err)
	}
	if pubs, _, _ := r.History("c", nil, 0); len(pubs) != 0 {
		t.Fatalf("history after a publication not kept: %v", offsets(pubs))
	}
	if _, _, err := r.History("c", &Position{8, first.Epoch}, 0); err != ErrUnrecoverable {
		t.Fatalf("recovery over a publication not kept: %v", err)
	}
	if _, err := r.Publish("c", []byte("10"), opts); err != nil {
		t.Fatal(err)
	}
	if pubs, _, err := r.History("c", &Position{9, first.Epoch}, 0); err != nil || !equalOffsets(offsets(pubs), span(10, 10)) {
		t.Fatalf("recovery after history resumed: %v %v", offsets(pubs), err)
	}
	if _, err := r.Publish("c", nil, ChannelOptions{HistorySize: -1}); err == nil {
		t.Fatal("negative HistorySize accepted")
	}
}

func TestRedisHistoryTTL(t *testing.T) {
	srv := redistest.Start(t)
	r := newTestRedis(t, srv, nil, func(o *RedisOptions) { o.StreamIdle = 300 * time.Millisecond })
	opts := ChannelOptions{HistorySize: 10, HistoryTTL: 100 * time.Millisecond}
	p1, err := r.Publish("c", []byte("1"), opts)
	if err != nil {
		t.Fatal(err)
	}
	// The keys expire at max(HistoryTTL, StreamIdle): Redis says so (a
	// broker of its own, with times far enough apart to tell them apart).
	k := newTestRedis(t, srv, nil, func(o *RedisOptions) { o.StreamIdle, o.Prefix = 10*time.Second, "k" })
	_, _ = k.Publish("short", []byte("1"), opts)
	_, _ = k.Publish("long", []byte("1"), ChannelOptions{HistorySize: 10, HistoryTTL: 20 * time.Second})
	_, _ = k.Publish("none", []byte("1"), ChannelOptions{HistorySize: 10})
	if ttl, _ := srv.Do("PTTL", "k:m:{short}"); !between(ttl, 1000, 10_000) {
		t.Fatalf("PTTL with a short HistoryTTL: %s, want StreamIdle's 10 s", ttl)
	}
	if ttl, _ := srv.Do("PTTL", "k:h:{long}"); !between(ttl, 10_001, 20_000) {
		t.Fatalf("PTTL with a long HistoryTTL: %s, want its 20 s", ttl)
	}
	if ttl, _ := srv.Do("PTTL", "k:m:{none}"); ttl != ":-1" {
		t.Fatalf("PTTL of a history without an age limit: %s, want none (-1)", ttl)
	}
	time.Sleep(150 * time.Millisecond) // past HistoryTTL: 1 is too old
	if pubs, pos, _ := r.History("c", nil, 0); len(pubs) != 0 || pos != p1 {
		t.Fatalf("history past its TTL: %v at %v", offsets(pubs), pos)
	}
	if _, _, err := r.History("c", &Position{}, 0); err != ErrUnrecoverable {
		t.Fatalf("recovery of an expired publication: %v", err)
	}
	if _, err := r.Publish("c", []byte("2"), opts); err != nil {
		t.Fatal(err)
	}
	if pubs, _, err := r.History("c", &p1, 0); err != nil || !equalOffsets(offsets(pubs), span(2, 2)) {
		t.Fatalf("recovery after 1: %v %v", offsets(pubs), err)
	}
	if n, _ := srv.Do("XLEN", "t:h:{c}"); n != ":1" {
		t.Fatalf("the publish did not trim the expired entry: XLEN %s", n)
	}
	time.Sleep(350 * time.Millisecond) // past StreamIdle: the stream is gone
	p3, err := r.Publish("c", []byte("3"), opts)
	if err != nil || p3.Offset != 1 || p3.Epoch == p1.Epoch {
		t.Fatalf("publication after the stream expired: %+v %v (old epoch %q)", p3, err, p1.Epoch)
	}
	if _, _, err := r.History("c", &p1, 0); err != ErrUnrecoverable {
		t.Fatalf("recovery from the old epoch: %v", err)
	}
}

func TestRedisEpochChangesWhenRedisLosesData(t *testing.T) {
	srv := redistest.Start(t)
	r := newTestRedis(t, srv, nil, nil)
	opts := ChannelOptions{HistorySize: 10}
	p, _ := r.Publish("c", []byte("1"), opts)
	if _, err := srv.Do("FLUSHALL"); err != nil {
		t.Fatal(err)
	}
	q, err := r.Publish("c", []byte("2"), opts)
	if err != nil || q.Offset != 1 || q.Epoch == p.Epoch {
		t.Fatalf("after FLUSHALL: %+v %v (was %+v)", q, err, p)
	}
	if _, _, err := r.History("c", &p, 0); err != ErrUnrecoverable {
		t.Fatalf("recovery across the loss: %v", err)
	}
	// Only the meta key lost (evicted, say): a new epoch, and the old
	// stream is not taken for the new one's history.
	if _, err := srv.Do("DEL", "t:m:{c}"); err != nil {
		t.Fatal(err)
	}
	s, _ := r.Publish("c", []byte("3"), opts)
	if pubs, _, err := r.History("c", &Position{}, 0); s.Offset != 1 || err != nil || len(pubs) != 1 || string(pubs[0].Data) != "3" {
		t.Fatalf("history of the new epoch: %+v %v %v", s, pubs, err)
	}
	// Only the stream lost: the gap makes recovery fail, never skip.
	_, _ = r.Publish("c", []byte("4"), opts)
	if _, err := srv.Do("DEL", "t:h:{c}"); err != nil {
		t.Fatal(err)
	}
	_, _ = r.Publish("c", []byte("5"), opts)
	if _, _, err := r.History("c", &Position{1, s.Epoch}, 0); err != ErrUnrecoverable {
		t.Fatalf("recovery over lost history: %v", err)
	}
}

// TestRedisDelivery: a node receives every publication of other nodes'
// concurrent publishers once, in offset order, with sharded and plain
// pub/sub.
func TestRedisDelivery(t *testing.T) {
	srv := redistest.Start(t)
	for _, noSharded := range []bool{false, true} {
		t.Run(fmt.Sprintf("NoSharded=%v", noSharded), func(t *testing.T) {
			prefix := fmt.Sprintf("d%v", noSharded)
			mod := func(o *RedisOptions) { o.NoSharded = noSharded; o.Prefix = prefix }
			rec := &recorder{}
			a := newTestRedis(t, srv, rec, mod)
			if a.Sharded() == noSharded {
				t.Fatalf("Sharded() = %v with NoSharded %v on Redis 7", a.Sharded(), noSharded)
			}
			b := newTestRedis(t, srv, nil, mod)
			if err := a.Subscribe("c"); err != nil {
				t.Fatal(err)
			}
			const writers, each = 4, 50
			var mu sync.Mutex
			sent := map[uint64]string{}
			var wg sync.WaitGroup
			for w := range writers {
				wg.Go(func() {
					for i := range each {
						d := fmt.Sprintf(`"%d-%d"`, w, i)
						p, err := b.Publish("c", []byte(d), ChannelOptions{HistorySize: 10})
						if err != nil {
							t.Error(err)
							return
						}
						mu.Lock()
						sent[p.Offset] = d
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			ev := waitEvents(t, rec, writers*each)
			for i, e := range ev {
				if e.kind != "pub" || e.offset != uint64(i+1) || e.data != sent[e.offset] {
					t.Fatalf("delivery %d: %+v, want offset %d data %s", i, e, i+1, sent[uint64(i+1)])
				}
			}
			// Unsubscribed: nothing more arrives; a publication on b's own
			// subscription shows the pipe is still flowing.
			if err := a.Unsubscribe("c"); err != nil {
				t.Fatal(err)
			}
			if err := a.Subscribe("other"); err != nil {
				t.Fatal(err)
			}
			_, _ = b.Publish("c", []byte("1"), ChannelOptions{})
			_, _ = b.Publish("other", []byte("2"), ChannelOptions{})
			if ev := waitEvents(t, rec, 1); len(ev) != 1 || ev[0].channel != "other" {
				t.Fatalf("after unsubscribe: %+v", ev)
			}
		})
	}
}

// TestRedisGapFilled: a publication whose pub/sub message never reached the
// node (published on another pub/sub channel here) is read from history
// when the next one shows the gap, and delivered in order.
func TestRedisGapFilled(t *testing.T) {
	srv := redistest.Start(t)
	rec := &recorder{}
	a := newTestRedis(t, srv, rec, nil)
	a.fillBudget = 1 // a page per publication: the gap is read in order, page by page
	if err := a.Subscribe("c"); err != nil {
		t.Fatal(err)
	}
	opts := ChannelOptions{HistorySize: 10}
	_, _ = a.Publish("c", []byte("1"), opts)
	waitEvents(t, rec, 1)
	lost := func(data string) {
		t.Helper()
		ctx, cancel := a.ctx()
		defer cancel()
		err := publishScript.Exec(ctx, a.client, []string{a.metaKey("c"), a.streamKey("c"), "t:c:{elsewhere}"},
			[]string{data, "10", "0", "xxxxxxxx", "0", "SPUBLISH"}).Error()
		if err != nil {
			t.Fatal(err)
		}
	}
	lost("2")
	lost("3")
	_, _ = a.Publish("c", []byte("4"), opts)
	ev := waitEvents(t, rec, 3)
	for i, e := range ev {
		if e.offset != uint64(i+2) || e.data != strconv.Itoa(i+2) {
			t.Fatalf("delivery %d: %+v", i, e)
		}
	}
	if n := a.Stats().Refetched.Load(); n != 2 {
		t.Fatalf("%d publications read from history, want 2", n)
	}
	// A gap history no longer covers is skipped, counted.
	for i := 5; i <= 16; i++ {
		lost(strconv.Itoa(i))
	}
	_, _ = a.Publish("c", []byte("17"), opts)
	ev = waitEvents(t, rec, 10)
	if ev[0].offset != 8 || ev[9].offset != 17 {
		t.Fatalf("after a gap longer than history: %+v", ev)
	}
	if n := a.Stats().Skipped.Load(); n != 3 {
		t.Fatalf("%d skipped, want 3 (5, 6, 7)", n)
	}
}

// TestRedisReconnect: Redis goes away and comes back with its data (an
// append-only file): publishes meanwhile fail, the node reports not ready,
// subscribes again when Redis is back and delivers what was accepted while
// its pub/sub connection was down, from history, in order.
func TestRedisReconnect(t *testing.T) {
	srv := redistest.StartWith(t, redistest.Options{Persist: true})
	rec := &recorder{}
	a := newTestRedis(t, srv, rec, nil)
	b := newTestRedis(t, srv, nil, nil)
	if err := a.Subscribe("c"); err != nil {
		t.Fatal(err)
	}
	opts := ChannelOptions{HistorySize: 100}
	for i := 1; i <= 5; i++ {
		if _, err := b.Publish("c", []byte(strconv.Itoa(i)), opts); err != nil {
			t.Fatal(err)
		}
	}
	waitEvents(t, rec, 5)
	srv.Stop()
	if _, err := b.Publish("c", []byte("x"), opts); err == nil {
		t.Fatal("publish with Redis stopped returned no error")
	}
	deadline := time.Now().Add(waitFor)
	for a.Ready() == nil {
		if time.Now().After(deadline) {
			t.Fatal("still ready with Redis stopped")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := a.Subscribe("d"); !errors.Is(err, ErrRedisUnavailable) {
		t.Fatalf("subscribe with Redis stopped: %v", err)
	}
	srv.Restart()
	// Published as soon as Redis answers: a's pub/sub connection may not be
	// back yet, then these come from history.
	for i := 6; i <= 20; i++ {
		for {
			_, err := b.Publish("c", []byte(strconv.Itoa(i)), opts)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("publish after restart: %v", err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	ev := waitEvents(t, rec, 15)
	for i, e := range ev {
		if e.offset != uint64(i+6) || e.data != strconv.Itoa(i+6) {
			t.Fatalf("delivery %d after the restart: %+v", i, e)
		}
	}
	waitReady(t, a)
	if a.Stats().Reconnects.Load() == 0 {
		t.Fatal("no reconnection counted")
	}
}

func TestRedisPresence(t *testing.T) {
	srv := redistest.Start(t)
	// Refreshed every third: a's entry survives unless its refresh is
	// late by two thirds of the TTL.
	ttl := time.Second
	mod := func(o *RedisOptions) { o.PresenceTTL = ttl }
	a := newTestRedis(t, srv, nil, mod)
	b := newTestRedis(t, srv, nil, mod)
	infoA := ClientInfo{Client: "a-1", User: "u1", Info: []byte(`{"x":1}`)}
	// Presence writes name the script by its SHA-1 first: Redis not
	// knowing it yet (a restart forgets scripts) must not lose them.
	if _, err := srv.Do("SCRIPT", "FLUSH"); err != nil {
		t.Fatal(err)
	}
	if err := a.AddPresence("c", infoA); err != nil {
		t.Fatal(err)
	}
	if err := b.AddPresence("c", ClientInfo{Client: "b-1"}); err != nil {
		t.Fatal(err)
	}
	a.ops.waitQueued(waitFor) // b's own Presence waits for b's writes, not a's
	got, err := b.Presence("c")
	if err != nil || len(got) != 2 || got[0].Client != "a-1" || got[0].User != "u1" || string(got[0].Info) != `{"x":1}` || got[1].Client != "b-1" {
		t.Fatalf("presence: %+v %v", got, err)
	}
	if err := b.RemovePresence("c", "b-1"); err != nil {
		t.Fatal(err)
	}
	if err := b.AddPresence("c", ClientInfo{Client: "b-2"}); err != nil {
		t.Fatal(err)
	}
	// b dies: it stops refreshing, and its entries expire; a's are refreshed.
	b.abandon()
	time.Sleep(ttl + ttl/2)
	got, err = a.Presence("c")
	if err != nil || len(got) != 1 || got[0].Client != "a-1" {
		t.Fatalf("presence after b died: %+v %v", got, err)
	}
	if n, _ := srv.Do("HLEN", "t:p:{c}"); n != ":1" {
		t.Fatalf("expired entries still in the hash: HLEN %s", n)
	}
	// Close takes the node's entries out at once.
	_ = a.Close()
	c := newTestRedis(t, srv, nil, mod)
	if got, err := c.Presence("c"); err != nil || len(got) != 0 {
		t.Fatalf("presence after a closed: %+v %v", got, err)
	}
}

func TestRedisJoinLeave(t *testing.T) {
	srv := redistest.Start(t)
	rec := &recorder{}
	a := newTestRedis(t, srv, rec, nil)
	b := newTestRedis(t, srv, nil, nil)
	if err := a.Subscribe("c"); err != nil {
		t.Fatal(err)
	}
	// Events are queued: in order with each other, not with publications.
	_ = b.PublishJoin("c", ClientInfo{Client: "x"})
	_ = b.PublishLeave("c", ClientInfo{Client: "x"})
	ev := waitEvents(t, rec, 2)
	if ev[0].kind != "join" || ev[0].client != "x" || ev[1].kind != "leave" || ev[1].client != "x" {
		t.Fatalf("events: %+v", ev)
	}
}

func TestRedisRegistry(t *testing.T) {
	srv := redistest.Start(t)
	ttl := time.Second
	conns := 7
	a := newTestRedis(t, srv, nil, func(o *RedisOptions) {
		o.NodeTTL, o.NodeID, o.NodeAddress = ttl, "a", "10.0.0.1:8080"
		o.Connections = func() int { return conns }
	})
	b := newTestRedis(t, srv, nil, func(o *RedisOptions) { o.NodeTTL, o.NodeID = ttl, "b" })
	c := newTestRedis(t, srv, nil, func(o *RedisOptions) { o.NodeTTL, o.NodeID = ttl, "c" })
	nodes, err := c.Nodes()
	if err != nil || len(nodes) != 3 || nodes[0].ID != "a" || nodes[0].Address != "10.0.0.1:8080" || nodes[0].Connections != 7 || nodes[1].ID != "b" {
		t.Fatalf("nodes: %+v %v", nodes, err)
	}
	_ = b.Close() // gone at once
	a.abandon()   // gone after its TTL
	if nodes, _ := c.Nodes(); len(nodes) != 2 {
		t.Fatalf("nodes after b closed: %+v", nodes)
	}
	time.Sleep(ttl + ttl/2)
	if nodes, _ := c.Nodes(); len(nodes) != 1 || nodes[0].ID != "c" {
		t.Fatalf("nodes after a died: %+v", nodes)
	}
}

func TestRedisOptions(t *testing.T) {
	if _, err := NewRedis(RedisOptions{}); err == nil {
		t.Fatal("no address accepted")
	}
	if _, err := NewRedis(RedisOptions{Addrs: []string{"127.0.0.1:1"}, Prefix: "a{b}"}); err == nil {
		t.Fatal("prefix with braces accepted")
	}
	if _, err := NewRedis(RedisOptions{Addrs: []string{"127.0.0.1:1"}, Timeout: 200 * time.Millisecond}); err == nil {
		t.Fatal("connected to nothing")
	}
}

// TestRedisSubscribedStreamKept: a channel some node subscribes to keeps
// its stream past StreamIdle without publications; one nobody subscribes
// to does not.
func TestRedisSubscribedStreamKept(t *testing.T) {
	srv := redistest.Start(t)
	idle := time.Second // kept every third: a keep late by two thirds would lose it
	a := newTestRedis(t, srv, nil, func(o *RedisOptions) { o.StreamIdle = idle })
	if err := a.Subscribe("kept"); err != nil {
		t.Fatal(err)
	}
	k1, _ := a.Publish("kept", []byte("1"), ChannelOptions{})
	g1, _ := a.Publish("gone", []byte("1"), ChannelOptions{})
	time.Sleep(idle + idle/2)
	k2, err1 := a.Publish("kept", []byte("2"), ChannelOptions{})
	g2, err2 := a.Publish("gone", []byte("2"), ChannelOptions{})
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if k2.Epoch != k1.Epoch || k2.Offset != 2 {
		t.Fatalf("subscribed channel: %+v then %+v", k1, k2)
	}
	if g2.Epoch == g1.Epoch || g2.Offset != 1 {
		t.Fatalf("channel nobody subscribes to: %+v then %+v", g1, g2)
	}
}

// TestRedisSentinel: the broker finds its master through a sentinel.
func TestRedisSentinel(t *testing.T) {
	srv := redistest.Start(t)
	sen := redistest.StartSentinel(t, srv)
	rec := &recorder{}
	a := newTestRedis(t, srv, rec, func(o *RedisOptions) { o.Addrs, o.SentinelMaster = []string{sen.Addr}, sen.Master })
	if err := a.Subscribe("c"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Publish("c", []byte("1"), ChannelOptions{HistorySize: 1}); err != nil {
		t.Fatal(err)
	}
	if ev := waitEvents(t, rec, 1); ev[0].offset != 1 || ev[0].data != "1" {
		t.Fatalf("through the sentinel: %+v", ev)
	}
	// It is the master's data: read there directly.
	if n, _ := srv.Do("XLEN", "t:h:{c}"); n != ":1" {
		t.Fatalf("XLEN on the master: %s", n)
	}
}

func TestRedisOpQueue(t *testing.T) {
	var q opQueue
	q.init()
	for i := range maxQueuedOps {
		if err := q.push(redisOp{client: strconv.Itoa(i)}); err != nil {
			t.Fatalf("push %d: %v", i, err)
		}
	}
	if err := q.push(redisOp{}); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("push past the bound: %v", err)
	}
	waited := make(chan struct{})
	go func() { q.waitQueued(waitFor); close(waited) }()
	for k := 0; ; {
		batch := q.take(opsBatch)
		if len(batch) == 0 {
			break
		}
		if batch[0].client != strconv.Itoa(k) {
			t.Fatalf("op %s taken at %d: not in order", batch[0].client, k)
		}
		k += len(batch)
		select {
		case <-waited:
			if k < maxQueuedOps {
				t.Fatalf("waitQueued returned after %d of %d ops", k, maxQueuedOps)
			}
		default:
		}
		q.finished(len(batch))
	}
	<-waited
	if err := q.push(redisOp{}); err != nil {
		t.Fatalf("push after the queue drained: %v", err)
	}
}

// epochRecorder is a recorder that also records HandleEpoch, as an event
// of kind "epoch".
type epochRecorder struct{ recorder }

func (r *epochRecorder) HandleEpoch(channel string, pos Position) {
	r.mu.Lock()
	r.events = append(r.events, event{kind: "epoch", channel: channel, epoch: pos.Epoch})
	r.mu.Unlock()
}

// publishRetry publishes until Redis answers (it is coming back).
func publishRetry(t testing.TB, r *Redis, ch, data string, opts ChannelOptions) Position {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		p, err := r.Publish(ch, []byte(data), opts)
		if err == nil {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("publish %q: %v", data, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRedisRollbackStartsNewEpoch: Redis restarts from a snapshot older
// than what a node delivered (RDB, AOF everysec, a failover to a lagging
// replica), so the stream is back at an older offset of the same epoch.
// The node must not take the publications that reuse the lost offsets for
// duplicates: it gives the stream a new epoch (its subscribers' positions
// are worthless: they are told, not left missing publications) and
// delivers from it.
func TestRedisRollbackStartsNewEpoch(t *testing.T) {
	srv := redistest.Start(t)
	rec := &epochRecorder{}
	sub := newTestRedis(t, srv, rec, nil)
	pubr := newTestRedis(t, srv, nil, nil)
	if err := sub.Subscribe("c"); err != nil {
		t.Fatal(err)
	}
	opts := ChannelOptions{HistorySize: 100}
	for i := 1; i <= 6; i++ {
		if _, err := pubr.Publish("c", []byte(strconv.Itoa(i)), opts); err != nil {
			t.Fatal(err)
		}
		if i == 3 {
			if r, err := srv.Do("SAVE"); err != nil || r != "+OK" {
				t.Fatalf("SAVE: %q %v", r, err)
			}
		}
	}
	ev := waitEvents(t, &rec.recorder, 6)
	old := Position{Offset: 6, Epoch: ev[5].epoch}
	srv.Stop()
	srv.Restart() // from the snapshot: offset 3 of the same epoch
	// The node resynchronizes, finds Redis behind what it delivered.
	ev = waitEvents(t, &rec.recorder, 1)
	if len(ev) != 1 || ev[0].kind != "epoch" || ev[0].epoch == "" || ev[0].epoch == old.Epoch {
		t.Fatalf("after Redis came back behind the node: %+v, want a new epoch (old %q)", ev, old.Epoch)
	}
	epoch := ev[0].epoch
	p := publishRetry(t, pubr, "c", "7", opts)
	if p != (Position{Offset: 1, Epoch: epoch}) {
		t.Fatalf("publication after the rollback at %+v, want offset 1 of %q", p, epoch)
	}
	ev = waitEvents(t, &rec.recorder, 1)
	if len(ev) != 1 || ev[0].kind != "pub" || ev[0].offset != 1 || ev[0].epoch != epoch || ev[0].data != "7" {
		t.Fatalf("delivered after the rollback: %+v", ev)
	}
	for _, since := range []Position{old, {Offset: 3, Epoch: old.Epoch}} {
		if _, _, err := pubr.History("c", &since, 0); err != ErrUnrecoverable {
			t.Fatalf("recovery from %+v of the rolled-back epoch: %v", since, err)
		}
	}
	if pubs, pos, err := pubr.History("c", nil, 0); err != nil || len(pubs) != 1 || string(pubs[0].Data) != "7" || pos != p {
		t.Fatalf("history of the new epoch: %+v %+v %v", pubs, pos, err)
	}
}

// TestRedisRollbackSeenInPublications: Redis went back (as in
// TestRedisRollbackStartsNewEpoch) and publications reused the lost
// offsets before the node looked: a node learns it from a publication
// that reuses an offset it delivered (a later time than the one it
// delivered there), or, filling a gap, from history holding another
// publication at its last offset. Either way a new epoch, and a message
// of the old epoch still queued does not switch the node back.
func TestRedisRollbackSeenInPublications(t *testing.T) {
	for _, viaGap := range []bool{false, true} {
		t.Run(fmt.Sprintf("viaGap=%v", viaGap), func(t *testing.T) {
			srv := redistest.Start(t)
			rec := &epochRecorder{}
			sub := newTestRedis(t, srv, rec, nil)
			pubr := newTestRedis(t, srv, nil, nil)
			if err := sub.Subscribe("c"); err != nil {
				t.Fatal(err)
			}
			opts := ChannelOptions{HistorySize: 100}
			for i := 1; i <= 6; i++ {
				if _, err := pubr.Publish("c", []byte(strconv.Itoa(i)), opts); err != nil {
					t.Fatal(err)
				}
			}
			old := Position{Offset: 6, Epoch: waitEvents(t, &rec.recorder, 6)[5].epoch}
			// Redis loses 4..6, the node's connection staying up.
			for _, cmd := range [][]string{{"XTRIM", "t:h:{c}", "MAXLEN", "3"}, {"HSET", "t:m:{c}", "o", "3"}} {
				if _, err := srv.Do(cmd...); err != nil {
					t.Fatal(err)
				}
			}
			// The new publications are at a later millisecond than the lost 6.
			time.Sleep(5 * time.Millisecond)
			if viaGap {
				// 4..7 of the rolled-back stream never reach the node (sent
				// on another pub/sub channel); 8 shows it a gap.
				for i := 4; i <= 7; i++ {
					ctx, cancel := pubr.ctx()
					err := publishScript.Exec(ctx, pubr.client, []string{pubr.metaKey("c"), pubr.streamKey("c"), "t:c:{elsewhere}"},
						[]string{"new" + strconv.Itoa(i), "100", "0", "xxxxxxxx", "0", "SPUBLISH"}).Error()
					cancel()
					if err != nil {
						t.Fatal(err)
					}
				}
				_, _ = pubr.Publish("c", []byte("new8"), opts)
			} else {
				_, _ = pubr.Publish("c", []byte("new4"), opts)
			}
			ev := waitEvents(t, &rec.recorder, 1)
			if len(ev) != 1 || ev[0].kind != "epoch" || ev[0].epoch == "" || ev[0].epoch == old.Epoch {
				t.Fatalf("after publications reused lost offsets: %+v, want a new epoch (old %q)", ev, old.Epoch)
			}
			epoch := ev[0].epoch
			// A message of the old epoch still queued: not a new epoch.
			if _, err := srv.Do("SPUBLISH", "t:c:{c}", fmt.Sprintf("p9 %d %s stale", time.Now().UnixMilli(), old.Epoch)); err != nil {
				t.Fatal(err)
			}
			p, err := pubr.Publish("c", []byte("next"), opts)
			if err != nil || p != (Position{Offset: 1, Epoch: epoch}) {
				t.Fatalf("publication after the new epoch: %+v %v, want offset 1 of %q", p, err, epoch)
			}
			ev = waitEvents(t, &rec.recorder, 1)
			if len(ev) != 1 || ev[0].kind != "pub" || ev[0].offset != 1 || ev[0].epoch != epoch || ev[0].data != "next" {
				t.Fatalf("delivered after the new epoch: %+v", ev)
			}
			if _, _, err := pubr.History("c", &old, 0); err != ErrUnrecoverable {
				t.Fatalf("recovery from the rolled-back epoch: %v", err)
			}
		})
	}
}

// TestRedisFillPastExpiredPage: a gap longer than one page of history
// whose oldest entries are past the history TTL but not trimmed yet (no
// publish since they aged) while newer ones are retained: the node
// delivers the retained ones, not skipping them for the expired page.
func TestRedisFillPastExpiredPage(t *testing.T) {
	srv := redistest.Start(t)
	rec := &recorder{}
	a := newTestRedis(t, srv, rec, nil)
	a.fillBudget = 3 // pages of three one-byte publications
	// A stream at offset 0 of epoch E with a 5 s history TTL, so that the
	// node subscribes at (E, 0).
	do := func(args ...string) {
		t.Helper()
		if r, err := srv.Do(args...); err != nil || strings.HasPrefix(r, "-") {
			t.Fatalf("%v: %q %v", args, r, err)
		}
	}
	do("HSET", "t:m:{c}", "o", "0", "e", "epochE00", "t", "5000")
	if err := a.Subscribe("c"); err != nil {
		t.Fatal(err)
	}
	// Then, unseen by the node (no pub/sub message): 1..5 ten seconds old
	// (explicit stream ids), 6..10 now.
	old := time.Now().Add(-10 * time.Second).UnixMilli()
	for i := 1; i <= 10; i++ {
		id := "*"
		if i <= 5 {
			id = fmt.Sprintf("%d-%d", old, i)
		}
		do("XADD", "t:h:{c}", id, "o", strconv.Itoa(i), "d", strconv.Itoa(i%10))
	}
	do("HSET", "t:m:{c}", "o", "10")
	if pubs, _, err := a.History("c", nil, 0); err != nil || len(pubs) != 5 || pubs[0].Offset != 6 {
		t.Fatalf("history retains %+v %v, want 6..10", pubs, err)
	}
	// The node's pub/sub connection breaks: it resynchronizes from (E, 0).
	do("CLIENT", "KILL", "TYPE", "pubsub")
	ev := waitEvents(t, rec, 5)
	for i, e := range ev {
		if e.offset != uint64(6+i) {
			t.Fatalf("delivered %+v, want 6..10", ev)
		}
	}
	if n := a.Stats().Skipped.Load(); n != 5 {
		t.Fatalf("%d skipped, want 5 (1..5, past the TTL)", n)
	}
}

// TestRedisOutageFailsFast: History and Presence are called on event
// loops (client requests, recoveries): with Redis away they return an
// error at once instead of holding the loop until the command timeout
// (rueidis retries read-only commands until then). The bound is half the
// timeout, far above what a prompt answer takes even on a loaded machine.
func TestRedisOutageFailsFast(t *testing.T) {
	srv := redistest.Start(t)
	const timeout = 10 * time.Second
	a := newTestRedis(t, srv, nil, func(o *RedisOptions) { o.Timeout = timeout })
	opts := ChannelOptions{HistorySize: 10}
	p, err := a.Publish("c", []byte("1"), opts)
	if err != nil {
		t.Fatal(err)
	}
	calls := []struct {
		name string
		call func() error
	}{
		{"History", func() error { _, _, err := a.History("c", nil, 0); return err }},
		{"History since", func() error { _, _, err := a.History("c", &p, 0); return err }},
		{"Presence", func() error { _, err := a.Presence("c"); return err }},
	}
	check := func(when string, kind error) {
		t.Helper()
		for _, c := range calls {
			t0 := time.Now()
			err := c.call()
			d := time.Since(t0)
			t.Logf("%s %s: %v after %v", when, c.name, err, d)
			if err == nil || (kind != nil && !errors.Is(err, kind)) {
				t.Fatalf("%s %s: error %v, want %v", when, c.name, err, kind)
			}
			if d > timeout/2 {
				t.Fatalf("%s %s took %v (timeout %v): the loop would be held", when, c.name, d, timeout)
			}
		}
	}
	srv.Stop()
	// Whether or not the node has noticed yet: an error, promptly.
	check("Redis just stopped", nil)
	deadline := time.Now().Add(waitFor)
	for a.Ready() == nil {
		if time.Now().After(deadline) {
			t.Fatal("still ready with Redis stopped")
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = a.AddPresence("c", ClientInfo{Client: "x"}) // queued: Presence waits for it no more
	check("the node knows Redis is away", ErrRedisUnavailable)
	// A node that has not noticed yet (a Redis that stops answering
	// without closing connections is noticed only by a timeout): the
	// commands go to Redis, and are sent once, not retried until the
	// timeout. (Only Redis coming back would set ready again: it stays
	// away.)
	a.ready.Store(true)
	check("the node has not noticed", nil)
	a.ready.Store(false)
}

// TestRedisPresenceRefreshKeepsNoRemoved: entries removed while a refresh
// of the node's presence is under way stay removed (the refresh writes
// what the node had when it read it; a removal must not be overwritten by
// a refresh that read the entry before it). Removals are spread over more
// than a refresh period so that passes run amid them.
func TestRedisPresenceRefreshKeepsNoRemoved(t *testing.T) {
	srv := redistest.Start(t)
	const ttl = 3 * time.Second // a refresh every second; entries outlive the check
	r := newTestRedis(t, srv, nil, func(o *RedisOptions) { o.PresenceTTL = ttl })
	const n = 3000
	for i := range n {
		if err := r.AddPresence("c"+strconv.Itoa(i), ClientInfo{Client: "x" + strconv.Itoa(i)}); err != nil {
			t.Fatal(err)
		}
	}
	r.ops.waitQueued(waitFor)
	for i := range n {
		if err := r.RemovePresence("c"+strconv.Itoa(i), "x"+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Microsecond)
	}
	r.ops.waitQueued(waitFor)
	// A refresh pass that began amid the removals has written by now.
	time.Sleep(ttl / 3)
	left, err := srv.Do("EVAL", "return #redis.call('KEYS', ARGV[1])", "0", "t:p:*")
	if err != nil || left != ":0" {
		t.Fatalf("presence hashes left after every entry was removed: %s %v", left, err)
	}
}

// TestRedisLargeOffsets: offsets past 1e14 (Lua concatenates numbers as
// %.14g: "1e+14") travel in pub/sub messages and history as integers.
func TestRedisLargeOffsets(t *testing.T) {
	srv := redistest.Start(t)
	rec := &recorder{}
	a := newTestRedis(t, srv, rec, nil)
	const start = 100_000_000_000_000 - 2
	if _, err := srv.Do("HSET", "t:m:{c}", "o", strconv.Itoa(start), "e", "epochE00"); err != nil {
		t.Fatal(err)
	}
	if err := a.Subscribe("c"); err != nil {
		t.Fatal(err)
	}
	opts := ChannelOptions{HistorySize: 10}
	for i := uint64(1); i <= 3; i++ {
		p, err := a.Publish("c", []byte(strconv.FormatUint(i, 10)), opts)
		if err != nil || p.Offset != start+i {
			t.Fatalf("publish %d: %+v %v", i, p, err)
		}
	}
	ev := waitEvents(t, rec, 3)
	for i, e := range ev {
		if e.offset != start+uint64(i)+1 || e.data != strconv.Itoa(i+1) {
			t.Fatalf("delivered %+v", ev)
		}
	}
	pubs, pos, err := a.History("c", &Position{Offset: start, Epoch: "epochE00"}, 0)
	if err != nil || len(pubs) != 3 || pubs[2].Offset != start+3 || pos.Offset != start+3 {
		t.Fatalf("history: %+v %+v %v", pubs, pos, err)
	}
	if n := a.Stats().BadMessages.Load(); n != 0 {
		t.Fatalf("%d messages did not parse", n)
	}
}

// TestRedisUnsubscribeDuringResubscription: channels unsubscribed while
// the node subscribes again after a reconnection (several batches) are
// not left subscribed on Redis, which would send the node their messages
// for nothing until the next reconnection.
func TestRedisUnsubscribeDuringResubscription(t *testing.T) {
	srv := redistest.Start(t)
	a := newTestRedis(t, srv, nil, nil)
	const n = 6 * subscribeBatch
	for i := range n {
		if err := a.Subscribe("c" + strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := srv.Do("CLIENT", "KILL", "TYPE", "pubsub"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(waitFor)
	for a.Ready() == nil {
		if time.Now().After(deadline) {
			t.Fatal("still ready after its pub/sub connection was killed")
		}
		time.Sleep(time.Millisecond)
	}
	// Unsubscribe everything while the node reconnects and resubscribes:
	// from when the node resubscribes (its connection is back: some
	// channels are subscribed on Redis again), so that some land amid the
	// resubscription's batches.
	for {
		got, err := srv.Do("PUBSUB", "SHARDCHANNELS", "t:c:*")
		if err != nil {
			t.Fatal(err)
		}
		if got != "*0" || a.Ready() == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the node did not resubscribe")
		}
	}
	for i := range n {
		if err := a.Unsubscribe("c" + strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	waitReady(t, a)
	if got, err := srv.Do("PUBSUB", "SHARDCHANNELS", "t:c:*"); err != nil || got != "*0" {
		t.Fatalf("channels still subscribed on Redis after every Unsubscribe: %s %v", got, err)
	}
}

// TestRedisRollbackSeenByPublisher: a node subscribed to a channel knows
// the offset it delivered; when it publishes to a stream that went back
// below it (as in TestRedisRollbackStartsNewEpoch), the publication
// starts the new epoch instead of reusing a delivered offset.
func TestRedisRollbackSeenByPublisher(t *testing.T) {
	srv := redistest.Start(t)
	rec := &epochRecorder{}
	a := newTestRedis(t, srv, rec, nil)
	if err := a.Subscribe("c"); err != nil {
		t.Fatal(err)
	}
	opts := ChannelOptions{HistorySize: 100}
	for i := 1; i <= 6; i++ {
		if _, err := a.Publish("c", []byte(strconv.Itoa(i)), opts); err != nil {
			t.Fatal(err)
		}
	}
	old := Position{Offset: 6, Epoch: waitEvents(t, &rec.recorder, 6)[5].epoch}
	for _, cmd := range [][]string{{"XTRIM", "t:h:{c}", "MAXLEN", "3"}, {"HSET", "t:m:{c}", "o", "3"}} {
		if _, err := srv.Do(cmd...); err != nil {
			t.Fatal(err)
		}
	}
	p, err := a.Publish("c", []byte("new"), opts)
	if err != nil || p.Offset != 1 || p.Epoch == old.Epoch {
		t.Fatalf("publication to a stream gone back below the publisher's delivered offset: %+v %v (old %+v)", p, err, old)
	}
	ev := waitEvents(t, &rec.recorder, 2)
	if ev[0].kind != "epoch" || ev[0].epoch != p.Epoch || ev[1].kind != "pub" || ev[1].offset != 1 || ev[1].data != "new" {
		t.Fatalf("delivered: %+v", ev)
	}
	if _, _, err := a.History("c", &Position{Offset: 3, Epoch: old.Epoch}, 0); err != ErrUnrecoverable {
		t.Fatalf("recovery from the rolled-back epoch: %v", err)
	}
}
