// Copyright (c) 2026 The wsd authors. Licensed under the Apache License,
// Version 2.0, like the rest of gnet.

//go:build darwin || dragonfly || freebsd || linux || netbsd || openbsd

package gnet

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	errorx "github.com/panjf2000/gnet/v2/pkg/errors"
	"github.com/panjf2000/gnet/v2/pkg/socket"
)

// EnrollAccepted is wsd's addition to gnet (see WSD-PATCH.md): it hands a
// TCP socket the caller has accepted itself (non-blocking, close-on-exec)
// to one of the client's event loops and returns without waiting for the
// loop. Unlike Enroll it does not duplicate the descriptor, does not
// rebuild the remote address from its string, and does not block.
//
// Unlike gnet's own hand-overs it does not wake the loop either: it
// registers the socket with the loop's poller itself, from the caller's
// goroutine (epoll and kqueue are safe for that), and leaves the
// connection in the loop's pending list. The loop adopts its pending
// connections (OnOpen) when the poller reports a descriptor it does not
// know, which is the new connection's first bytes in the common case, and
// when AdoptPending runs on it. A handshake then costs the loop one wake-up
// instead of two (the eventfd's and the request's).
//
// local and remote are what the connection's LocalAddr and RemoteAddr
// return; sa is the peer's socket address (from accept). ctx is the
// connection's context until OnOpen changes it. Neither address may have a
// Zone (gnet recycles zones' bytes). An error means the connection never
// reached a loop: the socket is closed and OnOpen will not run.
func (cli *Client) EnrollAccepted(fd int, sa unix.Sockaddr, local, remote net.Addr, ctx any) error {
	if cli.opts.TCPNoDelay == TCPNoDelay {
		if err := socket.SetNoDelay(fd, 1); err != nil {
			_ = unix.Close(fd)
			return err
		}
	}
	if cli.opts.TCPKeepAlive > 0 {
		if err := setKeepAlive(fd, true, cli.opts.TCPKeepAlive, cli.opts.TCPKeepInterval, cli.opts.TCPKeepCount); err != nil {
			_ = unix.Close(fd)
			return err
		}
	}
	el := cli.eng.eventLoops.next(remote)
	gc := newStreamConn("tcp", fd, el, sa, local, remote)
	gc.ctx = ctx
	gc.pending()
	add := el.poller.AddRead
	if cli.opts.EdgeTriggeredIO {
		add = el.poller.AddReadWrite
	}
	p := &el.pending
	// The lock is held across the registration: the loop can see the
	// descriptor's first event before the append below, and it takes the
	// lock before it decides that a descriptor is unknown, so it waits for
	// the append instead of dropping the descriptor as stale.
	p.mu.Lock()
	err := add(&gc.pollAttachment, cli.opts.EdgeTriggeredIO)
	if err == nil {
		p.list = append(p.list, gc)
		p.n.Add(1)
	}
	p.mu.Unlock()
	if err != nil {
		_ = unix.Close(fd)
		gc.release()
	}
	return err
}

// pendingConns are connections registered with a loop's poller by
// EnrollAccepted that the loop has not adopted yet. EnrollAccepted's
// caller appends under mu; the loop takes the list under mu and adopts
// outside it.
type pendingConns struct {
	mu    sync.Mutex
	n     atomic.Int32 // len(list), read without the lock (load balancing, a cheap "nothing pending")
	list  []*conn
	spare []*conn // the loop's: the previous list's array, reused
}

// adoptPending opens every pending connection on this loop (it runs on the
// loop's goroutine). It returns an error only when the engine is shutting
// down.
func (el *eventloop) adoptPending() error {
	p := &el.pending
	p.mu.Lock()
	list := p.list
	p.list, p.spare = p.spare[:0], nil
	p.mu.Unlock()
	var err error
	for i, c := range list {
		list[i] = nil
		p.n.Add(-1)
		c.adopted()
		el.connections.addConn(c, el.idx)
		// Other errors of open are the connection's (it is closed), as
		// when gnet's own acceptor opens one.
		if e := el.open(c); errors.Is(e, errorx.ErrEngineShutdown) {
			err = e
		}
	}
	p.mu.Lock()
	if p.spare == nil {
		p.spare = list[:0]
	}
	p.mu.Unlock()
	return err
}

// AdoptPending opens the connections EnrollAccepted has handed to this
// loop that it has not adopted yet; call it on the loop (from Execute),
// regularly: a peer that connects and sends nothing is adopted only then.
// It is wsd's addition (see WSD-PATCH.md).
func (el *eventloop) AdoptPending() {
	if el.pending.n.Load() > 0 {
		_ = el.adoptPending()
	}
}

// EventLoops returns the client's event loops, once Start has returned
// (gnet does not enumerate them otherwise). It is wsd's addition (see
// WSD-PATCH.md): wsd keeps state for every loop from the start, so that
// its ticks and its drain reach loops whose connections are all pending.
func (cli *Client) EventLoops() []EventLoop {
	var els []EventLoop
	cli.eng.eventLoops.iterate(func(_ int, el *eventloop) bool {
		els = append(els, el)
		return true
	})
	return els
}
