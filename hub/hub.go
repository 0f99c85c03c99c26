// Package hub is wsd's channel layer on top of the engine: which
// connections are subscribed to which channels, presence, history and
// recovery, with publications carried by a broker.Broker.
//
// Each event loop keeps its own channel index (channel → the loop's
// subscribers), touched only on that loop. A publication is encoded into
// one WebSocket frame once, on the goroutine the broker delivers it on,
// and every loop writes those same bytes to its own subscribers
// (engine.Server.Fanout); the engine makes the MessagePack form at most
// once more, for the wsd.msgpack subscribers (engine.Alternate). No lock
// is taken on the loops' delivery path; the hub's mutex guards the table
// of the node's broker subscriptions (read-locked once per publication,
// to find the channel's fan-out key, which carries the publication's
// epoch to the loops), and a mutex per channel orders that
// channel's broker Subscribe and Unsubscribe (taken when a loop gets its
// first subscriber of a channel or loses its last, never across a broker
// call for another channel).
package hub

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wsdproject/wsd/broker"
	"github.com/wsdproject/wsd/engine"
)

// ChannelOptions are a channel's features, from its namespace.
type ChannelOptions struct {
	broker.ChannelOptions
	// Presence keeps the channel's subscribers in the broker's presence.
	Presence bool
	// JoinLeave sends join and leave events to the channel's subscribers.
	JoinLeave bool
}

// Options configure a Hub.
type Options struct {
	// Server is the engine the hub's connections live on.
	Server *engine.Server
	// Broker carries publications; it is started by New (Broker.Run).
	Broker broker.Broker
	// Channel returns a channel's options (from its namespace); nil gives
	// every channel the zero options (no history, presence or events).
	Channel func(name string) ChannelOptions
	// MaxSubscriptions bounds the channels one connection may be subscribed
	// to at once (default 128).
	MaxSubscriptions int
	// MaxChannels bounds the channels with subscribers on this node
	// (default 100,000): a subscribe that would add one more is refused
	// with ErrTooManyChannels. Channel names come from clients, so this is
	// what bounds the hub's channel records whatever they send.
	MaxChannels int
	// NodeID names this node (in client ids and /api/info); default: a
	// random one.
	NodeID string
	Logger *slog.Logger
	// PublishLatency, if set, is told how long each accepted publication
	// took in the broker (its offset, history and hand-off to the loops).
	PublishLatency func(time.Duration)
}

// Hub keeps channels for an engine.Server. Its methods are safe for
// concurrent use unless they say otherwise; methods taking an engine.Conn
// run on that connection's loop.
type Hub struct {
	srv     *engine.Server
	b       broker.Broker
	opts    Options
	log     *slog.Logger
	started time.Time

	loops [256]atomic.Pointer[loopIndex] // each written and read by its own loop only (after creation)

	mu   sync.RWMutex         // guards subs and each nodeChan's n
	subs map[string]*nodeChan // channels with subscribers on some loop (or being unsubscribed)

	frames sync.Pool     // *[]byte: publication encoding buffers
	stamp  atomic.Uint64 // join/leave events fanned out so far (their stamps)
	stats  Stats
}

// Stats are the hub's counters, for /metrics.
type Stats struct {
	Publications       atomic.Uint64 // publications fanned out to this node's loops
	Refused            atomic.Uint64 // publications the engine refused to fan out (ErrBacklog)
	Recovered          atomic.Uint64 // subscribes that recovered what they missed
	Unrecoverable      atomic.Uint64 // subscribes told recovered:false
	RecoveredMessages  atomic.Uint64 // publications replayed by recovery
	SubscribesRefused  atomic.Uint64 // subscribes refused (limits, permissions, bad names)
	DuplicatesFiltered atomic.Uint64 // live publications skipped because recovery had sent them
	ChannelsRefused    atomic.Uint64 // subscribes refused because the node has MaxChannels channels
	EpochResets        atomic.Uint64 // subscribed channels whose stream started a new epoch (broker.EpochHandler)
}

// loopIndex is one event loop's view of the channels. Owned by that loop.
type loopIndex struct {
	chans map[string]*localChan
	users map[string][]engine.Conn // authenticated connections by user, for Disconnect
}

// localChan is one channel's subscribers on one loop.
type localChan struct {
	name string
	opts ChannelOptions
	subs []member
}

// member is one subscriber. after, while not 0, is the offset of epoch up
// to which the subscriber already has the channel's publications (sent by
// its recovery, or before its subscription began): live publications of
// that epoch up to it are skipped, so the switch from history to live has
// neither gap nor duplicate. It is cleared at the first newer publication
// of that epoch. A publication of another epoch is never skipped: offsets
// of different epochs are unrelated, and the member's position may be of
// an epoch older than what the node now delivers (the stream started anew
// after the position was read) or newer (recovery read the broker's server
// ahead of the node's delivery, whose old-epoch publications still come).
type member struct {
	c  engine.Conn
	cl *Client
	// f is the member's duplicate filter while it has one (nil after the
	// first publication past it): kept out of line, since a fan-out walks
	// every member of a channel and few of them filter at any time.
	f *filter
	// joined is the hub's event stamp when the subscription began: join
	// and leave events stamped at or before it happened before it, and
	// are skipped (they may still be in the loop's inbox).
	joined uint64
}

