package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// Defaults of RedisOptions.
const (
	DefaultRedisPrefix      = "wsd"
	DefaultRedisTimeout     = 2 * time.Second
	DefaultPresenceTTL      = 60 * time.Second
	DefaultNodeTTL          = 15 * time.Second
	DefaultRedisStreamIdle  = time.Minute
	DefaultRedisMaxPresence = 10_000
)

// ErrRedisUnavailable is wrapped by the errors of calls that need the
// node's pub/sub connection to Redis while it is down (Subscribe).
var ErrRedisUnavailable = errors.New("broker: redis pub/sub connection is down")

// RedisOptions configure a Redis broker. A zero field takes its default.
type RedisOptions struct {
	// Addrs are Redis addresses (host:port): one server, the seeds of a
	// Redis Cluster, or the sentinels when SentinelMaster is set.
	Addrs []string
	// SentinelMaster names the master set the sentinels at Addrs watch.
	SentinelMaster string
	Username       string
	Password       string
	// TLS, if set, is used for every connection to Redis (and sentinels).
	TLS *tls.Config
	// Prefix starts every key and pub/sub channel name (default "wsd"), so
	// that several clusters can share one Redis. It may not hold '{' or
	// '}' (they would change Redis Cluster's hash slot of the keys).
	Prefix string
	// NodeID names this node in the registry and in presence ownership.
	NodeID string
	// NodeAddress is what the registry says to reach the node at.
	NodeAddress string
	// Connections, if set, gives the node's open connections for the
	// registry.
	Connections func() int
	// Timeout bounds each command (default DefaultRedisTimeout): a
	// Publish that gets no answer in time returns an error.
	Timeout time.Duration
	// PresenceTTL is how long a presence entry lives unless its node
	// refreshes it (every third of it; default DefaultPresenceTTL): the
	// entries of a node that died are gone after at most this long.
	PresenceTTL time.Duration
	// NodeTTL is the same for the node registry (default DefaultNodeTTL).
	NodeTTL time.Duration
	// StreamIdle is the least time a channel's stream (offset and epoch)
	// outlives its last publication when its history has an age limit or
	// keeps nothing (default DefaultRedisStreamIdle); see Redis.
	StreamIdle time.Duration
	// MaxPresence bounds the entries Presence returns for one channel
	// (default DefaultRedisMaxPresence).
	MaxPresence int
	// NoSharded makes the broker use PUBLISH/SUBSCRIBE even where the
	// server has sharded pub/sub (tests exercise both paths with it).
	NoSharded bool
	Logger    *slog.Logger
}

