package engine

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

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

// acceptors is how many goroutines accept. One is enough: it never waits
// for a loop (the hand-over is queued).
const acceptors = 1

// listener is the listening socket, accepted from with accept4 directly
// (Go's net.Listener would register every accepted socket with Go's
// netpoller and wrap it in a net.Conn, only for gnet to take a duplicate of
// it). It is bound by net.ListenConfig (its choice of address family, its
// options) and then held as an *os.File, whose raw Read waits in Go's
// netpoller while nothing is pending; the net.Listener's own descriptor is
// closed. Close stops the listening at once and wakes the acceptor.
type listener struct {
	f    *os.File
	rc   syscall.RawConn
	addr net.Addr
}

// Close closes the listening socket.
func (l *listener) Close() error { return l.f.Close() }

// Addr is the address it listens on.
func (l *listener) Addr() net.Addr { return l.addr }

// listen binds the listener.
func (s *Server) listen() (*listener, error) {
	lc := net.ListenConfig{
		KeepAlive: -1, // WebSocket heartbeats find dead peers; no TCP keepalive timers for idle connections
		Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				// Accepted sockets inherit TCP_NODELAY from the listening
				// socket (Linux copies it into every child), which saves a
				// setsockopt per connection: a handshake storm's CPU is
				// mostly syscalls.
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
				if serr == nil && s.cfg.ReusePort {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
				}
			})
			return errors.Join(err, serr)
		},
	}
	ln, err := lc.Listen(context.Background(), "tcp", s.cfg.Addr)
	if err != nil {
		return nil, err
	}
	defer ln.Close() // the *os.File below holds the socket (a duplicate descriptor)
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		return nil, err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	return &listener{f: f, rc: rc, addr: ln.Addr()}, nil
}

// acceptLoop accepts until the listener is closed. It calls accept4 on the
// listening socket itself (waiting in Go's netpoller only when nothing is
// pending), so an accepted socket is never registered with Go's netpoller
// nor wrapped in a net.Conn: it goes to a loop as it came from the kernel.
func (s *Server) acceptLoop(ln *listener, wg *sync.WaitGroup) {
	defer wg.Done()
	local := newLocalAddrs(ln.addr)
	var backoff time.Duration
	wait := func(msg string, err error) {
		// EMFILE, ENFILE, ENOBUFS, ENOMEM: wait for descriptors or
		// memory to come back; the backlog holds the peers meanwhile.
		backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
		s.acceptErrors.Add(1)
		s.logLimited.warn(s.log, msg, "err", err, "retry_in", backoff)
		time.Sleep(backoff)
	}
	for {
		var (
			nfd  int
			sa   unix.Sockaddr
			aerr error
		)
		err := ln.rc.Read(func(fd uintptr) bool {
			nfd, sa, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			return aerr != unix.EAGAIN // nothing pending: wait until something is
		})
		if err != nil {
			return // the listener is closed
		}
		switch aerr {
		case nil:
		case unix.EINTR, unix.ECONNABORTED, unix.ECONNRESET:
			continue // a peer gone before we took it; Go's Accept retries these too
		default:
			wait("accept failed; retrying", os.NewSyscallError("accept4", aerr))
			continue
		}
		if err := s.accepted(nfd, sa, local); err != nil && !s.closing.Load() {
			// Handing it to a loop failed (epoll_ctl: ENOSPC past
			// max_user_watches, ENOMEM; or setsockopt): it is closed;
			// wait it out as an accept error.
			wait("handing a connection to an event loop failed; retrying", err)
			continue
		}
		backoff = 0
	}
}

// accepted admits or refuses one accepted socket (gnet or the refusal owns
// fd from here on); an error means it was admitted but could not be handed
// to a loop (and is closed, its admission returned).
func (s *Server) accepted(fd int, sa unix.Sockaddr, local *localAddrs) error {
	peer, remote := sockaddrAddrs(sa)
	a := s.admit
	v, tracked := a.atAccept(peer, monoNow())
	if v != admitOK {
		a.reject(v)
		refuseAtAccept(fd, a.response(v))
		s.logLimited.debug(s.log, "connection refused at accept", "client", peer, "reason", v.String())
		return nil
	}
	// OnOpen works out again whether the connection was counted under its
	// peer's address (the same rule as atAccept's): nothing travels along.
	err := s.cli.EnrollAccepted(fd, sa, local.of(fd), remote, nil)
	if err != nil {
		a.release()
		if tracked {
			a.ips.release(peer)
		}
		return err
	}
	return nil
}

// refuseAtAccept answers a socket refused at accept and closes it.
// Whatever part of the request has arrived is read first: closing a socket
// with unread bytes resets it, and a reset can destroy the answer before
// the client reads it.
func refuseAtAccept(fd int, resp []byte) {
	var scratch [1024]byte
	_, _ = unix.Read(fd, scratch[:]) // one non-blocking try
	_, _ = unix.Write(fd, resp)      // a new socket's send buffer takes it whole
	_ = unix.Close(fd)
}

// sockaddrAddrs converts a peer's socket address into what admission
// keys on and the *net.TCPAddr its connection keeps (an IP of its own, 4
// or 16 bytes, and nothing else: the smallest that can be kept).
func sockaddrAddrs(sa unix.Sockaddr) (netip.Addr, *net.TCPAddr) {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrFrom4(sa.Addr), &net.TCPAddr{IP: append(make(net.IP, 0, net.IPv4len), sa.Addr[:]...), Port: sa.Port}
	case *unix.SockaddrInet6:
		a := netip.AddrFrom16(sa.Addr)
		if a.Is4In6() {
			ip4 := a.Unmap().As4()
			return a.Unmap(), &net.TCPAddr{IP: append(make(net.IP, 0, net.IPv4len), ip4[:]...), Port: sa.Port}
		}
		return a, &net.TCPAddr{IP: append(make(net.IP, 0, net.IPv6len), sa.Addr[:]...), Port: sa.Port}
	}
	return netip.Addr{}, &net.TCPAddr{}
}

// localAddrs gives accepted connections their local address, shared: the
// listener's own when it is bound to one address, else (a wildcard
// listener) the socket's as getsockname tells, one *net.TCPAddr kept for
// the local address seen last. Used by the acceptor only; the addresses it
// hands out are never changed.
type localAddrs struct {
	fixed *net.TCPAddr // the listener's address when it is not a wildcard
	last  *net.TCPAddr
}

func newLocalAddrs(ln net.Addr) *localAddrs {
	l := &localAddrs{}
	if ta, ok := ln.(*net.TCPAddr); ok && !ta.IP.IsUnspecified() && ta.Zone == "" {
		l.fixed = &net.TCPAddr{IP: ta.IP, Port: ta.Port}
	}
	return l
}

func (l *localAddrs) of(fd int) net.Addr {
	if l.fixed != nil {
		return l.fixed
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return &net.TCPAddr{}
	}
	_, a := sockaddrAddrs(sa)
	if l.last != nil && l.last.Port == a.Port && l.last.IP.Equal(a.IP) {
		return l.last
	}
	l.last = a
	return a
}
