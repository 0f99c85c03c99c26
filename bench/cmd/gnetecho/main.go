// Command gnetecho is the yardstick wsd is measured against: a WebSocket
// echo server on the same stack (gnet v2's multicore reactor with its own
// listener, the upgrade by gobwas/ws over the bytes gnet buffered, gobwas/ws
// frame headers) doing nothing else: no limits, no admission, no
// heartbeats, no metrics. Every path upgrades; text and binary frames are
// sent back as they came (fragments as fragments), pings are answered with
// pongs and a close with a close.
//
//	gnetecho -addr 127.0.0.1:18080 -loops 2 [-reuse-port]
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"runtime"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"
)

// maxRequest bounds an upgrade request's head.
const maxRequest = 8192

type server struct {
	gnet.BuiltinEventEngine
}

// conn is a connection's state: nil context until it has upgraded.
type conn struct {
	out []byte // the frames to send back, built during one OnTraffic
}

// rw is what the upgrader reads the request from and writes the answer to.
type rw struct {
	r   bytes.Reader
	out []byte
}

func (x *rw) Read(p []byte) (int, error) { return x.r.Read(p) }
func (x *rw) Write(p []byte) (int, error) {
	x.out = append(x.out, p...)
	return len(p), nil
}

func (s *server) OnTraffic(c gnet.Conn) gnet.Action {
	st, _ := c.Context().(*conn)
	if st == nil {
		buf, _ := c.Peek(c.InboundBuffered())
		end := bytes.Index(buf, []byte("\r\n\r\n"))
		if end < 0 {
			if len(buf) > maxRequest {
				return gnet.Close
			}
			return gnet.None // the request is not all here yet
		}
		end += 4
		x := &rw{}
		x.r.Reset(buf[:end])
		u := ws.Upgrader{ReadBufferSize: maxRequest}
		_, err := u.Upgrade(x)
		_, _ = c.Write(x.out)
		if err != nil {
			return gnet.Close
		}
		_, _ = c.Discard(end)
		st = &conn{}
		c.SetContext(st)
	}
	return st.frames(c)
}

// frames answers every complete frame buffered on c and leaves a partial
// one where it is until the rest arrives.
func (st *conn) frames(c gnet.Conn) gnet.Action {
	act := gnet.None
	for act == gnet.None {
		n := c.InboundBuffered()
		if n < 2 {
			break
		}
		hb, _ := c.Peek(min(n, ws.MaxHeaderSize))
		h, err := ws.ReadHeader(bytes.NewReader(hb))
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break // the header is not all here yet
		}
		if err != nil || !h.Masked || h.Rsv != 0 || h.Length > 1<<24 ||
			(h.OpCode.IsControl() && (h.Length > 125 || !h.Fin)) {
			return gnet.Close
		}
		hn := ws.HeaderSize(h)
		size := hn + int(h.Length)
		if n < size {
			break // the payload is not all here yet
		}
		f, _ := c.Peek(size)
		payload := f[hn:]
		ws.Cipher(payload, h.Mask, 0)
		switch h.OpCode {
		case ws.OpText, ws.OpBinary, ws.OpContinuation:
			st.out = appendFrame(st.out, ws.Header{Fin: h.Fin, OpCode: h.OpCode}, payload)
		case ws.OpPing:
			st.out = appendFrame(st.out, ws.Header{Fin: true, OpCode: ws.OpPong}, payload)
		case ws.OpClose:
			st.out = appendFrame(st.out, ws.Header{Fin: true, OpCode: ws.OpClose}, payload)
			act = gnet.Close
		case ws.OpPong:
		default:
			return gnet.Close
		}
		_, _ = c.Discard(size)
	}
	if len(st.out) > 0 {
		_, _ = c.Write(st.out)
		if cap(st.out) > 64<<10 {
			st.out = nil
		}
		st.out = st.out[:0]
	}
	return act
}

// headerWriter appends what ws.WriteHeader writes.
type headerWriter struct{ b []byte }

func (w *headerWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

func appendFrame(b []byte, h ws.Header, payload []byte) []byte {
	h.Length = int64(len(payload))
	w := headerWriter{b}
	_ = ws.WriteHeader(&w, h)
	return append(w.b, payload...)
}

func main() {
	addr := flag.String("addr", "127.0.0.1:18080", "listen address")
	loops := flag.Int("loops", runtime.NumCPU(), "event loops")
	reusePort := flag.Bool("reuse-port", false, "SO_REUSEPORT, so several processes can listen on one port")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "gnetecho: unexpected arguments")
		os.Exit(2)
	}
	err := gnet.Run(&server{}, "tcp://"+*addr,
		gnet.WithMulticore(true),
		gnet.WithNumEventLoop(*loops),
		gnet.WithReusePort(*reusePort),
		gnet.WithTCPNoDelay(gnet.TCPNoDelay),
	)
	if err != nil {
		log.Fatal(err)
	}
}
