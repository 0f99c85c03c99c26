// Copyright (c) 2026 The wsd authors. Licensed under the Apache License,
// Version 2.0, like the rest of gnet.

//go:build (darwin || dragonfly || freebsd || linux || netbsd || openbsd) && poll_opt

package gnet

import "github.com/panjf2000/gnet/v2/pkg/netpoll"

// With poll_opt the poller calls the attachment's callback directly, so a
// pending connection's first event must adopt it (and every other pending
// one) before it is processed.
func (c *conn) pending() {
	c.pollAttachment.Callback = func(fd int, _ netpoll.IOEvent, flags netpoll.IOFlags) error {
		if err := c.loop.adoptPending(); err != nil {
			return err
		}
		return c.processIO(fd, netpoll.ReadEvents, flags)
	}
}

func (c *conn) adopted() { c.pollAttachment.Callback = c.processIO }