// nodeChan is the node's subscription to a channel at the broker. The
// broker calls for one channel are made in order under its mu, not under
// the hub's: with a broker that makes a round trip (Redis), loops
// subscribing to different channels do not wait for each other.
// filter skips the publications a new member already has: those of epoch
// at or before offset after (from its subscribe position or recovery).
type filter struct {
	after uint64
	epoch string
}

type nodeChan struct {
	mu         sync.Mutex // held across the broker's Subscribe and Unsubscribe of the channel
	n          int        // loops with subscribers (h.mu)
	subscribed bool       // the broker has the node subscribed (mu)
	// key is the fan-out key of the channel's publications in the epoch
	// the broker delivered last (see pubKey): made once per epoch, not
	// per publication. Only HandlePublication touches it, never
	// concurrently for one channel (the broker's contract); atomic so that
	// this does not rest on how the broker orders those calls in memory.
	key atomic.Pointer[string]
}

// eventBit marks a frame's sequence number as an event stamp rather than
// a publication's offset.
const eventBit = 1 << 63

// keySep separates a channel's name from the epoch in a publication's
// fan-out key (channel names are printable ASCII: it never occurs in one).
const keySep = 0

// New returns a hub over srv and starts its broker.
func New(o Options) (*Hub, error) {
	if o.Server == nil || o.Broker == nil {
		return nil, errors.New("hub: Server and Broker are required")
	}
	if o.MaxSubscriptions <= 0 {
		o.MaxSubscriptions = 128
	}
	if o.MaxChannels <= 0 {
		o.MaxChannels = 100_000
	}
	if o.Channel == nil {
		o.Channel = func(string) ChannelOptions { return ChannelOptions{} }
	}
	if o.NodeID == "" {
		o.NodeID = randomID()
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	h := &Hub{srv: o.Server, b: o.Broker, opts: o, log: o.Logger, started: time.Now(), subs: map[string]*nodeChan{}}
	h.frames.New = func() any { b := make([]byte, 0, 512); return &b }
	if err := o.Broker.Run(h); err != nil {
		return nil, fmt.Errorf("hub: start broker: %w", err)
	}
	return h, nil
}

// NodeID returns the node's id.
func (h *Hub) NodeID() string { return h.opts.NodeID }

// Stats returns the hub's counters.
func (h *Hub) Stats() *Stats { return &h.stats }

// index returns loop k's index, creating it; only on loop k.
func (h *Hub) index(k int) *loopIndex {
	if x := h.loops[k].Load(); x != nil {
		return x
	}
	x := &loopIndex{chans: map[string]*localChan{}, users: map[string][]engine.Conn{}}
	h.loops[k].Store(x)
	return x
}

// nodeSubscribe records that a loop has its first subscriber of ch and
// subscribes the node at the broker if it is not yet.
func (h *Hub) nodeSubscribe(ch string) error {
	h.mu.Lock()
	nc := h.subs[ch]
	if nc == nil {
		if len(h.subs) >= h.opts.MaxChannels {
			h.mu.Unlock()
			h.stats.ChannelsRefused.Add(1)
			return ErrTooManyChannels
		}
		nc = &nodeChan{}
		h.subs[ch] = nc
	}
	nc.n++
	h.mu.Unlock()
	nc.mu.Lock()
	var err error
	if !nc.subscribed {
		if err = h.b.Subscribe(ch); err == nil {
			nc.subscribed = true
		}
	}
	nc.mu.Unlock()
	if err != nil {
		h.nodeUnsubscribe(ch)
	}
	return err
}

// nodeUnsubscribe undoes nodeSubscribe: the last loop to leave
// unsubscribes the node at the broker. The channel's record stays in subs
// until that is done, so a loop subscribing meanwhile waits for it (on
// nc.mu) and subscribes again after it, in that order.
func (h *Hub) nodeUnsubscribe(ch string) {
	h.mu.Lock()
	nc := h.subs[ch]
	if nc == nil || nc.n == 0 {
		h.mu.Unlock()
		return
	}
	nc.n--
	last := nc.n == 0
	h.mu.Unlock()
	if !last {
		return
	}
	nc.mu.Lock()
	h.mu.Lock()
	unused := nc.n == 0
	h.mu.Unlock()
	if unused && nc.subscribed {
		nc.subscribed = false
		if err := h.b.Unsubscribe(ch); err != nil {
			h.log.Warn("broker unsubscribe failed", "channel", ch, "err", err)
		}
	}
	h.mu.Lock()
	if nc.n == 0 && h.subs[ch] == nc {
		delete(h.subs, ch)
	}
	h.mu.Unlock()
	nc.mu.Unlock()
}

// NodeChannels returns how many channels have subscribers on this node.
func (h *Hub) NodeChannels() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}

// Uptime returns how long the hub has run.
func (h *Hub) Uptime() time.Duration { return time.Since(h.started) }

// ClientID returns the cluster-wide id of a connection: the node id and
// the engine's connection id.
func (h *Hub) ClientID(c engine.Conn) string {
	return h.opts.NodeID + "-" + strconv.FormatUint(c.ID(), 16)
}
