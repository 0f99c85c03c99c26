package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// Sample is what one scrape of the server and the host tell.
type Sample struct {
	At         time.Time
	Open       float64 // wsd_connections_open
	RSS        float64 // process_resident_memory_bytes
	RSSAnon    float64 // process_resident_memory_anon_bytes
	HeapInuse  float64 // go_memstats_heap_inuse_bytes
	HeapLive   float64 // wsd_go_heap_live_bytes (as of the last GC)
	CPUSeconds float64 // process_cpu_seconds_total: utime+stime
	Pings      float64 // wsd_pings_sent_total
	Goroutines float64 // go_goroutines
	KernelSlab float64 // /proc/meminfo Slab, bytes (host-wide)
	// MemFree is /proc/meminfo MemFree, bytes (host-wide). Not
	// MemAvailable: that counts the sockets' reclaimable slab (their
	// inodes and dentries) as available, which it is not while they
	// are open.
	MemFree     float64
	SockInUse   float64 // /proc/net/sockstat TCP inuse (host-wide)
	KernelTCPMm float64 // /proc/net/sockstat TCP mem, bytes (host-wide)
}

var sampleFields = map[string]func(*Sample) *float64{
	"wsd_connections_open":               func(s *Sample) *float64 { return &s.Open },
	"process_resident_memory_bytes":      func(s *Sample) *float64 { return &s.RSS },
	"process_resident_memory_anon_bytes": func(s *Sample) *float64 { return &s.RSSAnon },
	"go_memstats_heap_inuse_bytes":       func(s *Sample) *float64 { return &s.HeapInuse },
	"wsd_go_heap_live_bytes":             func(s *Sample) *float64 { return &s.HeapLive },
	"process_cpu_seconds_total":          func(s *Sample) *float64 { return &s.CPUSeconds },
	"wsd_pings_sent_total":               func(s *Sample) *float64 { return &s.Pings },
	"go_goroutines":                      func(s *Sample) *float64 { return &s.Goroutines },
}

// Scrape reads the server's /metrics at adminURL and the host's kernel
// memory counters.
func Scrape(adminURL string) (Sample, error) {
	s := Sample{At: time.Now()}
	resp, err := http.Get(strings.TrimSuffix(adminURL, "/") + "/metrics")
	if err != nil {
		return s, fmt.Errorf("scrape %s: %w", adminURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("scrape %s: %s", adminURL, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if f, ok := sampleFields[name]; ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
			if err == nil {
				*f(&s) = v
			}
		}
	}
	if err := sc.Err(); err != nil {
		return s, fmt.Errorf("scrape %s: %w", adminURL, err)
	}
	s.KernelSlab = meminfoBytes("Slab")
	s.MemFree = meminfoBytes("MemFree")
	s.SockInUse, s.KernelTCPMm = sockstatTCP()
	return s, nil
}

// meminfoBytes returns a /proc/meminfo field in bytes (0 if unreadable).
func meminfoBytes(field string) float64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				v, _ := strconv.ParseFloat(f[0], 64)
				return v * 1024
			}
		}
	}
	return 0
}

// sockstatTCP returns the host's TCP sockets in use and the pages of
// memory TCP buffers hold (as bytes), from /proc/net/sockstat.
func sockstatTCP() (inuse, mem float64) {
	b, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "TCP: ")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		for i := 0; i+1 < len(f); i += 2 {
			v, _ := strconv.ParseFloat(f[i+1], 64)
			switch f[i] {
			case "inuse":
				inuse = v
			case "mem":
				mem = v * float64(os.Getpagesize())
			}
		}
	}
	return inuse, mem
}

// Metrics is one scrape of a Prometheus text page: each series under its
// name as written, labels included (`wsd_slow_consumer_total{action="close"}`).
type Metrics map[string]float64

// Get returns a series' value, or nil when the page does not have it: an
// absent metric is "not known", never zero.
func (m Metrics) Get(series string) *float64 {
	v, ok := m[series]
	if !ok {
		return nil
	}
	return &v
}

// ScrapeMetrics reads every series on the server's /metrics at adminURL,
// giving up after timeout.
func ScrapeMetrics(ctx context.Context, adminURL string, timeout time.Duration) (Metrics, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(adminURL, "/")+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", adminURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", adminURL, resp.Status)
	}
	m, err := parseMetrics(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", adminURL, err)
	}
	return m, nil
}

// parseMetrics reads the Prometheus text format: `series value [timestamp]`
// lines, where the series may carry labels in braces (whose values may hold
// spaces).
func parseMetrics(r io.Reader) (Metrics, error) {
	m := Metrics{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		end := strings.IndexAny(line, " {")
		if end < 0 {
			continue
		}
		if line[end] == '{' {
			rb := strings.LastIndexByte(line, '}')
			if rb < end {
				continue
			}
			end = rb + 1
		}
		f := strings.Fields(line[end:])
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		m[line[:end]] = v
	}
	return m, sc.Err()
}
