// Package wstest is a small blocking WebSocket client for wsd's tests,
// built on gobwas/ws's client handshake and frame reader, with helpers to
// send hand-made (also invalid) frames and raw HTTP.
package wstest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsflate"

	"github.com/wsdproject/wsd/frame"
)

// Timeout bounds every blocking step of a test client.
const Timeout = 10 * time.Second

// Client is one client connection.
type Client struct {
	Conn      net.Conn
	R         *bufio.Reader
	Handshake ws.Handshake
	Deflate   bool // permessage-deflate was accepted
	mask      [4]byte
	inflater  frame.Inflater
}

// Options change how Dial connects.
type Options struct {
	Protocols []string
	Deflate   bool        // offer permessage-deflate
	Header    http.Header // extra request headers
	LocalAddr string      // source IP to dial from
	// RecvBuffer, if set, fixes the socket's receive buffer (SO_RCVBUF,
	// before connecting, so the kernel does not grow it): a client that
	// stops reading then stops the server's writes after that many bytes.
	RecvBuffer int
}

// Dial connects to ws://addr+path and completes the handshake.
func Dial(t testing.TB, addr, path string, o Options) *Client {
	t.Helper()
	c, err := DialErr(addr, path, o)
	if err != nil {
		t.Fatalf("dial %s%s: %v", addr, path, err)
	}
	t.Cleanup(func() { c.Conn.Close() })
	return c
}

// DialErr is Dial that returns its error.
func DialErr(addr, path string, o Options) (*Client, error) {
	d := ws.Dialer{Protocols: o.Protocols, Timeout: Timeout}
	if o.Header != nil {
		d.Header = ws.HandshakeHeaderHTTP(o.Header)
	}
	if o.Deflate {
		offer := wsflate.Parameters{ServerNoContextTakeover: true, ClientNoContextTakeover: true}
		d.Extensions = append(d.Extensions, offer.Option())
	}
	if o.LocalAddr != "" || o.RecvBuffer > 0 {
		d.NetDial = func(ctx context.Context, network, a string) (net.Conn, error) {
			nd := net.Dialer{Timeout: Timeout}
			if o.LocalAddr != "" {
				nd.LocalAddr = &net.TCPAddr{IP: net.ParseIP(o.LocalAddr)}
			}
			if o.RecvBuffer > 0 {
				nd.Control = func(_, _ string, rc syscall.RawConn) error {
					var serr error
					err := rc.Control(func(fd uintptr) {
						serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, o.RecvBuffer)
					})
					return errors.Join(err, serr)
				}
			}
			return nd.DialContext(ctx, network, a)
		}
	}
	conn, br, hs, err := d.Dial(context.Background(), "ws://"+addr+path)
	if err != nil {
		return nil, err
	}
	if br == nil {
		br = bufio.NewReader(conn)
	}
	c := &Client{Conn: conn, R: br, Handshake: hs, mask: [4]byte{0x12, 0x34, 0x56, 0x78}}
	for _, e := range hs.Extensions {
		if string(e.Name) == wsflate.ExtensionName {
			c.Deflate = true
		}
	}
	return c, nil
}

// SendRaw writes bytes as they are.
func (c *Client) SendRaw(b []byte) error {
	c.Conn.SetWriteDeadline(time.Now().Add(Timeout))
	_, err := c.Conn.Write(b)
	return err
}

// Frame returns the bytes of one masked client frame.
func (c *Client) Frame(fin bool, op frame.OpCode, rsv byte, payload []byte) []byte {
	return frame.AppendMaskedFrame(nil, fin, op, rsv, c.mask, payload)
}

// Send writes one final, masked frame.
func (c *Client) Send(op frame.OpCode, payload []byte) error {
	return c.SendRaw(c.Frame(true, op, 0, payload))
}

// SendCompressed writes one message compressed with permessage-deflate.
func (c *Client) SendCompressed(op frame.OpCode, payload []byte) error {
	z, err := frame.NewDeflater(1).Deflate(nil, payload, 15)
	if err != nil {
		return err
	}
	return c.SendRaw(c.Frame(true, op, frame.Rsv1, z))
}