// Redis is a Broker over Redis, for a cluster of wsd nodes: publications,
// history, presence and the node registry are in Redis, and publications
// reach every node subscribed to their channel through Redis pub/sub
// (sharded pub/sub, SPUBLISH/SSUBSCRIBE, on Redis 7+ outside Redis
// Cluster; PUBLISH/SUBSCRIBE otherwise).
//
// Keys (P is the prefix, c the channel; the braces put a channel's keys in
// one Redis Cluster slot): P:m:{c} a hash with the offset, epoch and
// history TTL; P:h:{c} the history, a stream capped by MAXLEN (the
// channel's HistorySize) and MINID (its HistoryTTL), entries {o: offset,
// d: data} whose ids carry the Redis time; P:c:{c} the pub/sub channel;
// P:p:{c} and P:x:{c} presence (client → info, client → expiry);
// P:n:{nodes} and P:y:{nodes} the node registry.
//
// Publish runs one Lua script: it creates the stream with a new epoch if
// there is none, increments the offset, appends to and trims the history,
// sets the keys' expiry and publishes {offset, time, epoch, data} on the
// channel, atomically. Key expiry: with a HistoryTTL, max(HistoryTTL,
// StreamIdle) after the last publication; with no history, StreamIdle;
// with a history and no age limit, none (the history is bounded by size,
// Redis's maxmemory by the operator). While a node subscribes to a channel
// it keeps the stream's meta key at least StreamIdle from expiring, as
// Memory keeps a subscribed stream. A stream that expires or is lost
// (Redis restarted without persistence, its keys evicted) starts a new
// epoch at its next publication; one that went back within its epoch is
// given a new one by the subscribed nodes (below).
//
// Delivery contract (what Broker promises, and how):
//
//   - Publish returns a nil error only when Redis answered the script: the
//     publication has its offset, is in history and was handed to Redis
//     pub/sub. Any other outcome (Redis unreachable, a timeout) is an
//     error; after a timeout the publication may still have been accepted
//     (the answer was lost), so an error never hides a drop but a retry may
//     duplicate.
//   - The node keeps, for each channel it is subscribed to, the position
//     of the last publication it handed to the Handler. A message is
//     delivered only if it is the next offset of that epoch; an older one
//     is a duplicate and skipped; a newer one means messages were lost
//     (the pub/sub connection broke, or Redis dropped it as a slow
//     subscriber) and the missing ones are read from history first and
//     delivered in order. A message of another epoch starts the channel
//     again from that epoch's offset 1 (from history too). When the pub/sub
//     connection comes back, the node subscribes to its channels again and
//     reads each channel's history since its last position, so the
//     publications accepted during the outage reach its subscribers in
//     order and once. Only what history no longer holds (trimmed by size
//     or age, or lost with Redis) is skipped: the Handler then sees a jump
//     in offsets or a new epoch, and clients recover through History or are
//     told they cannot (ErrUnrecoverable).
//   - Redis going back: a Redis that restarts from a snapshot older than
//     what it answered (RDB, an append-only file fsynced every second) or
//     fails over to a replica that lagged keeps a channel's epoch with an
//     older offset, and its next publications reuse offsets that were
//     already delivered. A subscribed node notices it (Redis's offset below
//     the one it delivered when it reads history, after a reconnection or
//     for a gap; history holding another publication at that offset; a
//     message at an offset it delivered with a later time) and gives the
//     stream a new epoch (newEpochScript, only if it is still at the old
//     one), dropping the old epoch's history: its subscribers get
//     HandleEpoch, and clients holding positions of the old epoch are told
//     they cannot recover (recovered:false) rather than silently missing
//     the publications that reused the offsets (those are lost to them).
//     A publishing node that is subscribed to the channel passes the
//     position it delivered to the publish script, which starts the new
//     epoch itself rather than reuse an offset; a node that only publishes
//     cannot tell, and publications that reused offsets before a
//     subscribed node looked and are no longer in history (no history, or
//     trimmed) leave no trace. Exactly-once across a Redis restart
//     therefore needs Redis to lose nothing it answered: appendonly yes
//     with appendfsync always, and no asynchronous failover.
//   - Presence events (join, leave) travel on the same pub/sub channel;
//     like presence writes they are queued and sent by one goroutine (the
//     hub calls them from event loops, which must not wait for Redis), so
//     they reach other nodes in the order this node made them but not in
//     order with its publications. They are not kept: those sent while the
//     connection was down are lost.
//   - Ready reports whether the pub/sub connection is up; Subscribe,
//     History and Presence (called on event loops) fail at once while it
//     is not (ErrRedisUnavailable), and the commands they send are sent
//     once, not retried by rueidis until the timeout; Publish fails as
//     long as Redis does not answer (it is never retried: a retry could
//     publish twice); queued presence writes and
//     events that Redis does not take are counted and dropped (the node's
//     own entries are written again by the next refresh). NodePosition
//     keeps answering from the node's state, so a channel the node carries
//     takes new subscribers during an outage.
//
// Needs Redis 6.2+ (XTRIM MINID); sharded pub/sub needs 7.0+.
//
// Handler calls for one channel are made one at a time (on the pub/sub
// connection's goroutine, or on the goroutine that re-synchronizes after a
// reconnection, under the channel's mutex); a Handler must not call the
// broker for the same channel.
type Redis struct {
	opts    RedisOptions
	log     *slog.Logger
	client  rueidis.Client
	timeout time.Duration
	prefix  string
	sharded bool
	epochs  epochs
	// fillBudget is fillBudget (tests make it smaller).
	fillBudget int

	handler atomic.Pointer[handlerRef]

	// base is the parent of every command's context; Close cancels it, so
	// that a Close while Redis hangs does not wait for commands' timeouts.
	base       context.Context
	cancelBase context.CancelFunc

	// mu guards subs and ps; a channel's subscription has a mutex of its
	// own for delivery.
	mu   sync.Mutex
	subs map[string]*redisSub
	ps   rueidis.DedicatedClient // the pub/sub connection while it is up

	ready   atomic.Bool
	lastErr atomic.Pointer[string]

	presence localPresence
	ops      opQueue
	// refreshQueued: an opRefresh waits in ops (presenceLoop queues one
	// at a time).
	refreshQueued atomic.Bool

	life    sync.Mutex
	running bool
	closed  atomic.Bool
	stop    chan struct{}
	wg      sync.WaitGroup

	stats RedisStats
}

