package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/gobwas/ws"

	"github.com/wsdproject/wsd/frame"
)

// dialUpgraded dials target from source (nil: any address) and performs
// the WebSocket upgrade on a plain blocking connection.
func dialUpgraded(ctx context.Context, target, path string, source net.IP) (*net.TCPConn, error) {
	// No TCP keepalive: the WebSocket heartbeat is the liveness check.
	// Go's default (a probe after 15 s idle) would add a probe and its ACK
	// per idle connection every 15 s: at a million connections, 130,000
	// packets a second that a real client fleet would not send.
	nd := net.Dialer{Timeout: 10 * time.Second, KeepAlive: -1, Control: bindNoPort}
	if source != nil {
		nd.LocalAddr = &net.TCPAddr{IP: source}
	}
	conn, err := nd.DialContext(ctx, "tcp", target)
	if err != nil {
		return nil, err
	}
	if err := handshake(conn, target, path); err != nil {
		conn.Close()
		return nil, err
	}
	return conn.(*net.TCPConn), nil
}

// maxClientMessage bounds what a reading client assembles: the server's
// own limit is far lower, so a larger message means a broken stream.
const maxClientMessage = 64 << 20

// errPeerClosed is returned by readMessage after the server's close frame
// (answered) or the end of the stream.
var errPeerClosed = errors.New("closed by the server")

// wsClient is a blocking client connection that reads everything it is
// sent: it answers pings and the close handshake itself, and returns data
// messages. One goroutine reads; writes may come from any goroutine.
type wsClient struct {
	conn *net.TCPConn
	br   *bufio.Reader
	msg  []byte // the message being assembled; reused

	wmu       sync.Mutex
	wbuf      []byte
	closeSent bool // a close frame has gone out: nothing more may (guarded by wmu)

	closeCode frame.CloseCode // the server's close code, once it sent one

	pong chan struct{} // if set, each pong received is signalled here (without blocking)
}

func newWSClient(conn *net.TCPConn) *wsClient {
	return newWSClientSize(conn, 64<<10)
}

// newWSClientSize is newWSClient with a read buffer of size bytes: a run
// of many clients that read small messages gives each a small one.
func newWSClientSize(conn *net.TCPConn, size int) *wsClient {
	return &wsClient{conn: conn, br: bufio.NewReaderSize(conn, size)}
}

// errCloseSent is write's answer once a close frame has been sent: a
// client sends nothing after its close (RFC 6455 5.5.1), not even the
// answer to the server's close when it began the closing handshake itself.
var errCloseSent = errors.New("close frame already sent")

// write sends one masked frame; nothing after a close frame.
func (c *wsClient) write(op frame.OpCode, payload []byte, timeout time.Duration) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closeSent {
		return errCloseSent
	}
	if op == frame.OpClose {
		c.closeSent = true
	}
	c.wbuf = frame.AppendMaskedFrame(c.wbuf[:0], true, op, 0, clientMask, payload)
	if timeout > 0 {
		c.conn.SetWriteDeadline(time.Now().Add(timeout))
	}
	_, err := c.conn.Write(c.wbuf)
	if cap(c.wbuf) > 1<<20 {
		c.wbuf = nil
	}
	return err
}

// readMessage returns the next data message; the slice is valid until the
// next call. Control frames are handled here.
func (c *wsClient) readMessage() (frame.OpCode, []byte, error) {
	var op frame.OpCode
	if cap(c.msg) > 4<<20 {
		c.msg = nil // do not keep a rare huge buffer
	}
	c.msg = c.msg[:0]
	for {
		h, err := ws.ReadHeader(c.br)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return 0, nil, errPeerClosed
			}
			return 0, nil, err
		}
		if h.Length > maxClientMessage || int64(len(c.msg))+h.Length > maxClientMessage {
			return 0, nil, fmt.Errorf("a %d-byte frame: more than this client accepts", h.Length)
		}
		if h.OpCode.IsControl() {
			p := make([]byte, h.Length)
			if _, err := io.ReadFull(c.br, p); err != nil {
				return 0, nil, err
			}
			if h.Masked {
				frame.Cipher(p, h.Mask, 0)
			}
			switch h.OpCode {
			case frame.OpPing:
				_ = c.write(frame.OpPong, p, time.Second)
			case frame.OpPong:
				if c.pong != nil {
					select {
					case c.pong <- struct{}{}:
					default:
					}
				}
			case frame.OpClose:
				code, _, _ := frame.ParseClose(p)
				c.closeCode = code
				_ = c.write(frame.OpClose, p, time.Second)
				return 0, nil, errPeerClosed
			}
			continue
		}
		start := len(c.msg)
		c.msg = append(c.msg, make([]byte, h.Length)...)
		if _, err := io.ReadFull(c.br, c.msg[start:]); err != nil {
			return 0, nil, err
		}
		if h.Masked {
			frame.Cipher(c.msg[start:], h.Mask, 0)
		}
		if h.OpCode != frame.OpContinuation {
			op = h.OpCode
		}
		if h.Fin {
			return op, c.msg, nil
		}
	}
}

// close sends a normal close frame (best effort) and closes the socket.
func (c *wsClient) close() {
	_ = c.write(frame.OpClose, frame.AppendClose(nil, 1000, ""), 200*time.Millisecond)
	c.conn.Close()
}
