package engine

import (
	"strconv"
	"time"
)

// latencyBuckets are the upper bounds, in seconds, of the latency
// histograms (Prometheus "le"), from half a millisecond to ten seconds.
var latencyBuckets = [...]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// histogram is one event loop's latency histogram: written by that loop
// only (counters, no locked instruction), summed over loops by the scrape.
type histogram struct {
	counts [len(latencyBuckets) + 1]counter // per bucket, not cumulative; the last is +Inf
	sumUS  counter                          // microseconds
}

func (h *histogram) observe(d time.Duration) {
	s := d.Seconds()
	i := 0
	for i < len(latencyBuckets) && s > latencyBuckets[i] {
		i++
	}
	h.counts[i].inc()
	h.sumUS.add(uint64(max(d, 0) / time.Microsecond))
}

// writeHistogram writes the histogram family name, summed over loops.
func (p *promWriter) histogram(name, help string, ls []*loop, pick func(*loopMetrics) *histogram) {
	p.family(name, "histogram", help)
	var cum, sum uint64
	for i := range len(latencyBuckets) + 1 {
		for _, l := range ls {
			cum += pick(&l.metrics).counts[i].get()
		}
		le := "+Inf"
		if i < len(latencyBuckets) {
			le = strconv.FormatFloat(latencyBuckets[i], 'g', -1, 64)
		}
		p.sample(name+"_bucket", "le", le, int64(cum))
	}
	for _, l := range ls {
		sum += pick(&l.metrics).sumUS.get()
	}
	p.buf = append(p.buf, name...)
	p.buf = append(p.buf, "_sum "...)
	p.buf = strconv.AppendFloat(p.buf, float64(sum)/1e6, 'f', -1, 64)
	p.buf = append(p.buf, '\n')
	p.sample(name+"_count", "", "", int64(cum))
}
