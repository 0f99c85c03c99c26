// Package hostile attacks a real wsd process (the binary, built once) the
// way an anonymous client on the internet could, and measures what that
// costs the server: its resident memory, read from /proc, and the outcome
// on the wire. Each attack is bounded in bytes and time.
package hostile

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/internal/wstest"
)

var bin string // the wsd binary, built by TestMain

// The servers run with GOGC=25, so that their RSS follows the memory they
// hold rather than the garbage collector's headroom (with the default of
// 100 the heap may reach twice what is live before a collection).
const gogc = "25"

// markBound is what one connection at the default 1 MiB mark may cost in
// RSS: gnet keeps each unsent write in a buffer rounded up to a power of
// two (up to twice the bytes, for frames just over one), the collector's
// 25% headroom on that, and 1 MiB for everything else that moves.
const markBound = 2*MiB*5/4 + MiB

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "wsd-hostile")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "wsd")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/wsd").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// server is one wsd process.
type server struct {
	cmd   *exec.Cmd
	ws    string // host:port
	admin string // host:port
}

// start runs wsd with args on free loopback ports and waits until it listens.
func start(t *testing.T, args ...string) *server {
	t.Helper()
	args = append([]string{"--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--log-format", "json"}, args...)
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "GOGC="+gogc)
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	s := &server{cmd: cmd}
	sc := bufio.NewScanner(stderr)
	for (s.ws == "" || s.admin == "") && sc.Scan() {
		var line struct{ Msg, Addr string }
		if json.Unmarshal(sc.Bytes(), &line) != nil {
			continue
		}
		switch line.Msg {
		case "listening":
			s.ws = line.Addr
		case "admin listening":
			s.admin = line.Addr
		}
	}
	go io.Copy(io.Discard, stderr)
	if s.ws == "" || s.admin == "" {
		t.Fatalf("wsd did not start (ws %q, admin %q)", s.ws, s.admin)
	}
	return s
}

// readRSS returns the resident set size of process pid in bytes.
func readRSS(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no VmRSS", pid)
}

// rss returns the server's resident set size in bytes.
func (s *server) rss(t testing.TB) int {
	t.Helper()
	n, err := readRSS(s.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// watchRSS samples the server's RSS every 20ms until stop is called, which
// returns the highest sample.
func (s *server) watchRSS(t testing.TB) (stop func() int) {
	var (
		mu   sync.Mutex
		peak = s.rss(t)
		done = make(chan struct{})
		wg   sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-done:
				return
			case <-tk.C:
				n, err := readRSS(s.cmd.Process.Pid)
				if err != nil {
					return
				}
				mu.Lock()
				peak = max(peak, n)
				mu.Unlock()
			}
		}
	}()
	return func() int {
		close(done)
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return max(peak, s.rss(t))
	}
}

// metric reads one sample from the server's /metrics.
func (s *server) metric(t testing.TB, sample string) int {
	t.Helper()
	resp, err := http.Get("http://" + s.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), sample+" "); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no metric %s", sample)
	return 0
}

// waitMetric waits, bounded, for a count that is already decided to show.
func (s *server) waitMetric(t testing.TB, sample string, want int) {
	t.Helper()
	deadline := time.Now().Add(wstest.Timeout)
	for s.metric(t, sample) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s = %d, want %d", sample, s.metric(t, sample), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// warm makes the server allocate what any busy server holds anyway (loop
// scratch buffers, pools), so that growth measured after it is the attack's.
func warm(t *testing.T, s *server) {
	t.Helper()
	c := wstest.Dial(t, s.ws, "/ws", wstest.Options{})
	msg := []byte(`{"type":"echo","data":"` + strings.Repeat("w", 100<<10) + `"}`)
	for range 20 {
		if err := c.Send(frame.OpText, msg); err != nil {
			t.Fatal(err)
		}
		if _, _, err := c.ReadMessage(); err != nil {
			t.Fatal(err)
		}
	}
	c.Conn.Close()
	time.Sleep(200 * time.Millisecond)
}

const MiB = 1 << 20

// TestLengthOverflowStream: a continuation frame announcing a length near
// 2^63 after a first fragment once wrapped the message-size check; the
// client then streamed 64 MiB and the server kept all of it. Now the
// connection is failed with 1009 at the header and the server's RSS does
// not follow the stream.
func TestLengthOverflowStream(t *testing.T) {
	s := start(t)
	warm(t, s)
	c := wstest.Dial(t, s.ws, "/ws", wstest.Options{})
	before := s.rss(t)
	stop := s.watchRSS(t)
	mask := [4]byte{1, 2, 3, 4}
	wire := frame.AppendMaskedFrame(nil, false, frame.OpBinary, 0, mask, []byte("12345"))
	wire = frame.AppendHeader(wire, frame.Header{OpCode: frame.OpContinuation, Fin: true, Masked: true, Mask: mask, Length: 1<<63 - 5})
	if err := c.SendRaw(wire); err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("A"), 64<<10)
	streamed := 0
	for streamed < 64*MiB {
		if err := c.SendRaw(chunk); err != nil {
			break // the server closed after its close timeout: fine
		}
		streamed += len(chunk)
	}
	_, _, err := c.ReadMessage()
	peak := stop()
	var fe *frame.Error
	if !errors.As(err, &fe) || fe.Code != frame.CloseMessageTooBig {
		t.Fatalf("after the overflowing header and %d MiB: %v, want close 1009", streamed/MiB, err)
	}
	growth := peak - before
	t.Logf("streamed %d MiB after the header; server RSS %.1f MiB before, peak growth %.2f MiB", streamed/MiB, float64(before)/MiB, float64(growth)/MiB)
	if growth >= 4*MiB {
		t.Fatalf("server RSS grew by %.1f MiB under the stream, want < 4 MiB", float64(growth)/MiB)
	}
	c.Conn.Close() // our FIN ends the server's drain of the half-closed connection
	s.waitMetric(t, `wsd_connections_closed_by_code_total{code="1009"}`, 1)
}

