package engine

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"
)

// wsd accepts connections itself and hands each to a gnet event loop
// (gnet's client engine, which runs loops without a listener), rather than
// letting gnet's reactor accept, for three reasons:
//   - gnet stops the whole engine, every connection with it, on an accept
//     error it does not expect, EMFILE included: a peer that opens enough
//     connections would take the server down (wsd backs off and retries);
//   - a drain must refuse new TCP connections at once while the open ones
//     finish, and gnet cannot close its listener without stopping its loops;
//   - a refusal at accept (server full, paced, a banned or over-limit
//     address) is answered and closed here, before any session exists.

// acceptors is how many goroutines accept: each waits while a loop
// registers the connection it handed over, so more than one keeps accepts
// flowing while a loop is busy.
const acceptors = 2

// listen binds the listener.
func (s *Server) listen() (net.Listener, error) {
	lc := net.ListenConfig{
		KeepAlive: -1, // WebSocket heartbeats find dead peers; no TCP keepalive timers for idle connections
		Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				if s.cfg.ReusePort {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
				}
			})
			return errors.Join(err, serr)
		},
	}
	return lc.Listen(context.Background(), "tcp", s.cfg.Addr)
}

// acceptLoop accepts until the listener is closed.
func (s *Server) acceptLoop(ln net.Listener, wg *sync.WaitGroup) {
	defer wg.Done()
	var backoff time.Duration
	ticket := new(enrollTicket)
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE, ENFILE, ENOBUFS, ENOMEM: wait for descriptors or
			// memory to come back; the backlog holds the peers meanwhile.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.acceptErrors.Add(1)
			s.logLimited.warn(s.log, "accept failed; retrying", "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		tc, ok := c.(*net.TCPConn)
		if !ok {
			_ = c.Close()
			continue
		}
		if err := s.accepted(tc, ticket); err != nil && !s.closing.Load() {
			// gnet dups the descriptor: at the limit that fails as accept
			// does, and is waited out the same way.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.acceptErrors.Add(1)
			s.logLimited.warn(s.log, "handing a connection to an event loop failed; retrying", "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
	}
}

// enrollTicket goes with a connection handed to gnet (as its context until
// OnOpen replaces it), so that the acceptor can tell whether OnOpen ran:
// gnet's Enroll reports no error when the loop fails to register the
// connection (epoll_ctl failing, ENOSPC past max_user_watches, say), it
// closes it and OnOpen never runs. One per acceptor, reused.
type enrollTicket struct{ opened atomic.Bool }

// accepted admits or refuses one accepted connection; an error means it
// was admitted but could not be handed to a loop (and is closed).
func (s *Server) accepted(c *net.TCPConn, ticket *enrollTicket) error {
	peer := addrOf(c.RemoteAddr())
	a := s.admit
	v, tracked := a.atAccept(peer, monoNow())
	if v != admitOK {
		a.reject(v)
		refuseAtAccept(c, a.response(v))
		s.logLimited.debug(s.log, "connection refused at accept", "client", peer, "reason", v.String())
		return nil
	}
	// OnOpen works out again whether the connection was counted under its
	// peer's address (the same rule as atAccept's): nothing travels along.
	ticket.opened.Store(false)
	_, err := s.cli.EnrollContext(c, ticket)
	if err == nil && !ticket.opened.Load() {
		err = errors.New("the event loop did not register the connection")
	}
	if err != nil {
		a.release()
		if tracked {
			a.ips.release(peer)
		}
		_ = c.Close() // Enroll has closed it already when it got that far; harmless
		return err
	}
	return nil
}

// refuseAtAccept answers a connection refused at accept and closes it.
// Whatever part of the request has arrived is read first: closing a socket
// with unread bytes resets it, and a reset can destroy the answer before
// the client reads it.
func refuseAtAccept(c *net.TCPConn, resp []byte) {
	rc, err := c.SyscallConn()
	if err == nil {
		var scratch [1024]byte
		_ = rc.Read(func(fd uintptr) bool {
			_, _ = unix.Read(int(fd), scratch[:]) // one non-blocking try
			return true
		})
		_ = rc.Write(func(fd uintptr) bool {
			_, _ = unix.Write(int(fd), resp) // a new socket's send buffer takes it whole
			return true
		})
	}
	_ = c.Close()
}

// compactAddrs trims what a connection's two addresses keep alive. Go's
// accept builds each *net.TCPAddr with an IP slice that points into the
// sockaddr it decoded, so each address pins that sockaddr too, for as long
// as gnet keeps the address (the connection's life): about 80 bytes a
// connection. The local address gets the loop's shared copy of its IP
// (every connection of a listener has one of very few), the remote one a
// copy of just its bytes. Run on the connection's loop in OnOpen, before
// anything else reads them.
func (l *loop) compactAddrs(c gnet.Conn) {
	if la, ok := c.LocalAddr().(*net.TCPAddr); ok {
		if !bytes.Equal(la.IP, l.localIP) {
			l.localIP = append(net.IP(nil), la.IP...)
		}
		la.IP = l.localIP
	}
	if ra, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		if ip4 := ra.IP.To4(); ip4 != nil {
			ra.IP = append(make(net.IP, 0, net.IPv4len), ip4...)
		} else {
			ra.IP = append(make(net.IP, 0, net.IPv6len), ra.IP...)
		}
	}
}
