// Package cluster tests several real wsd processes joined by one real
// Redis (--broker redis): cross-node delivery, presence, recovery on
// another node, a node killed, Redis stopped and restarted.
package cluster

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/internal/redistest"
	"github.com/wsdproject/wsd/internal/wsdproc"
	"github.com/wsdproject/wsd/internal/wstest"
)

const apiKey = "cluster-test-key"

func TestMain(m *testing.M) {
	code := m.Run()
	wsdproc.Cleanup()
	os.Exit(code)
}

// startNode runs a wsd process of the cluster on srv.
func startNode(t *testing.T, srv *redistest.Server, id string, extra ...string) *wsdproc.Proc {
	t.Helper()
	args := append([]string{"--broker", "redis", "--redis-addr", srv.Addr, "--node-id", id, "--api-key", apiKey,
		"--allow-client-publish", "--presence", "--history-size", "10000", "--history-ttl", "10m",
		"--redis-presence-ttl", "2s", "--redis-node-ttl", "2s", "--redis-timeout", "1s", "--loops", "2"}, extra...)
	p := wsdproc.Start(t, args...)
	deadline := time.Now().Add(wsdproc.Timeout)
	for {
		resp, err := http.Get("http://" + p.Admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s not ready; its log:\n%s", id, p.Log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type message struct {
	Type      string          `json:"type"`
	Channel   string          `json:"channel"`
	Offset    uint64          `json:"offset"`
	Epoch     string          `json:"epoch"`
	Data      json.RawMessage `json:"data"`
	Recovered *bool           `json:"recovered"`
	Code      string          `json:"code"`
}

func read(t *testing.T, c *wstest.Client) message {
	t.Helper()
	op, p, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var m message
	if op != frame.OpText || json.Unmarshal(p, &m) != nil {
		t.Fatalf("not a JSON text message: %q", p)
	}
	return m
}

func send(t *testing.T, c *wstest.Client, format string, args ...any) {
	t.Helper()
	if err := c.Send(frame.OpText, fmt.Appendf(nil, format, args...)); err != nil {
		t.Fatal(err)
	}
}

func subscribe(t *testing.T, c *wstest.Client, ch string) message {
	t.Helper()
	send(t, c, `{"type":"subscribe","channel":%q,"id":"s"}`, ch)
	m := read(t, c)
	if m.Type != "ack" {
		t.Fatalf("subscribe %s: %+v", ch, m)
	}
	return m
}

func dial(t *testing.T, p *wsdproc.Proc) *wstest.Client {
	t.Helper()
	return wstest.Dial(t, p.WS, "/ws", wstest.Options{})
}

// api calls the HTTP API of p; it returns the status and the decoded body.
func api(t *testing.T, p *wsdproc.Proc, method, path, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+p.Admin+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "apikey "+apiKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var v map[string]any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s %s: not JSON: %q", method, path, b)
	}
	return resp.StatusCode, v
}

func presence(t *testing.T, p *wsdproc.Proc, ch string) []string {
	t.Helper()
	code, v := api(t, p, "GET", "/api/presence?channel="+ch, "")
	if code != 200 {
		t.Fatalf("presence: %d %v", code, v)
	}
	var out []string
	list, _ := v["presence"].([]any)
	for _, e := range list {
		m, _ := e.(map[string]any)
		c, _ := m["client"].(string)
		out = append(out, c)
	}
	return out
}

// TestCluster: three nodes and one Redis. A client on node a receives, in
// order and once, what a client on node b and the HTTP API of node c
// publish; presence spans the nodes; a node killed with SIGKILL leaves
// presence when its entries expire; a client that moves from a to b with
// its last position recovers what it missed. (Entries live 2 s unless
// refreshed every third of that: a node must be late by more than a second
// to drop out while alive.)
func TestCluster(t *testing.T) {
	srv := redistest.Start(t)
	a, b, c := startNode(t, srv, "a"), startNode(t, srv, "b"), startNode(t, srv, "c")

	if _, info := api(t, c, "GET", "/api/info", ""); len(info["nodes"].([]any)) != 3 {
		t.Fatalf("/api/info on c: %v", info)
	}

	ca, cb := dial(t, a), dial(t, b)
	if ack := subscribe(t, ca, "room"); ack.Offset != 0 {
		t.Fatalf("subscribe on a: %+v", ack)
	}
	subscribe(t, cb, "room")

	// Publishers on b (a client) and c (the API) at once.
	const n = 100
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range n {
			if code, v := api(t, c, "POST", "/api/publish", fmt.Sprintf(`{"channel":"room","data":"c%d"}`, i)); code != 200 {
				t.Errorf("API publish %d: %d %v", i, code, v)
				return
			}
		}
	})
	pub := dial(t, b)
	for i := range n {
		send(t, pub, `{"type":"publish","channel":"room","data":"b%d","id":%d}`, i, i)
		if m := read(t, pub); m.Type != "ack" {
			t.Fatalf("client publish %d: %+v", i, m)
		}
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	// a sees offsets 1..2n in order, each publication once; the two
	// publishers' own orders are kept.
	seen := map[string]bool{}
	next := map[byte]int{'b': 0, 'c': 0}
	var last message
	for i := 1; i <= 2*n; i++ {
		m := read(t, ca)
		var d string
		if m.Type != "message" || m.Offset != uint64(i) || json.Unmarshal(m.Data, &d) != nil || seen[d] {
			t.Fatalf("message %d on a: %+v", i, m)
		}
		seen[d] = true
		if want := fmt.Sprintf("%c%d", d[0], next[d[0]]); d != want {
			t.Fatalf("message %d on a is %s, want %s next", i, d, want)
		}
		next[d[0]]++
		last = m
	}
	// b's subscriber too (its own node's publications come back through
	// Redis like the others).
	for i := 1; i <= 2*n; i++ {
		if m := read(t, cb); m.Offset != uint64(i) {
			t.Fatalf("message %d on b: %+v", i, m)
		}
	}

	// Nodes write their presence entries in the background.
	for deadline := time.Now().Add(wsdproc.Timeout); ; {
		got := presence(t, c, "room")
		if len(got) == 2 && strings.HasPrefix(got[0], "a-") && strings.HasPrefix(got[1], "b-") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("presence seen from c: %v", got)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Node a dies: its client's presence entry expires (--redis-presence-ttl
	// 2s), it leaves the registry, and its client moves to b.
	if err := a.Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = a.Cmd.Wait()
	deadline := time.Now().Add(wsdproc.Timeout)
	for {
		got := presence(t, c, "room")
		if len(got) == 1 && strings.HasPrefix(got[0], "b-") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("presence after a was killed: %v", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for {
		_, info := api(t, c, "GET", "/api/info", "")
		if len(info["nodes"].([]any)) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/api/info after a was killed: %v", info)
		}
		time.Sleep(50 * time.Millisecond)
	}
	const missed = 20
	for i := range missed {
		if code, v := api(t, c, "POST", "/api/publish", fmt.Sprintf(`{"channel":"room","data":"m%d"}`, i)); code != 200 {
			t.Fatalf("publish: %d %v", code, v)
		}
	}
	moved := dial(t, b)
	send(t, moved, `{"type":"subscribe","channel":"room","since":{"offset":%d,"epoch":%q}}`, last.Offset, last.Epoch)
	ack := read(t, moved)
	if ack.Type != "ack" || ack.Recovered == nil || !*ack.Recovered || ack.Offset != last.Offset+missed || ack.Epoch != last.Epoch {
		t.Fatalf("recovery on b: %+v", ack)
	}
	for i := range missed {
		m := read(t, moved)
		if m.Type != "message" || m.Offset != last.Offset+uint64(i)+1 || string(m.Data) != fmt.Sprintf(`"m%d"`, i) {
			t.Fatalf("recovered %d: %+v", i, m)
		}
	}
}

// TestClusterRedisOutage: Redis (with an fsync'd append-only file, so
// what it answered survives) is stopped for two seconds while a publisher
// keeps publishing through node b's API, then started again. The
// publisher gets errors for what was not accepted; node a's local client
// keeps working meanwhile; a's subscriber then receives every accepted
// publication, in order and once (what a missed live comes from history),
// and a client recovering from before the outage gets them too.
func TestClusterRedisOutage(t *testing.T) {
	srv := redistest.StartWith(t, redistest.Options{Persist: true})
	a, b := startNode(t, srv, "a"), startNode(t, srv, "b")
	sub := dial(t, a)
	subscribe(t, sub, "feed")

	type result struct {
		data   string
		offset uint64 // 0: refused
	}
	var (
		mu      sync.Mutex
		results []result
		stop    = make(chan struct{})
		done    = make(chan struct{})
	)
	go func() {
		defer close(done)
		client := &http.Client{Timeout: 5 * time.Second}
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			d := fmt.Sprintf("p%d", i)
			req, _ := http.NewRequest("POST", "http://"+b.Admin+"/api/publish", strings.NewReader(fmt.Sprintf(`{"channel":"feed","data":%q}`, d)))
			req.Header.Set("Authorization", "apikey "+apiKey)
			r := result{data: d}
			if resp, err := client.Do(req); err == nil {
				var v struct{ Offset uint64 }
				if resp.StatusCode == 200 && json.NewDecoder(resp.Body).Decode(&v) == nil {
					r.offset = v.Offset
				}
				resp.Body.Close()
			}
			mu.Lock()
			results = append(results, r)
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	accepted := func() int {
		mu.Lock()
		defer mu.Unlock()
		k := 0
		for _, r := range results {
			if r.offset != 0 {
				k++
			}
		}
		return k
	}
	for deadline := time.Now().Add(wsdproc.Timeout); accepted() < 20; {
		if time.Now().After(deadline) {
			t.Fatalf("%d publications accepted in %v", accepted(), wsdproc.Timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Where the subscriber is before the outage, for a recovery later.
	before := read(t, sub)

	srv.Stop()
	// Local traffic goes on without Redis.
	send(t, sub, `{"type":"echo","data":"still here"}`)
	waitReady := func(want int) {
		t.Helper()
		deadline := time.Now().Add(wsdproc.Timeout)
		for {
			resp, err := http.Get("http://" + a.Admin + "/readyz")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == want {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("/readyz of a never %d", want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitReady(http.StatusServiceUnavailable)
	time.Sleep(2 * time.Second)
	srv.Restart()
	waitReady(http.StatusOK)
	time.Sleep(time.Second) // publishing goes on after the restart
	close(stop)
	<-done

	mu.Lock()
	defer mu.Unlock()
	byOffset := map[uint64]string{}
	refused := 0
	var top uint64
	for _, r := range results {
		if r.offset == 0 {
			refused++
			continue
		}
		if prev, dup := byOffset[r.offset]; dup {
			t.Fatalf("offset %d given to %s and %s", r.offset, prev, r.data)
		}
		byOffset[r.offset] = r.data
		top = max(top, r.offset)
	}
	if refused == 0 {
		t.Fatal("no publish was refused while Redis was stopped")
	}
	t.Logf("%d publications accepted, %d refused", len(byOffset), refused)

	// The subscriber: the echo reply (while Redis was away) somewhere in
	// its stream, and offsets before.Offset+1 … top in order, each once.
	// An offset no publisher saw accepted can only be one whose answer was
	// lost (a timeout): its data must be one the publisher tried.
	tried := map[string]bool{}
	for _, r := range results {
		tried[r.data] = true
	}
	echoed := false
	for want := before.Offset + 1; want <= top; {
		m := read(t, sub)
		if m.Type == "echo_reply" {
			echoed = true
			continue
		}
		var d string
		if m.Type != "message" || m.Offset != want || json.Unmarshal(m.Data, &d) != nil || !tried[d] {
			t.Fatalf("subscriber: %+v, want offset %d", m, want)
		}
		if exp, ok := byOffset[want]; ok && exp != d {
			t.Fatalf("offset %d carries %s, the publisher was told %s", want, d, exp)
		}
		want++
	}
	if !echoed {
		if m := read(t, sub); m.Type != "echo_reply" {
			t.Fatalf("no echo reply: %+v", m)
		}
	}

	if n := a.Metric(t, "wsd_broker_redis_reconnects_total"); n < 1 {
		t.Fatalf("node a counted %d reconnections to Redis", n)
	}
	t.Logf("node a read %d publications from history after the outage", a.Metric(t, "wsd_broker_redis_refetched_total"))

	// A client that was away since before the outage recovers it all.
	c := dial(t, a)
	send(t, c, `{"type":"subscribe","channel":"feed","since":{"offset":%d,"epoch":%q}}`, before.Offset, before.Epoch)
	ack := read(t, c)
	if ack.Type != "ack" || ack.Recovered == nil || !*ack.Recovered || ack.Offset < top {
		t.Fatalf("recovery after the outage: %+v", ack)
	}
	for want := before.Offset + 1; want <= ack.Offset; want++ {
		if m := read(t, c); m.Offset != want {
			t.Fatalf("recovered: %+v, want offset %d", m, want)
		}
	}
}
