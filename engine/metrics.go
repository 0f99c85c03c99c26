package engine

import (
	"io"
	"strconv"
	"sync/atomic"

	"github.com/wsdproject/wsd/frame"
)

// counter is written only by the event loop that owns it and read by the
// metrics scrape: a load and a store, no locked instruction, no cache line
// shared between loops.
type counter struct{ v atomic.Uint64 }

func (c *counter) add(n uint64) { c.v.Store(c.v.Load() + n) }
func (c *counter) inc()         { c.add(1) }
func (c *counter) dec()         { c.add(^uint64(0)) }
func (c *counter) get() uint64  { return c.v.Load() }

// closeCodes are the close codes counted under their own label; the rest
// are counted as "other".
var closeCodes = [...]frame.CloseCode{1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}

func closeBucket(code frame.CloseCode) int {
	for i, c := range closeCodes {
		if c == code {
			return i
		}
	}
	return len(closeCodes)
}

// loopMetrics are one event loop's counters and gauges.
type loopMetrics struct {
	accepted          counter
	handshakes        counter
	open              counter // gauge: incremented on open, decremented on close, by the loop
	closed            counter
	messagesIn        counter
	messagesOut       counter
	bytesIn           counter
	bytesOut          counter
	pings             counter
	heartbeatTimeouts counter
	slowClose         counter // connections closed as slow consumers
	slowDrop          counter // times a connection went over its mark under the drop policy
	droppedFrames     counter // frames not sent to connections over their mark
	handlerPanics     counter
	encodeFailures    counter // messages an Alternate could not encode (not sent to those connections)
	handshakeFailures [numFailReasons]counter
	limitsFired       [numLimitKinds]counter
	handshakeLatency  histogram // accept to 101 written
	publishLatency    histogram // Fanout/Broadcast called to written to the loop's last receiver
	closedByCode      [len(closeCodes) + 1]counter
	closedByReason    [numCloseReasons]counter
	outboundBytes     atomic.Int64 // bytes waiting in user space for peers, as of the last tick
	backlogged        atomic.Int64 // connections with such bytes, as of the last tick
	_                 [64]byte     // keep the next loop's counters off this cache line
}

// promWriter writes the Prometheus text format: each family's HELP and
// TYPE once, then its samples.
type promWriter struct {
	w   io.Writer
	buf []byte
}

func (p *promWriter) family(name, typ, help string) {
	p.buf = append(p.buf, "# HELP "...)
	p.buf = append(p.buf, name...)
	p.buf = append(p.buf, ' ')
	p.buf = append(p.buf, help...)
	p.buf = append(p.buf, "\n# TYPE "...)
	p.buf = append(p.buf, name...)
	p.buf = append(p.buf, ' ')
	p.buf = append(p.buf, typ...)
	p.buf = append(p.buf, '\n')
}

// sample writes name{label="value"} v (no braces when label is "").
func (p *promWriter) sample(name, label, value string, v int64) {
	p.buf = append(p.buf, name...)
	if label != "" {
		p.buf = append(p.buf, '{')
		p.buf = append(p.buf, label...)
		p.buf = append(p.buf, `="`...)
		p.buf = append(p.buf, value...)
		p.buf = append(p.buf, `"}`...)
	}
	p.buf = append(p.buf, ' ')
	p.buf = strconv.AppendInt(p.buf, v, 10)
	p.buf = append(p.buf, '\n')
}

// one writes a family with a single unlabelled sample.
func (p *promWriter) one(name, typ, help string, v int64) {
	p.family(name, typ, help)
	p.sample(name, "", "", v)
}

