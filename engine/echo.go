package engine

import "github.com/wsdproject/wsd/frame"

// Echo is a Handler that sends every text and binary message back as it
// came. wsd serves it on --echo-path for conformance runs and benchmarks.
type Echo struct{}

// OnOpen does nothing.
func (Echo) OnOpen(Conn) {}

// OnMessage writes the message back.
func (Echo) OnMessage(c Conn, op frame.OpCode, data []byte) { _ = c.Write(op, data) }

// OnClose does nothing.
func (Echo) OnClose(Conn, CloseInfo) {}
