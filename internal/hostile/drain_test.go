package hostile

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/internal/wstest"
)

// TestDrain: 1,000 subscribed clients and a publisher on the HTTP API;
// SIGTERM in the middle. Every client gets every publication the API
// accepted (200) before the signal or during the drain, in order, once,
// then a 1001 whose reason carries a retry hint; new TCP connections are
// refused by the kernel while the drain waits for the clients' close
// replies; the process exits 0 before --drain-timeout.
func TestDrain(t *testing.T) {
	const (
		clients    = 1000
		drainLimit = 10 * time.Second
		replyDelay = 2 * time.Second // clients answer the 1001 this late: the drain lasts that long
	)
	s := start(t, "--api-key", "k", "--drain-timeout", drainLimit.String())

	type result struct {
		got    []int
		code   frame.CloseCode
		reason string
		err    error
	}
	results := make([]result, clients)
	pubN := regexp.MustCompile(`"data":\{"n":(\d+)\}`)
	var readers sync.WaitGroup
	for i := range clients {
		c := wstest.Dial(t, s.WS, "/ws", wstest.Options{LocalAddr: "127.0.1." + strconv.Itoa(1+i%200)})
		if err := c.Send(frame.OpText, []byte(`{"type":"subscribe","channel":"news","id":1}`)); err != nil {
			t.Fatal(err)
		}
		if _, p, err := c.ReadMessage(); err != nil || !strings.Contains(string(p), `"ack"`) {
			t.Fatalf("client %d subscribe: %s %v", i, p, err)
		}
		readers.Add(1)
		go func(r *result) {
			defer readers.Done()
			c.Conn.SetReadDeadline(time.Now().Add(2 * drainLimit))
			for {
				_, p, err := c.ReadMessage()
				var fe *frame.Error
				if errors.As(err, &fe) {
					r.code, r.reason = fe.Code, fe.Reason
					time.Sleep(replyDelay)
					_ = c.SendRaw(c.Frame(true, frame.OpClose, 0, frame.AppendClose(nil, fe.Code, "")[2:]))
					c.Conn.Close()
					return
				}
				if err != nil {
					r.err = err
					return
				}
				m := pubN.FindSubmatch(p)
				if m == nil {
					r.err = fmt.Errorf("unexpected message %s", p)
					return
				}
				n, _ := strconv.Atoi(string(m[1]))
				r.got = append(r.got, n)
			}
		}(&results[i])
	}

	// The publisher: publications 1, 2, … until the API stops accepting,
	// at about 200/s (200,000 deliveries a second for the readers here).
	var (
		mu       sync.Mutex
		accepted []int
	)
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		hc := &http.Client{Timeout: 5 * time.Second}
		for n := 1; n < 100000; n++ {
			req, _ := http.NewRequest("POST", "http://"+s.Admin+"/api/publish",
				strings.NewReader(fmt.Sprintf(`{"channel":"news","data":{"n":%d}}`, n)))
			req.Header.Set("Authorization", "apikey k")
			resp, err := hc.Do(req)
			if err != nil {
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return
			}
			mu.Lock()
			accepted = append(accepted, n)
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	deadline := time.Now().Add(wstest.Timeout)
	for {
		mu.Lock()
		n := len(accepted)
		mu.Unlock()
		if n >= 100 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d publications accepted", n)
		}
		time.Sleep(5 * time.Millisecond)
	}

	signalled := time.Now()
	if err := s.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan int, 1)
	go func() {
		st, err := s.Cmd.Process.Wait()
		if err != nil {
			exited <- -1
			return
		}
		exited <- st.ExitCode()
	}()

	// While the drain waits for the close replies, the listener is closed:
	// a new connection is refused by the kernel, not accepted and answered.
	refused := false
	for time.Since(signalled) < replyDelay/2 {
		c, err := net.DialTimeout("tcp", s.WS, time.Second)
		if err != nil {
			switch {
			case errors.Is(err, syscall.ECONNREFUSED):
				refused = true
			case errors.Is(err, syscall.ECONNRESET):
				// Completed by the kernel just before the listener closed,
				// and reset with it: refused at TCP level too; try again.
				continue
			default:
				t.Fatalf("dial during the drain: %v, want connection refused", err)
			}
			break
		}
		c.Close()
		time.Sleep(time.Millisecond)
	}
	if !refused {
		t.Fatalf("new connections were still accepted %v after SIGTERM", replyDelay/2)
	}
	select {
	case <-exited:
		t.Fatal("wsd exited before its clients answered the 1001: the refusal was not seen during the drain")
	default:
	}

	select {
	case code := <-exited:
		if code != 0 {
			t.Fatalf("wsd exited with %d, want 0", code)
		}
		if d := time.Since(signalled); d > drainLimit {
			t.Fatalf("wsd took %v to exit, past --drain-timeout %v", d, drainLimit)
		}
	case <-time.After(drainLimit + 5*time.Second):
		t.Fatal("wsd did not exit")
	}
	readers.Wait()
	<-pubDone

	for i, r := range results {
		if r.err != nil {
			t.Fatalf("client %d: %v", i, r.err)
		}
		if r.code != frame.CloseGoingAway || !strings.Contains(r.reason, "retry-after=") {
			t.Fatalf("client %d closed with %d %q, want 1001 with a retry-after hint", i, r.code, r.reason)
		}
		// Every accepted publication, in order, once; nothing else.
		if len(r.got) != len(accepted) {
			t.Fatalf("client %d got %d publications, the API accepted %d", i, len(r.got), len(accepted))
		}
		for j := range accepted {
			if r.got[j] != accepted[j] {
				t.Fatalf("client %d: publication %d is %d, want %d", i, j, r.got[j], accepted[j])
			}
		}
	}
	t.Logf("%d clients drained; %d publications accepted, all delivered to every client before its 1001", clients, len(accepted))
}