var _ Broker = (*Redis)(nil)

// keepLoop keeps the streams of the node's channels from expiring (see
// keepScript), every third of StreamIdle.
func (r *Redis) keepLoop() {
	defer r.wg.Done()
	t := time.NewTicker(r.opts.StreamIdle / 3)
	defer t.Stop()
	idle := strconv.FormatInt(ceilMs(r.opts.StreamIdle), 10)
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
		r.mu.Lock()
		batch := make([]rueidis.LuaExec, 0, len(r.subs))
		for name := range r.subs {
			batch = append(batch, rueidis.LuaExec{Keys: []string{r.metaKey(name)}, Args: []string{idle}})
		}
		r.mu.Unlock()
		for len(batch) > 0 {
			n := min(len(batch), subscribeBatch)
			ctx, cancel := r.ctx()
			for _, res := range keepScript.ExecMulti(ctx, r.client, batch[:n]...) {
				if err := res.Error(); err != nil {
					r.log.Debug("broker: redis: stream expiry not extended", "err", err)
					break
				}
			}
			cancel()
			batch = batch[n:]
		}
	}
}

// RedisStats are the Redis broker's counters since NewRedis, for metrics.
type RedisStats struct {
	Published    atomic.Uint64 // publications accepted by Redis
	PublishErrs  atomic.Uint64 // Publish calls that returned an error
	Delivered    atomic.Uint64 // publications handed to the Handler
	Duplicates   atomic.Uint64 // pub/sub messages skipped as already delivered
	Refetched    atomic.Uint64 // publications read from history to fill a gap
	Skipped      atomic.Uint64 // publications lost to a gap history could not fill
	Reconnects   atomic.Uint64 // pub/sub connections made after the first
	NewEpochs    atomic.Uint64 // subscribed channels seen starting a new epoch
	Rollbacks    atomic.Uint64 // streams seen gone back in their epoch, given a new one
	Stale        atomic.Uint64 // pub/sub messages of an epoch no longer current
	BadMessages  atomic.Uint64 // pub/sub messages that did not parse
	OpErrors     atomic.Uint64 // queued presence writes and events Redis did not take
	DroppedLocal atomic.Uint64 // messages of channels the node no longer subscribes to
}