// WriteMetrics writes the engine's metrics in Prometheus text format (with
// HELP and TYPE lines), summed over event loops. The cmd/wsd admin server
// adds the Go runtime and process metrics.
func (s *Server) WriteMetrics(w io.Writer) {
	ls := s.loopList()
	sum := func(f func(m *loopMetrics) *counter) int64 {
		var n uint64
		for _, l := range ls {
			n += f(&l.metrics).get()
		}
		return int64(n)
	}
	gauge := func(f func(m *loopMetrics) *atomic.Int64) int64 {
		var n int64
		for _, l := range ls {
			n += f(&l.metrics).Load()
		}
		return n
	}
	p := &promWriter{w: w, buf: make([]byte, 0, 8<<10)}
	p.one("wsd_connections_open", "gauge", "TCP connections open now, handshaking ones included.",
		sum(func(m *loopMetrics) *counter { return &m.open }))
	p.one("wsd_connections_accepted_total", "counter", "TCP connections accepted.",
		sum(func(m *loopMetrics) *counter { return &m.accepted }))
	p.one("wsd_handshakes_total", "counter", "WebSocket upgrades completed.",
		sum(func(m *loopMetrics) *counter { return &m.handshakes }))
	p.family("wsd_handshake_failures_total", "counter", "Upgrade requests refused, by reason.")
	for r := failBadRequest; r < numFailReasons; r++ {
		p.sample("wsd_handshake_failures_total", "reason", r.String(),
			sum(func(m *loopMetrics) *counter { return &m.handshakeFailures[r] }))
	}
	p.one("wsd_connections_closed_total", "counter", "WebSocket connections closed.",
		sum(func(m *loopMetrics) *counter { return &m.closed }))
	p.family("wsd_connections_closed_by_code_total", "counter",
		"WebSocket connections closed, by the close code on the wire (1006: no close frame; other: application codes).")
	for i := range len(closeCodes) + 1 {
		label := "other"
		if i < len(closeCodes) {
			label = strconv.Itoa(int(closeCodes[i]))
		}
		p.sample("wsd_connections_closed_by_code_total", "code", label,
			sum(func(m *loopMetrics) *counter { return &m.closedByCode[i] }))
	}
	p.family("wsd_connections_closed_by_reason_total", "counter", "WebSocket connections closed, by why.")
	for r := ReasonPeer; r < numCloseReasons; r++ {
		p.sample("wsd_connections_closed_by_reason_total", "reason", r.String(),
			sum(func(m *loopMetrics) *counter { return &m.closedByReason[r] }))
	}
	p.one("wsd_messages_in_total", "counter", "Data messages received.",
		sum(func(m *loopMetrics) *counter { return &m.messagesIn }))
	p.one("wsd_messages_out_total", "counter", "Data messages queued for sending.",
		sum(func(m *loopMetrics) *counter { return &m.messagesOut }))
	p.one("wsd_bytes_in_total", "counter", "Bytes received: handshakes and frames.",
		sum(func(m *loopMetrics) *counter { return &m.bytesIn }))
	p.one("wsd_bytes_out_total", "counter", "Bytes queued for sending: handshake responses and frames.",
		sum(func(m *loopMetrics) *counter { return &m.bytesOut }))
	p.one("wsd_pings_sent_total", "counter", "Heartbeat pings sent.",
		sum(func(m *loopMetrics) *counter { return &m.pings }))
	p.one("wsd_heartbeat_timeouts_total", "counter", "Connections dropped for unanswered pings.",
		sum(func(m *loopMetrics) *counter { return &m.heartbeatTimeouts }))
	p.family("wsd_slow_consumer_total", "counter",
		"Connections found over --max-outbound-bytes: closed with 1013, or starting to have frames dropped.")
	p.sample("wsd_slow_consumer_total", "action", "close", sum(func(m *loopMetrics) *counter { return &m.slowClose }))
	p.sample("wsd_slow_consumer_total", "action", "drop", sum(func(m *loopMetrics) *counter { return &m.slowDrop }))
	p.family("wsd_outbound_dropped_frames_total", "counter", "Frames not sent to a connection, by reason.")
	p.sample("wsd_outbound_dropped_frames_total", "reason", "slow_consumer",
		sum(func(m *loopMetrics) *counter { return &m.droppedFrames }))
	p.one("wsd_outbound_buffered_bytes", "gauge",
		"Bytes waiting in user space for peers to read, summed over loops (refreshed every tick).",
		gauge(func(m *loopMetrics) *atomic.Int64 { return &m.outboundBytes }))
	p.one("wsd_outbound_backlogged_connections", "gauge",
		"Connections with bytes waiting in user space (refreshed every tick).",
		gauge(func(m *loopMetrics) *atomic.Int64 { return &m.backlogged }))
	var backlog int64
	for _, l := range ls {
		backlog += l.inbox.bytes.Load()
	}
	p.one("wsd_broadcast_backlog_bytes", "gauge",
		"Bytes of broadcasts waiting in the loops' inboxes to be delivered, summed over loops.", backlog)
	p.family("wsd_broadcasts_refused_total", "counter", "Broadcasts refused, by reason (backlog: a loop was behind by --max-broadcast-backlog).")
	p.sample("wsd_broadcasts_refused_total", "reason", "backlog", int64(s.refusedBacklog.Load()))
	p.one("wsd_handler_panics_total", "counter", "Handler callbacks that panicked (their connection closed with 1011).",
		sum(func(m *loopMetrics) *counter { return &m.handlerPanics }))
	p.one("wsd_encode_failures_total", "counter", "Messages a route's second encoding (wsd.msgpack) could not express, so not sent to the connections that use it.",
		sum(func(m *loopMetrics) *counter { return &m.encodeFailures }))
	p.family("wsd_limits_fired_total", "counter", "Per-connection limits that fired, by kind (message_rate: a message refused with RATE_LIMIT_EXCEEDED; message_rate_close and inbound_bytes: closed with 1008; idle_timeout: closed with 1000).")
	for k := range numLimitKinds {
		p.sample("wsd_limits_fired_total", "kind", limitNames[k], sum(func(m *loopMetrics) *counter { return &m.limitsFired[k] }))
	}
	p.histogram("wsd_handshake_duration_seconds", "From TCP accept to the 101 response written (includes the client sending its request).",
		ls, func(m *loopMetrics) *histogram { return &m.handshakeLatency })
	p.histogram("wsd_publish_delivery_seconds", "From a broadcast or channel publication being fanned out to its frame written for the last receiver on an event loop (one observation per loop with receivers).",
		ls, func(m *loopMetrics) *histogram { return &m.publishLatency })
	a := s.admit
	p.family("wsd_admission_rejected_total", "counter",
		"Connections refused before their upgrade by the admission rules, by reason.")
	for v := admitServerFull; v < numAdmitVerdicts; v++ {
		p.sample("wsd_admission_rejected_total", "reason", v.String(), int64(a.rejected[v].Load()))
	}
	p.one("wsd_admitted_connections", "gauge", "Connections counted against --max-conns now.", a.conns.Load())
	p.one("wsd_max_connections", "gauge", "The --max-conns cap in force.", a.maxConns)
	var tracked, banned, bans int64
	if a.ips != nil {
		tracked, banned, bans = a.ips.entries.Load(), a.ips.banned.Load(), int64(a.ips.bans.Load())
	}
	p.one("wsd_tracked_ips", "gauge", "Client addresses in the per-address table.", tracked)
	p.one("wsd_banned_ips", "gauge", "Client addresses banned now (refreshed every second).", banned)
	p.one("wsd_bans_total", "counter", "Client addresses banned for repeated violations.", bans)
	p.one("wsd_accept_errors_total", "counter", "accept(2) failures (such as EMFILE); wsd backs off and retries.",
		int64(s.acceptErrors.Load()))
	p.family("wsd_loop_connections", "gauge", "TCP connections open now on each event loop.")
	for _, l := range ls {
		p.sample("wsd_loop_connections", "loop", strconv.Itoa(int(l.idx)), int64(l.metrics.open.get()))
	}
	p.one("wsd_event_loops", "gauge", "Event loops that have served a connection.", int64(len(ls)))
	var slots int64
	for _, l := range ls {
		slots += l.slabCap.Load()
	}
	p.one("wsd_session_slots", "gauge", "Session slots allocated (live or free).", slots)
	var draining int64
	if s.closing.Load() {
		draining = 1
	}
	p.one("wsd_draining", "gauge", "1 while the server is shutting down.", draining)
	var ready int64
	if ok, _ := s.Ready(); ok {
		ready = 1
	}
	p.one("wsd_ready", "gauge", "1 while /readyz answers 200 (not draining, not at --max-conns).", ready)
	_, _ = w.Write(p.buf)
}

// OpenConnections returns the number of connections open now, handshaking
// ones included.
func (s *Server) OpenConnections() int {
	n := 0
	for _, l := range s.loopList() {
		n += int(l.metrics.open.get())
	}
	return n
}