// TestPingFloodRSS: a client that floods pings and never reads is closed
// with 1013 once the pongs it asked for pass --max-outbound-bytes, and the
// server holds no more than that mark for it meanwhile.
func TestPingFloodRSS(t *testing.T) {
	s := start(t, "--close-timeout", "30s")
	warm(t, s)
	c := wstest.Dial(t, s.ws, "/ws", wstest.Options{RecvBuffer: 32 << 10})
	before := s.rss(t)
	stop := s.watchRSS(t)
	ping := frame.AppendMaskedFrame(nil, true, frame.OpPing, 0, [4]byte{9, 9, 9, 9}, bytes.Repeat([]byte("p"), 125))
	batch := bytes.Repeat(ping, (64<<10)/len(ping))
	for sent := 0; sent < 64*MiB; sent += len(batch) {
		if err := c.SendRaw(batch); err != nil {
			t.Fatalf("after %d MiB of pings: %v", sent/MiB, err)
		}
	}
	peakFlood := stop()
	code := readUntilClose(t, c)
	if code != frame.CloseTryAgainLater {
		t.Fatalf("close %d, want 1013", code)
	}
	c.ExpectEOF(t)
	growth := peakFlood - before
	t.Logf("64 MiB of pings; server RSS %.1f MiB before, peak growth %.2f MiB (mark 1 MiB)", float64(before)/MiB, float64(growth)/MiB)
	if growth >= markBound {
		t.Fatalf("server RSS grew by %.1f MiB under the flood, want under %.1f MiB for a 1 MiB mark", float64(growth)/MiB, float64(markBound)/MiB)
	}
	s.waitMetric(t, `wsd_connections_closed_by_reason_total{reason="slow_consumer"}`, 1)
}

// readUntilClose reads frames until a close frame and returns its code.
func readUntilClose(t *testing.T, c *wstest.Client) frame.CloseCode {
	t.Helper()
	for {
		h, p, err := c.ReadFrame()
		if err != nil {
			t.Fatalf("waiting for a close frame: %v", err)
		}
		if h.OpCode == frame.OpClose {
			code, _, err := frame.ParseClose(p)
			if err != nil {
				t.Fatal(err)
			}
			return code
		}
	}
}