// NewRedis connects to Redis and returns the broker; call Run before using
// it. It fails if no address answers.
func NewRedis(opts RedisOptions) (*Redis, error) {
	if len(opts.Addrs) == 0 {
		return nil, errors.New("broker: redis: no address")
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultRedisPrefix
	}
	if strings.ContainsAny(opts.Prefix, "{}") {
		return nil, fmt.Errorf("broker: redis: prefix %q may not hold '{' or '}'", opts.Prefix)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultRedisTimeout
	}
	if opts.PresenceTTL <= 0 {
		opts.PresenceTTL = DefaultPresenceTTL
	}
	if opts.NodeTTL <= 0 {
		opts.NodeTTL = DefaultNodeTTL
	}
	if opts.StreamIdle <= 0 {
		opts.StreamIdle = DefaultRedisStreamIdle
	}
	if opts.MaxPresence <= 0 {
		opts.MaxPresence = DefaultRedisMaxPresence
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	co := rueidis.ClientOption{
		InitAddress:  opts.Addrs,
		Username:     opts.Username,
		Password:     opts.Password,
		TLSConfig:    opts.TLS,
		DisableCache: true,
		ClientName:   "wsd-" + opts.NodeID,
		// A dead Redis must be noticed within the command timeout, also on
		// the idle pub/sub connection.
		ConnWriteTimeout: opts.Timeout,
		// One pipelined connection for commands (Redis runs them one at a
		// time anyway): after Redis restarts, only it can fail a command
		// with the old connection's error, and the pub/sub loop's PING
		// replaces it before the node says it is ready again.
		PipelineMultiplex: -1,
	}
	co.Dialer.Timeout = opts.Timeout
	co.Dialer.KeepAlive = opts.Timeout / 2
	if opts.SentinelMaster != "" {
		co.Sentinel = rueidis.SentinelOption{
			MasterSet: opts.SentinelMaster,
			TLSConfig: opts.TLS,
			Username:  opts.Username,
			Password:  opts.Password,
		}
	}
	client, err := rueidis.NewClient(co)
	if err != nil {
		return nil, fmt.Errorf("broker: redis: connect to %s: %w", strings.Join(opts.Addrs, ","), err)
	}
	r := &Redis{
		opts:    opts,
		log:     opts.Logger,
		client:  client,
		timeout: opts.Timeout,
		prefix:  opts.Prefix,
		subs:    map[string]*redisSub{},

		fillBudget: fillBudget,
	}
	r.base, r.cancelBase = context.WithCancel(context.Background())
	r.epochs.init()
	r.presence.init()
	r.ops.init()
	if !opts.NoSharded && client.Mode() != rueidis.ClientModeCluster {
		// In Redis Cluster a dedicated connection talks to one shard, so
		// sharded subscriptions of channels in other slots cannot share it:
		// there the broker uses cluster-wide pub/sub.
		v, err := r.serverMajor()
		if err != nil {
			client.Close()
			return nil, err
		}
		r.sharded = v >= 7
	}
	return r, nil
}

// serverMajor returns the Redis server's major version.
func (r *Redis) serverMajor() (int, error) {
	ctx, cancel := r.ctx()
	defer cancel()
	info, err := r.client.Do(ctx, r.client.B().Info().Section("server").Build()).ToString()
	if err != nil {
		return 0, fmt.Errorf("broker: redis: INFO server: %w", err)
	}
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			major, _, _ := strings.Cut(v, ".")
			n, err := strconv.Atoi(major)
			if err != nil {
				return 0, fmt.Errorf("broker: redis: version %q: %w", v, err)
			}
			return n, nil
		}
	}
	return 0, errors.New("broker: redis: INFO server has no redis_version")
}

// Sharded says whether the broker uses sharded pub/sub.
func (r *Redis) Sharded() bool { return r.sharded }

// Stats returns the broker's counters.
func (r *Redis) Stats() *RedisStats { return &r.stats }

// OpsRefused returns how many presence writes and events were refused
// because maxQueuedOps were waiting.
func (r *Redis) OpsRefused() uint64 { return r.ops.refused.Load() }

func (r *Redis) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.base, r.timeout)
}

func (r *Redis) metaKey(ch string) string   { return r.prefix + ":m:{" + ch + "}" }
func (r *Redis) streamKey(ch string) string { return r.prefix + ":h:{" + ch + "}" }
func (r *Redis) chanKey(ch string) string   { return r.prefix + ":c:{" + ch + "}" }

// channelOf is chanKey's inverse ("" if name is not one of ours).
func (r *Redis) channelOf(name string) string {
	rest, ok := strings.CutPrefix(name, r.prefix+":c:{")
	if !ok || !strings.HasSuffix(rest, "}") {
		return ""
	}
	return rest[:len(rest)-1]
}

// Run records h, starts the pub/sub connection (and its reconnections),
// the node's announcements and the presence refresh.
func (r *Redis) Run(h Handler) error {
	if h == nil {
		return errors.New("broker: Run with a nil Handler")
	}
	r.life.Lock()
	defer r.life.Unlock()
	if r.closed.Load() {
		return ErrClosed
	}
	if r.running {
		return errors.New("broker: Run called twice")
	}
	r.running = true
	r.handler.Store(&handlerRef{h})
	r.stop = make(chan struct{})
	r.wg.Add(5)
	go r.opsLoop()
	go r.pubsubLoop()
	go r.announceLoop()
	go r.presenceLoop()
	go r.keepLoop()
	return nil
}