// ReadFrame reads one server frame.
func (c *Client) ReadFrame() (frame.Header, []byte, error) {
	c.Conn.SetReadDeadline(time.Now().Add(Timeout))
	h, err := ws.ReadHeader(c.R)
	if err != nil {
		return h, nil, err
	}
	if h.Masked {
		return h, nil, errors.New("server sent a masked frame")
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(c.R, p); err != nil {
		return h, nil, err
	}
	return h, p, nil
}

// ReadMessage reads the next data message, answering pings, assembling
// fragments and decompressing. A close frame is returned as an error of
// type *frame.Error.
func (c *Client) ReadMessage() (frame.OpCode, []byte, error) {
	var (
		op         frame.OpCode
		msg        []byte
		compressed bool
	)
	for {
		h, p, err := c.ReadFrame()
		if err != nil {
			return 0, nil, err
		}
		switch h.OpCode {
		case frame.OpPing:
			if err := c.Send(frame.OpPong, p); err != nil {
				return 0, nil, err
			}
			continue
		case frame.OpPong:
			continue
		case frame.OpClose:
			code, reason, err := frame.ParseClose(p)
			if err != nil {
				return 0, nil, fmt.Errorf("bad close frame from server: %w", err)
			}
			return 0, nil, &frame.Error{Code: code, Reason: string(reason)}
		case frame.OpContinuation:
		default:
			op = h.OpCode
			compressed = h.Rsv&frame.Rsv1 != 0
		}
		msg = append(msg, p...)
		if h.Fin {
			if compressed {
				out, err := c.inflate(msg)
				return op, out, err
			}
			return op, msg, nil
		}
	}
}

func (c *Client) inflate(p []byte) ([]byte, error) {
	return c.inflater.Inflate(nil, p, 1<<30)
}

// ExpectClose reads until a close frame and checks its code, then checks
// that the server closes the TCP connection.
func (c *Client) ExpectClose(t testing.TB, code frame.CloseCode) {
	t.Helper()
	for {
		h, p, err := c.ReadFrame()
		if err != nil {
			t.Fatalf("waiting for close %d: %v", code, err)
		}
		if h.OpCode != frame.OpClose {
			continue
		}
		got, reason, err := frame.ParseClose(p)
		if err != nil || got != code {
			t.Fatalf("close frame %d %q (%v), want code %d", got, reason, err, code)
		}
		break
	}
	c.ExpectEOF(t)
}

// ExpectCloseReply reads the server's close frame, checks its code,
// answers it as a client should, and checks that the server then closes
// the TCP connection.
func (c *Client) ExpectCloseReply(t testing.TB, code frame.CloseCode) {
	t.Helper()
	_, _, err := c.ReadMessage()
	fe, ok := err.(*frame.Error)
	if !ok || fe.Code != code {
		t.Fatalf("want close %d, got %v", code, err)
	}
	if err := c.Send(frame.OpClose, binary.BigEndian.AppendUint16(nil, uint16(code))); err != nil {
		t.Fatal(err)
	}
	c.ExpectEOF(t)
}

// ExpectEOF checks that the server closes the TCP connection (after
// answering our close frame, if the server sent one first).
func (c *Client) ExpectEOF(t testing.TB) {
	t.Helper()
	c.Conn.SetReadDeadline(time.Now().Add(Timeout))
	buf := make([]byte, 4096)
	for {
		_, err := c.R.Read(buf)
		if err == io.EOF || errors.Is(err, net.ErrClosed) || isReset(err) {
			return
		}
		if err != nil {
			t.Fatalf("waiting for the server to close: %v", err)
		}
	}
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

// HTTPResponse is the head of a raw HTTP exchange.
type HTTPResponse struct {
	Status int
	Close  bool // the response said Connection: close (net/http takes it out of Header)
	Header http.Header
	Body   string
	Conn   net.Conn
	R      *bufio.Reader
}

// RawRequest sends request (an HTTP request head, with its blank line) on a
// new connection and reads the response head and body.
func RawRequest(t testing.TB, addr, request string) *HTTPResponse {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, Timeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(Timeout))
	if _, err := io.WriteString(conn, request); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading response to %q: %v", firstLine(request), err)
	}
	var body []byte
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ = io.ReadAll(resp.Body)
	}
	return &HTTPResponse{Status: resp.StatusCode, Close: resp.Close, Header: resp.Header, Body: string(body), Conn: conn, R: br}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\r'); i >= 0 {
		return s[:i]
	}
	return s
}

// UpgradeRequest returns a valid upgrade request head for path with extra
// header lines.
func UpgradeRequest(path string, extra ...string) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n", path)
	b.WriteString("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")
	for _, e := range extra {
		b.WriteString(e + "\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}
