// Copyright (c) 2026 The wsd authors. Licensed under the Apache License,
// Version 2.0, like the rest of gnet.

//go:build darwin || dragonfly || freebsd || linux || netbsd || openbsd

package gnet

import (
	"net"

	"golang.org/x/sys/unix"

	"github.com/panjf2000/gnet/v2/pkg/queue"
	"github.com/panjf2000/gnet/v2/pkg/socket"
)

// EnrollAccepted is wsd's addition to gnet (see WSD-PATCH.md): it hands a
// TCP socket the caller has accepted itself (non-blocking, close-on-exec)
// to one of the client's event loops, as gnet's own acceptor does, and
// returns without waiting for the loop. Unlike Enroll it does not duplicate
// the descriptor (gnet owns fd from the call on, and closes it on any
// failure), does not rebuild the remote address from its string, and does
// not block the caller until the loop has registered the connection.
//
// local and remote are what the connection's LocalAddr and RemoteAddr
// return; sa is the peer's socket address (from accept). ctx is the
// connection's context until OnOpen changes it. Neither address may have a
// Zone (gnet recycles zones' bytes). failed, if not nil, runs on the event
// loop, with remote, when the loop cannot register the socket (epoll_ctl
// failing): the socket is closed then and OnOpen does not run. An error
// from EnrollAccepted itself means the connection never reached a loop (the
// socket is closed, OnOpen will not run, failed is not called).
func (cli *Client) EnrollAccepted(fd int, sa unix.Sockaddr, local, remote net.Addr, ctx any, failed func(remote net.Addr, err error)) error {
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
	err := el.poller.Trigger(queue.HighPriority, func(any) error {
		err := el.register0(gc)
		if err != nil && !gc.opened && failed != nil {
			failed(remote, err) // register0 has closed the socket
		}
		return err
	}, nil)
	if err != nil {
		_ = unix.Close(fd)
		gc.release()
	}
	return err
}