// Ready returns nil while the pub/sub connection is up, else why not.
func (r *Redis) Ready() error {
	if r.ready.Load() {
		return nil
	}
	if p := r.lastErr.Load(); p != nil {
		return fmt.Errorf("%w: %s", ErrRedisUnavailable, *p)
	}
	return ErrRedisUnavailable
}

// Close stops delivery, takes the node out of the registry and its
// connections out of presence (as far as Redis answers), and closes the
// connections. Every later call returns ErrClosed.
func (r *Redis) Close() error {
	r.life.Lock()
	if r.closed.Swap(true) {
		r.life.Unlock()
		return ErrClosed
	}
	if r.running {
		close(r.stop)
	}
	r.life.Unlock()
	// The pub/sub loop closes its connection when it sees stop. Closing it
	// here, under r.mu, would wait for a message handler that waits for
	// r.mu: rueidis runs the handlers on the connection's reader.
	r.cancelBase()
	r.wg.Wait()
	// One timeout for the clean-up together: a Redis that does not answer
	// delays a stop by that much, not by a timeout per channel.
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	r.unannounce(ctx)
	r.presence.removeAll(ctx, r)
	r.client.Close()
	return nil
}

// knownPosition is, if the node is subscribed to the channel, the
// position it last delivered, for the publish script to tell a stream that
// went back below it ("" otherwise). Publish runs on event loops: it does
// not wait for a delivery under way (a fill may be reading Redis), it
// passes nothing then.
func (r *Redis) knownPosition(channel string) (string, uint64) {
	r.mu.Lock()
	s := r.subs[channel]
	r.mu.Unlock()
	if s == nil || !s.mu.TryLock() {
		return "", 0
	}
	defer s.mu.Unlock()
	if !s.ready {
		return "", 0
	}
	return s.epoch, s.off
}

// Publish runs the publish script (see Redis).
func (r *Redis) Publish(channel string, data []byte, opts ChannelOptions) (Position, error) {
	if opts.HistorySize < 0 || opts.HistoryTTL < 0 {
		return Position{}, fmt.Errorf("broker: invalid channel options (HistorySize %d, HistoryTTL %v)", opts.HistorySize, opts.HistoryTTL)
	}
	if r.closed.Load() {
		return Position{}, ErrClosed
	}
	ttl := ceilMs(opts.HistoryTTL)
	var keyTTL int64
	switch {
	case opts.HistorySize == 0:
		keyTTL = ceilMs(r.opts.StreamIdle)
	case ttl > 0:
		keyTTL = max(ttl, ceilMs(r.opts.StreamIdle))
	}
	cmd := "PUBLISH"
	if r.sharded {
		cmd = "SPUBLISH"
	}
	knownEpoch, knownOff := r.knownPosition(channel)
	ctx, cancel := r.ctx()
	defer cancel()
	vals, err := publishScript.Exec(ctx, r.client,
		[]string{r.metaKey(channel), r.streamKey(channel), r.chanKey(channel)},
		[]string{string(data), strconv.Itoa(opts.HistorySize), strconv.FormatInt(ttl, 10),
			r.epochs.next(), strconv.FormatInt(keyTTL, 10), cmd, knownEpoch, strconv.FormatUint(knownOff, 10)},
	).ToArray()
	if err != nil {
		r.stats.PublishErrs.Add(1)
		return Position{}, fmt.Errorf("broker: redis publish to %q: %w", channel, err)
	}
	if len(vals) != 3 {
		r.stats.PublishErrs.Add(1)
		return Position{}, fmt.Errorf("broker: redis publish to %q: %d values in the answer", channel, len(vals))
	}
	off, err1 := vals[0].AsInt64()
	epoch, err2 := vals[1].ToString()
	if err := errors.Join(err1, err2); err != nil || off <= 0 {
		r.stats.PublishErrs.Add(1)
		return Position{}, fmt.Errorf("broker: redis publish to %q: bad answer: %v", channel, err)
	}
	r.stats.Published.Add(1)
	return Position{Offset: uint64(off), Epoch: epoch}, nil
}
