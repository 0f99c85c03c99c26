package engine

import (
	"io"
	"strconv"
	"sync/atomic"

	"github.com/VictoriaMetrics/metrics"

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

// loopMetrics are one event loop's counters.
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
	handshakeFailures [numFailReasons]counter
	closedByCode      [len(closeCodes) + 1]counter
	_                 [64]byte // keep the next loop's counters off this cache line
}

// WriteMetrics writes the engine's metrics in Prometheus text format,
// summed over event loops. The cmd/wsd admin server adds the Go runtime
// and process metrics.
func (s *Server) WriteMetrics(w io.Writer) {
	ls := s.loopList()
	sum := func(f func(m *loopMetrics) *counter) uint64 {
		var n uint64
		for _, l := range ls {
			n += f(&l.metrics).get()
		}
		return n
	}
	metrics.WriteGaugeUint64(w, "wsd_connections_open", sum(func(m *loopMetrics) *counter { return &m.open }))
	metrics.WriteCounterUint64(w, "wsd_connections_accepted_total", sum(func(m *loopMetrics) *counter { return &m.accepted }))
	metrics.WriteCounterUint64(w, "wsd_handshakes_total", sum(func(m *loopMetrics) *counter { return &m.handshakes }))
	for r := failBadRequest; r < numFailReasons; r++ {
		metrics.WriteCounterUint64(w, `wsd_handshake_failures_total{reason="`+r.String()+`"}`,
			sum(func(m *loopMetrics) *counter { return &m.handshakeFailures[r] }))
	}
	metrics.WriteCounterUint64(w, "wsd_connections_closed_total", sum(func(m *loopMetrics) *counter { return &m.closed }))
	for i := range len(closeCodes) + 1 {
		label := "other"
		if i < len(closeCodes) {
			label = strconv.Itoa(int(closeCodes[i]))
		}
		metrics.WriteCounterUint64(w, `wsd_connections_closed_by_code_total{code="`+label+`"}`,
			sum(func(m *loopMetrics) *counter { return &m.closedByCode[i] }))
	}
	metrics.WriteCounterUint64(w, "wsd_messages_in_total", sum(func(m *loopMetrics) *counter { return &m.messagesIn }))
	metrics.WriteCounterUint64(w, "wsd_messages_out_total", sum(func(m *loopMetrics) *counter { return &m.messagesOut }))
	metrics.WriteCounterUint64(w, "wsd_bytes_in_total", sum(func(m *loopMetrics) *counter { return &m.bytesIn }))
	metrics.WriteCounterUint64(w, "wsd_bytes_out_total", sum(func(m *loopMetrics) *counter { return &m.bytesOut }))
	metrics.WriteCounterUint64(w, "wsd_pings_sent_total", sum(func(m *loopMetrics) *counter { return &m.pings }))
	metrics.WriteCounterUint64(w, "wsd_heartbeat_timeouts_total", sum(func(m *loopMetrics) *counter { return &m.heartbeatTimeouts }))
	metrics.WriteGaugeUint64(w, "wsd_event_loops", uint64(len(ls)))
	var slots uint64
	for _, l := range ls {
		slots += uint64(l.slabCap.Load())
	}
	metrics.WriteGaugeUint64(w, "wsd_session_slots", slots)
	if s.draining.Load() {
		metrics.WriteGaugeUint64(w, "wsd_draining", 1)
	} else {
		metrics.WriteGaugeUint64(w, "wsd_draining", 0)
	}
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
