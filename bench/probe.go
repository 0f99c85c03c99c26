package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/wsdproject/wsd/frame"
)

// probe is one ordinary connection a run keeps beside its load, timing a
// ping on it now and then: how quickly a live connection is served while
// the servers hold more and more others.
type probe struct {
	c *wsClient // nil when the dial failed

	mu  sync.Mutex
	err error // why the probe stopped (nil: it works)
}

// newProbe dials the probe connection; a failure is kept and reported by
// rtt (NaN) and errText, not returned: the run goes on without it.
func newProbe(ctx context.Context, target, path string) *probe {
	p := &probe{}
	conn, err := dialUpgraded(ctx, target, path, nil)
	if err != nil {
		p.err = fmt.Errorf("dial: %w", err)
		return p
	}
	p.c = newWSClientSize(conn, 4096)
	p.c.pong = make(chan struct{}, 1)
	go func() {
		for {
			if _, _, err := p.c.readMessage(); err != nil {
				p.fail(err)
				return
			}
		}
	}()
	return p
}

// opened is 1 if the probe's connection was made, else 0.
func (p *probe) opened() int {
	if p.c == nil {
		return 0
	}
	return 1
}

func (p *probe) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err == nil {
		p.err = err
	}
}

func (p *probe) errText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err == nil {
		return ""
	}
	return p.err.Error()
}

// rtt pings and waits for the pong (at most 5 s): the round trip in
// milliseconds, or NaN once the probe has failed. One caller at a time.
func (p *probe) rtt() float64 {
	if p.c == nil || p.errText() != "" {
		return math.NaN()
	}
	select {
	case <-p.c.pong: // a late pong from a ping that timed out
	default:
	}
	start := time.Now()
	if err := p.c.write(frame.OpPing, []byte("probe"), 5*time.Second); err != nil {
		p.fail(err)
		return math.NaN()
	}
	select {
	case <-p.c.pong:
		return float64(time.Since(start).Microseconds()) / 1000
	case <-time.After(5 * time.Second):
		p.fail(errors.New("no pong within 5 s"))
		return math.NaN()
	}
}

func (p *probe) close() {
	if p.c != nil {
		p.c.close()
	}
}