// TestNonReaderRSS: 1,000 broadcasts of 16 KiB go out on /ws while one
// client never reads. With --slow-consumer close it is closed with 1013;
// with drop it keeps at most the mark queued and the frames it misses are
// counted. Either way a fast reader on the same loop gets every broadcast,
// and the server's RSS grows by less than one connection's markBound over
// what the same broadcasts cost without the non-reader (a first round, run
// before it connects, that also brings the heap to its working size).
func TestNonReaderRSS(t *testing.T) {
	for _, policy := range []string{"close", "drop"} {
		t.Run(policy, func(t *testing.T) {
			s := start(t, "--loops", "1", "--slow-consumer", policy, "--close-timeout", "30s")
			fast := wstest.Dial(t, s.ws, "/ws", wstest.Options{})
			pub := wstest.Dial(t, s.ws, "/ws", wstest.Options{})
			const n = 1000
			broadcastRound(t, pub, fast, 0, n)
			before := s.rss(t)

			slow := wstest.Dial(t, s.ws, "/ws", wstest.Options{RecvBuffer: 32 << 10})
			stop := s.watchRSS(t)
			broadcastRound(t, pub, fast, n, n)
			// The outbound gauge is refreshed every tick (1 s): wait for the
			// non-reader to show in it.
			deadline := time.Now().Add(wstest.Timeout)
			for policy == "drop" && s.metric(t, "wsd_outbound_backlogged_connections") != 1 {
				if time.Now().After(deadline) {
					t.Fatal("the non-reader never shows in wsd_outbound_backlogged_connections")
				}
				time.Sleep(50 * time.Millisecond)
			}
			queued := s.metric(t, "wsd_outbound_buffered_bytes")
			peak := stop()
			growth := peak - before
			t.Logf("server RSS %.1f MiB after a round without the non-reader; peak growth %.2f MiB in the round with it; %d bytes queued",
				float64(before)/MiB, float64(growth)/MiB, queued)
			if growth >= markBound {
				t.Fatalf("server RSS grew by %.1f MiB, want under %.1f MiB for a 1 MiB mark", float64(growth)/MiB, float64(markBound)/MiB)
			}
			if policy == "close" {
				if code := readUntilClose(t, slow); code != frame.CloseTryAgainLater {
					t.Fatalf("close %d, want 1013", code)
				}
				s.waitMetric(t, `wsd_connections_closed_by_code_total{code="1013"}`, 1)
				return
			}
			if queued > MiB+(16<<10)+64 {
				t.Fatalf("%d bytes queued for the non-reader, mark 1 MiB", queued)
			}
			dropped := s.metric(t, `wsd_outbound_dropped_frames_total{reason="slow_consumer"}`)
			if dropped == 0 || s.metric(t, `wsd_slow_consumer_total{action="drop"}`) != 1 {
				t.Fatalf("%d frames dropped, want some, in one episode", dropped)
			}
			// What it reads is the broadcasts that were not dropped, in order.
			got, last := 0, -1
			for got < n-dropped {
				_, p, err := slow.ReadMessage()
				if err != nil {
					t.Fatalf("after %d: %v", got, err)
				}
				seq, _ := strconv.Atoi(string(p[len(`{"type":"broadcast","data":"`):][:6]))
				if seq <= last || seq < n {
					t.Fatalf("broadcast %d after %d", seq, last)
				}
				last = seq
				got++
			}
			t.Logf("non-reader: %d received, %d dropped", got, dropped)
		})
	}
}

// broadcastRound sends n numbered broadcasts of 16 KiB from pub, starting
// at from, at most 8 ahead of what pub and fast (which read as fast as
// they can) have received, and waits until both have all of them.
func broadcastRound(t *testing.T, pub, fast *wstest.Client, from, n int) {
	t.Helper()
	seen := []<-chan int{readBroadcasts(fast, from, n), readBroadcasts(pub, from, n)}
	data := strings.Repeat("b", 16<<10)
	for i := from; i < from+n; i++ {
		for _, ch := range seen {
			if i-8 >= from {
				waitSeen(t, ch, i-8)
			}
		}
		msg := fmt.Sprintf(`{"type":"broadcast","data":"%06d%s"}`, i, data)
		if err := pub.Send(frame.OpText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	for _, ch := range seen {
		waitSeen(t, ch, from+n-1)
	}
}

// readBroadcasts reads n numbered broadcasts on c in the background and
// reports the number of each as it arrives; it closes the channel after
// the last, or at the first error or gap (which waitSeen then reports).
func readBroadcasts(c *wstest.Client, from, n int) <-chan int {
	seen := make(chan int, n)
	go func() {
		defer close(seen)
		for i := from; i < from+n; i++ {
			_, p, err := c.ReadMessage()
			if err != nil {
				return
			}
			if want := fmt.Sprintf(`{"type":"broadcast","data":"%06d`, i); !bytes.HasPrefix(p, []byte(want)) {
				return
			}
			seen <- i
		}
	}()
	return seen
}

// waitSeen waits until a reader has received broadcast i (bounded).
func waitSeen(t *testing.T, seen <-chan int, i int) {
	t.Helper()
	if i < 0 {
		return
	}
	for {
		select {
		case got, ok := <-seen:
			if !ok {
				t.Fatalf("a reader stopped before broadcast %d (error, gap or close)", i)
			}
			if got >= i {
				return
			}
		case <-time.After(wstest.Timeout):
			t.Fatalf("a reader did not get broadcast %d", i)
		}
	}
}
