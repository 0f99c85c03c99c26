package hub

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/wsdproject/wsd/auth"
	"github.com/wsdproject/wsd/broker"
	"github.com/wsdproject/wsd/engine"
	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/protocol/mpjson"
)

// ErrBusy: the event loops are behind on delivering; the publication was
// not accepted. Retry later.
var ErrBusy = errors.New("the server is behind on delivering publications")

// ErrInvalidData: the data is JSON that not every subprotocol can carry
// (not UTF-8, or a number beyond float64's range), so some subscribers
// could never receive it, live or recovered; it was not accepted. Publish
// wraps it with the reason.
var ErrInvalidData = errors.New("the data cannot reach every subscriber (JSON and MessagePack)")

// Publish publishes data (raw JSON) to ch: the broker gives it an offset,
// keeps it in the channel's history (as the channel's options say) and
// delivers it to every subscriber of the cluster. It returns the
// publication's position. Data that one of the subprotocols cannot carry
// (mpjson.Check: not UTF-8, which nothing else checks in the HTTP API's
// JSON body, or a number beyond float64's range) is refused with
// ErrInvalidData: every publication goes through here (a client's
// publish, the HTTP API), and one accepted that way would be lost to that
// subprotocol's subscribers (JSON ones could not even read a text frame
// that is not UTF-8). Safe from any goroutine (from a handler too).
func (h *Hub) Publish(ch string, data []byte) (broker.Position, error) {
	if auth.ValidChannel(ch) != nil {
		return broker.Position{}, ErrInvalidChannel
	}
	if err := mpjson.Check(data); err != nil {
		return broker.Position{}, fmt.Errorf("%w: %w", ErrInvalidData, err)
	}
	// A publication this node's loops could not take now would reach its
	// subscribers only through recovery: refuse it before it is accepted.
	if h.srv.Busy(len(data) + len(ch) + 64) {
		h.stats.Refused.Add(1)
		return broker.Position{}, ErrBusy
	}
	// Accepted means delivered to the connections open now, also when a
	// drain begins meanwhile: the drain waits for this.
	if !h.srv.Hold() {
		return broker.Position{}, engine.ErrServerClosed
	}
	defer h.srv.Release()
	if h.opts.PublishLatency == nil {
		return h.b.Publish(ch, data, h.opts.Channel(ch).ChannelOptions)
	}
	start := time.Now()
	pos, err := h.b.Publish(ch, data, h.opts.Channel(ch).ChannelOptions)
	if err == nil {
		h.opts.PublishLatency(time.Since(start))
	}
	return pos, err
}

// onLoops runs fn on every event loop, with that loop's index, and waits
// until all have run it or ctx ends.
func (h *Hub) onLoops(ctx context.Context, fn func(k int, x *loopIndex)) error {
	n := h.srv.Loops()
	var wg sync.WaitGroup
	for k := range n {
		wg.Add(1)
		if err := h.srv.Execute(k, func() {
			defer wg.Done()
			fn(k, h.index(k))
		}); err != nil {
			wg.Done()
			return err
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("event loops did not answer: %w", ctx.Err())
	}
}

// Disconnect closes every connection of user on this node with code and
// reason, and returns how many it closed.
func (h *Hub) Disconnect(ctx context.Context, user string, code frame.CloseCode, reason string) (int, error) {
	var mu sync.Mutex
	total := 0
	err := h.onLoops(ctx, func(_ int, x *loopIndex) {
		n := 0
		for _, c := range x.users[user] {
			if c.Close(code, reason) == nil {
				n++
			}
		}
		mu.Lock()
		total += n
		mu.Unlock()
	})
	return total, err
}

// UnsubscribeUser takes every connection of user on this node off ch and
// tells each with {"type":"unsubscribed","channel":…}. It returns how many
// connections were subscribed.
func (h *Hub) UnsubscribeUser(ctx context.Context, user, ch string) (int, error) {
	msg := appendString([]byte(`{"type":"unsubscribed","channel":`), ch)
	msg = append(msg, '}')
	var mu sync.Mutex
	total := 0
	err := h.onLoops(ctx, func(_ int, x *loopIndex) {
		n := 0
		for _, c := range x.users[user] {
			cl := ClientOf(c)
			if cl != nil && h.Unsubscribe(c, cl, ch) == nil {
				_ = c.Send(msg) // in the connection's encoding
				n++
			}
		}
		mu.Lock()
		total += n
		mu.Unlock()
	})
	return total, err
}

// Channels returns the channels with subscribers on this node and how many
// subscribers each has.
func (h *Hub) Channels(ctx context.Context) (map[string]int, error) {
	var mu sync.Mutex
	out := map[string]int{}
	err := h.onLoops(ctx, func(_ int, x *loopIndex) {
		mu.Lock()
		defer mu.Unlock()
		for name, lc := range x.chans {
			out[name] += len(lc.subs)
		}
	})
	return out, err
}

// Presence returns who is in ch (the channel must keep presence).
func (h *Hub) Presence(ch string) ([]broker.ClientInfo, error) {
	if auth.ValidChannel(ch) != nil {
		return nil, ErrInvalidChannel
	}
	if !h.opts.Channel(ch).Presence {
		return nil, ErrNoPresence
	}
	return h.b.Presence(ch)
}

// History returns ch's retained publications after since (all if nil), at
// most limit (0: all retained), and the stream's position.
func (h *Hub) History(ch string, since *broker.Position, limit int) ([]broker.Publication, broker.Position, error) {
	if auth.ValidChannel(ch) != nil {
		return nil, broker.Position{}, ErrInvalidChannel
	}
	return h.b.History(ch, since, limit)
}
