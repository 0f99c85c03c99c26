// Package bench drives wsd with many real WebSocket connections and reads
// what they cost. The client side is event-driven (a gnet client: no
// goroutine per connection), so one process holds as many connections as
// its file limit allows; a coordinator spreads larger runs over several
// processes and source addresses.
package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/wsdproject/wsd/frame"
)

// Counters are a client process's running totals.
type Counters struct {
	Connected atomic.Int64 // handshakes completed
	Failed    atomic.Int64 // dials or handshakes that failed
	Dropped   atomic.Int64 // connections the server closed while we held them
	Pings     atomic.Int64 // pings answered
	PingsSent atomic.Int64 // our own pings written (Dialer.PingAll)
	Pongs     atomic.Int64 // pongs received: answers to those
}

// idleHandler keeps enrolled connections alive: it answers pings with
// pongs and close frames with close frames, and ignores everything else.
type idleHandler struct {
	gnet.BuiltinEventEngine
	counters *Counters
	closing  atomic.Bool // we are shutting down: closes are not drops
}

var clientMask = [4]byte{0x5a, 0xa5, 0x3c, 0xc3}

func (h *idleHandler) OnTraffic(c gnet.Conn) gnet.Action {
	for {
		hd, payload, size, err := peekFrame(c)
		if err != nil {
			return gnet.Close
		}
		if size == 0 {
			return gnet.None
		}
		switch hd.OpCode {
		case frame.OpPing:
			h.counters.Pings.Add(1)
		case frame.OpPong:
			h.counters.Pongs.Add(1)
		}
		closed := answerControl(c, hd.OpCode, payload)
		_, _ = c.Discard(size)
		if closed {
			return gnet.Close
		}
	}
}

// peekFrame returns the next frame buffered on c, leaving it there: an
// event loop gets a frame in pieces and must not take any of it before the
// whole has arrived. size is 0 until then; after that the caller discards
// size bytes once done with payload (which is c's buffer).
func peekFrame(c gnet.Conn) (hd frame.Header, payload []byte, size int, err error) {
	n := c.InboundBuffered()
	hb, _ := c.Peek(min(n, frame.MaxHeaderSize))
	hd, hn, err := frame.ParseHeader(hb)
	if err != nil {
		return hd, nil, 0, err
	}
	if hn == 0 || n < hn+int(hd.Length) {
		return hd, nil, 0, nil
	}
	p, _ := c.Peek(hn + int(hd.Length))
	return hd, p[hn:], hn + int(hd.Length), nil
}

// answerControl answers a ping with a pong and a close with a close, as
// a client must to keep a connection (or to end it cleanly); it reports
// whether op was a close, after which the connection is to be closed.
func answerControl(c gnet.Conn, op frame.OpCode, payload []byte) (closed bool) {
	switch op {
	case frame.OpPing:
		_, _ = c.Write(frame.AppendMaskedFrame(nil, true, frame.OpPong, 0, clientMask, payload))
	case frame.OpClose:
		_, _ = c.Write(frame.AppendMaskedFrame(nil, true, frame.OpClose, 0, clientMask, payload))
		return true
	}
	return false
}

func (h *idleHandler) OnClose(c gnet.Conn, err error) gnet.Action {
	if !h.closing.Load() {
		h.counters.Dropped.Add(1)
	}
	return gnet.None
}

// Dialer opens WebSocket connections from one source address and hands
// them to an event-driven client that keeps them alive.
type Dialer struct {
	Target   string // host:port
	Path     string
	Source   net.IP // source address to bind, nil for any
	Counters *Counters
	// Subscribe, if set, is a channel each connection subscribes to (and
	// waits for the answer) before it is enrolled to idle.
	Subscribe string

	cli     *gnet.Client
	handler *idleHandler

	mu    sync.Mutex
	conns []gnet.Conn // every connection enrolled, for PingAll
}

// Start starts the event loops.
func (d *Dialer) Start(loops int) error {
	d.handler = &idleHandler{counters: d.Counters}
	cli, err := gnet.NewClient(d.handler,
		gnet.WithMulticore(true),
		gnet.WithNumEventLoop(loops),
		gnet.WithReadBufferCap(4096),
		gnet.WithWriteBufferCap(4096),
		gnet.WithLogger(quietLogger{}),
	)
	if err != nil {
		return err
	}
	d.cli = cli
	return cli.Start()
}

// Stop closes every connection and the event loops.
func (d *Dialer) Stop() {
	d.handler.closing.Store(true)
	_ = d.cli.Stop()
}

const upgradeRequest = "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"

// Open dials one connection, upgrades it, and enrolls it in the event loops.
func (d *Dialer) Open(ctx context.Context) error {
	conn, err := dialUpgraded(ctx, d.Target, d.Path, d.Source)
	if err != nil {
		return err
	}
	if d.Subscribe != "" {
		if err := subscribeBlocking(conn, d.Subscribe); err != nil {
			conn.Close()
			return err
		}
	}
	gc, err := d.cli.Enroll(conn) // Enroll closes conn after taking a dup of it
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.conns = append(d.conns, gc)
	d.mu.Unlock()
	return nil
}

