// Copyright (c) 2026 The wsd authors. Licensed under the Apache License,
// Version 2.0, like the rest of gnet.

//go:build (darwin || dragonfly || freebsd || linux || netbsd || openbsd) && !poll_opt

package gnet

// With the default poller, events carry the descriptor and the loop looks
// it up (orbit/run in reactor_default.go adopts pending connections for a
// descriptor it does not know): nothing to prepare.
func (c *conn) pending() {}
func (c *conn) adopted() {}