// checkPing is the payload of PingAll's pings.
var checkPing = frame.AppendMaskedFrame(nil, true, frame.OpPing, 0, clientMask, []byte("wsbench"))

// PingAll sends one ping on every connection enrolled so far; the pongs
// are counted in Counters.Pongs. A connection the server closed meanwhile
// takes no ping (its write fails) and is not counted in PingsSent.
func (d *Dialer) PingAll() {
	d.mu.Lock()
	conns := d.conns
	d.mu.Unlock()
	for _, c := range conns {
		if err := c.AsyncWrite(checkPing, nil); err == nil {
			d.Counters.PingsSent.Add(1)
		}
	}
}

// handshake performs the HTTP upgrade on a blocking connection. The server
// sends nothing after its 101 until the first ping, so reading exactly the
// response head leaves nothing behind.
func handshake(conn net.Conn, host, path string) error {
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	defer conn.SetDeadline(time.Time{})
	if _, err := fmt.Fprintf(conn, upgradeRequest, path, host); err != nil {
		return err
	}
	var head []byte
	buf := make([]byte, 512)
	for !bytes.Contains(head, []byte("\r\n\r\n")) {
		n, err := conn.Read(buf)
		if err != nil {
			return fmt.Errorf("reading the handshake response: %w", err)
		}
		head = append(head, buf[:n]...)
		if len(head) > 8192 {
			return errors.New("handshake response too long")
		}
	}
	status, _, _ := bufio.NewReader(bytes.NewReader(head)).ReadLine()
	if !strings.HasPrefix(string(status), "HTTP/1.1 101") {
		return fmt.Errorf("handshake refused: %s", status)
	}
	if end := bytes.Index(head, []byte("\r\n\r\n")) + 4; end != len(head) {
		return errors.New("bytes after the handshake response")
	}
	return nil
}

// bindNoPort lets the kernel pick the source port at connect time, per
// destination, so one source address can carry more than the ephemeral
// range's worth of connections to different servers (IP_BIND_ADDRESS_NO_PORT).
func bindNoPort(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

// openPool opens n connections, a few at a time, with counts that a
// progress line may read while it runs: the slow run's non-readers and a
// broadcast worker's subscribers are opened this way.
type openPool struct {
	opened, failed atomic.Int64
	done           chan struct{} // closed when every open has returned

	mu    sync.Mutex
	first error
}

// startOpenPool calls open(k) for k = 0 … n-1 on at most concurrency
// goroutines, taking no new k once ctx ends.
func startOpenPool(ctx context.Context, n, concurrency int, open func(k int) error) *openPool {
	p := &openPool{done: make(chan struct{})}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(concurrency, max(n, 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := int(next.Add(1) - 1)
				if k >= n || ctx.Err() != nil {
					return
				}
				if err := open(k); err != nil {
					p.failed.Add(1)
					p.mu.Lock()
					if p.first == nil {
						p.first = err
					}
					p.mu.Unlock()
					continue
				}
				p.opened.Add(1)
			}
		}()
	}
	go func() { wg.Wait(); close(p.done) }()
	return p
}

// firstErr is the first error an open returned (nil: none so far).
func (p *openPool) firstErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.first
}

type quietLogger struct{}

func (quietLogger) Debugf(string, ...any) {}
func (quietLogger) Infof(string, ...any)  {}
func (quietLogger) Warnf(string, ...any)  {}
func (quietLogger) Errorf(string, ...any) {}
func (quietLogger) Fatalf(string, ...any) {}

// subscribeBlocking subscribes a blocking connection to channel and reads
// the server's answer: an ack, or the error it reports.
func subscribeBlocking(conn net.Conn, channel string) error {
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	defer conn.SetDeadline(time.Time{})
	msg, _ := json.Marshal(map[string]string{"type": "subscribe", "channel": channel})
	if _, err := conn.Write(frame.AppendMaskedFrame(nil, true, frame.OpText, 0, clientMask, msg)); err != nil {
		return err
	}
	var buf []byte
	tmp := make([]byte, 512)
	for {
		hd, hn, err := frame.ParseHeader(buf)
		if err != nil {
			return err
		}
		if hn > 0 && len(buf) >= hn+int(hd.Length) {
			p := buf[hn : hn+int(hd.Length)]
			if hd.OpCode == frame.OpText {
				if bytes.HasPrefix(p, []byte(`{"type":"ack"`)) {
					return nil
				}
				return fmt.Errorf("subscribe to %q refused: %s", channel, p)
			}
			buf = buf[hn+int(hd.Length):] // a ping or such: skip it
			continue
		}
		n, err := conn.Read(tmp)
		if err != nil {
			return fmt.Errorf("reading the subscribe answer: %w", err)
		}
		buf = append(buf, tmp[:n]...)
	}
}
