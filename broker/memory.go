package broker

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrClosed is returned (possibly wrapped) by every method of a broker
// that has been closed.
var ErrClosed = errors.New("broker: closed")

// ErrTooManyChannels is wrapped by the error Publish and AddPresence return
// when the channel is new and the broker already keeps state for as many
// channels as it may (MemoryOptions.MaxChannels). The publication or
// presence entry is refused; existing channels are not affected.
var ErrTooManyChannels = errors.New("broker: too many channels")

// Defaults of MemoryOptions.
const (
	DefaultMaxChannels     = 100_000
	DefaultMaxHistoryBytes = 256 << 20
	DefaultStreamIdle      = time.Minute
)

// MemoryOptions configure a Memory broker. A zero (or negative) field
// takes its default.
type MemoryOptions struct {
	// MaxChannels is how many channels may hold a stream or a presence set
	// at once (default DefaultMaxChannels). A Publish or AddPresence that
	// would add one more returns an error wrapping ErrTooManyChannels. Reads
	// (History) never create a stream (see Memory.History), so made-up
	// names read or subscribed to take no room. The node's subscriptions
	// alone do not count.
	MaxChannels int
	// MaxHistoryBytes bounds the total length of the publication data kept
	// in all histories together (default DefaultMaxHistoryBytes, 256 MiB;
	// only len(Data) is counted). A publication that would pass it first
	// evicts the oldest publications of its own channel; if that is not
	// enough it is still accepted (it gets its offset and is delivered) but
	// not kept, and its channel's history is left empty, so recovering from
	// a position before it fails with ErrUnrecoverable rather than skipping
	// it. Other channels' histories are never evicted by it.
	MaxHistoryBytes int64
	// StreamIdle is the least time a stream (offset and epoch) nothing else
	// keeps is kept after its last publication (default
	// DefaultStreamIdle). See Memory for the expiry rule.
	StreamIdle time.Duration
	// Now is the clock (default time.Now); tests replace it.
	Now func() time.Time
	// Logger receives the broker's rare warnings and debug notes (default:
	// discarded).
	Logger *slog.Logger
}

// MemoryStats are a Memory broker's counters, for metrics. The first four
// are current values, the rest counts since NewMemory.
type MemoryStats struct {
	// Channels is how many channels hold a stream or a presence set (what
	// MaxChannels bounds).
	Channels int64
	// Streams is how many channel streams (offset and epoch) are kept.
	Streams int64
	// HistoryBytes is the total length of the publication data kept in
	// histories (what MaxHistoryBytes bounds).
	HistoryBytes int64
	// HistoryPublications is how many publications histories hold.
	HistoryPublications int64

	// Published counts accepted publications.
	Published uint64
	// EvictedBySize, EvictedByAge and EvictedByBytes count publications
	// taken out of a history because of its channel's HistorySize, its
	// HistoryTTL, and MaxHistoryBytes.
	EvictedBySize  uint64
	EvictedByAge   uint64
	EvictedByBytes uint64
	// NotRetained counts publications accepted and delivered but not kept
	// because MaxHistoryBytes left no room for them (their channels'
	// histories were emptied, see MaxHistoryBytes).
	NotRetained uint64
	// StreamsExpired counts idle streams dropped by the janitor.
	StreamsExpired uint64
	// ChannelsRefused counts errors wrapping ErrTooManyChannels.
	ChannelsRefused uint64
}

const (
	numShards     = 64
	sweepInterval = time.Second
	// warnEvery spaces out the warning that MaxHistoryBytes is reached.
	warnEvery = 10 * time.Second
)

// Memory is the in-process broker: the default, for a single node. It is a
// Broker.
//
// Channels are spread over 64 shards by an FNV-1a hash of their names; a
// shard's mutex guards only its map (held for a lookup or an insertion),
// and each channel has its own mutex, held while a publication gets its
// offset, enters the history and is handed to the Handler. So concurrent
// publishers of one channel deliver in offset order, publishers of
// different channels do not wait for each other, and a Handler may call the
// broker for other channels (never for its own: it would deadlock). Close
// must not be called from a Handler.
//
// Streams: a channel's stream (its epoch and last offset) is created by its
// first Publish, or by a History of the channel (Memory.History), with a new
// epoch and offset 0. The epoch is 8 characters of base32 (0-9a-v): a
// 40-bit bijection of a per-broker counter keyed with random bits from
// crypto/rand, so it never repeats within one Memory (for 2^40 streams) and
// two brokers (a restart) give the same epoch to a channel with odds of
// 2^-40.
//
// Expiry: a janitor goroutine (started by Run, stopped by Close) trims
// every history by age once a second, and drops a stream when all of these
// hold: the node is not subscribed to the channel, its presence is empty,
// its history is empty (after trimming by age), and its last publication
// (or its creation) is at least max(HistoryTTL, StreamIdle) old. A dropped
// stream loses its offset and epoch: the next publication starts a new
// epoch at offset 1, and positions of the old one are unrecoverable. A
// stream that has publications in history is never dropped, so with
// HistoryTTL 0 (no age limit) and HistorySize > 0 a channel's stream lives
// until MaxHistoryBytes evicts its history. Publish and History also trim
// by age, so they never return an expired publication.
//
// The Handler is called with the channel's mutex held, synchronously from
// Publish, PublishJoin and PublishLeave, and only if the channel is
// subscribed (Subscribe) at that moment. The *Publication it gets (and its
// Data) are valid only during the call.
type Memory struct {
	shards [numShards]shard

	maxChannels int64
	maxBytes    int64
	idleMs      int64
	now         func() time.Time
	log         *slog.Logger
	sweepEvery  time.Duration // tests shorten it before Run

	epochs epochs

	handler atomic.Pointer[handlerRef]
	closed  atomic.Bool
	life    sync.Mutex // Run and Close
	running bool
	stop    chan struct{}
	done    chan struct{}

	// The history bytes are one counter: MaxHistoryBytes is reserved
	// against it with a compare-and-swap. The publication counters are the
	// shards'. It has a cache line of its own, apart from the fields every
	// publisher reads.
	_              [64]byte
	bytes          atomic.Int64
	_              [56]byte
	channels       atomic.Int64
	streams        atomic.Int64
	lastWarn       atomic.Int64 // unix ms of the last MaxHistoryBytes warning
	streamsExpired atomic.Uint64
	refused        atomic.Uint64
}

var _ Broker = (*Memory)(nil)

type handlerRef struct{ h Handler }

// shard is one part of the channel map, with the counters of its channels
// (summed by Stats), 64 bytes: publishers of channels of different shards
// share no lock and no counter but the history bytes.
type shard struct {
	mu sync.Mutex
	m  map[string]*entry

	pubs         atomic.Int64 // publications in histories
	published    atomic.Uint64
	evictedSize  atomic.Uint64
	evictedAge   atomic.Uint64
	evictedBytes atomic.Uint64
	notRetained  atomic.Uint64
}

// entry is the broker's state of one channel. It is in its shard's map
// while it holds anything (a subscription, a stream or a presence set);
// once taken out it is marked dead, and whoever finds it dead after
// locking it looks it up again.
type entry struct {
	mu   sync.Mutex
	sh   *shard
	name string
	dead bool

	subscribed bool
	stream     bool
	epoch      string
	offset     uint64
	last       int64         // unix ms: last publication, or the stream's creation
	size       int           // HistorySize of the last Publish
	ttl        time.Duration // HistoryTTL of the last Publish

	// The history: a ring of n publications starting at buf[head], with
	// offsets offset-n+1 … offset (always contiguous and ending at the
	// current offset: a publication that is not kept empties it).
	buf     []Publication
	head, n int

	presence map[string]ClientInfo

	// scratch carries a publication that is not kept to the Handler
	// without allocating.
	scratch Publication
}

func (e *entry) counted() bool { return e.stream || len(e.presence) > 0 }

func (e *entry) empty() bool { return !e.subscribed && !e.counted() }

// NewMemory returns a Memory broker. Call Run before using it.
func NewMemory(opts MemoryOptions) *Memory {
	m := &Memory{
		maxChannels: int64(opts.MaxChannels),
		maxBytes:    opts.MaxHistoryBytes,
		now:         opts.Now,
		log:         opts.Logger,
		sweepEvery:  sweepInterval,
	}
	if m.maxChannels <= 0 {
		m.maxChannels = DefaultMaxChannels
	}
	if m.maxBytes <= 0 {
		m.maxBytes = DefaultMaxHistoryBytes
	}
	idle := opts.StreamIdle
	if idle <= 0 {
		idle = DefaultStreamIdle
	}
	m.idleMs = ceilMs(idle)
	if m.now == nil {
		m.now = time.Now
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	m.epochs.init()
	for i := range m.shards {
		m.shards[i].m = make(map[string]*entry)
	}
	return m
}

// Run records h as the receiver of deliveries and starts the janitor. It
// is called once; a second call, or a nil h, is an error.
func (m *Memory) Run(h Handler) error {
	if h == nil {
		return errors.New("broker: Run with a nil Handler")
	}
	m.life.Lock()
	defer m.life.Unlock()
	if m.closed.Load() {
		return ErrClosed
	}
	if m.running {
		return errors.New("broker: Run called twice")
	}
	m.running = true
	m.handler.Store(&handlerRef{h})
	m.stop = make(chan struct{})
	m.done = make(chan struct{})
	go m.janitor(m.sweepEvery)
	return nil
}

// Close stops the janitor and delivery and drops every channel's state.
// When it returns no Handler call is in progress and none will start;
// every later call (Close included) returns ErrClosed.
func (m *Memory) Close() error {
	m.life.Lock()
	if m.closed.Load() {
		m.life.Unlock()
		return ErrClosed
	}
	m.closed.Store(true)
	done := m.done
	if m.running {
		close(m.stop)
	}
	m.life.Unlock()
	if done != nil {
		<-done
	}
	// No entry is added once closed is set (insertions check it under the
	// shard lock). Wait for each entry's holder (a Handler call) and mark
	// it dead, so that anyone still holding a pointer to it looks it up
	// again and finds the broker closed.
	var all []*entry
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.Lock()
		for _, e := range sh.m {
			all = append(all, e)
		}
		sh.m = nil
		sh.mu.Unlock()
	}
	for _, e := range all {
		e.mu.Lock()
		e.dead = true
		e.buf, e.presence = nil, nil
		e.mu.Unlock()
	}
	m.channels.Store(0)
	m.streams.Store(0)
	m.bytes.Store(0)
	for i := range m.shards {
		m.shards[i].pubs.Store(0)
	}
	return nil
}

// Stats returns the broker's counters.
func (m *Memory) Stats() MemoryStats {
	st := MemoryStats{
		Channels:        m.channels.Load(),
		Streams:         m.streams.Load(),
		HistoryBytes:    m.bytes.Load(),
		StreamsExpired:  m.streamsExpired.Load(),
		ChannelsRefused: m.refused.Load(),
	}
	for i := range m.shards {
		sh := &m.shards[i]
		st.HistoryPublications += sh.pubs.Load()
		st.Published += sh.published.Load()
		st.EvictedBySize += sh.evictedSize.Load()
		st.EvictedByAge += sh.evictedAge.Load()
		st.EvictedByBytes += sh.evictedBytes.Load()
		st.NotRetained += sh.notRetained.Load()
	}
	return st
}

// Publish gives data the channel's next offset, keeps a copy in its
// history (as opts allow, see MemoryOptions.MaxHistoryBytes) and hands it to
// the Handler if the node is subscribed to the channel, before returning.
// opts (HistorySize and HistoryTTL, neither negative) become the channel's
// options, also for History and expiry, until the next Publish.
func (m *Memory) Publish(channel string, data []byte, opts ChannelOptions) (Position, error) {
	if opts.HistorySize < 0 || opts.HistoryTTL < 0 {
		return Position{}, fmt.Errorf("broker: invalid channel options (HistorySize %d, HistoryTTL %v)", opts.HistorySize, opts.HistoryTTL)
	}
	if m.closed.Load() {
		return Position{}, ErrClosed
	}
	// The copy is made before taking the channel's lock; it is wasted only
	// when MaxHistoryBytes refuses it.
	var kept []byte
	if opts.HistorySize > 0 && int64(len(data)) <= m.maxBytes {
		kept = bytes.Clone(data)
	}
	pos, warn, err := m.publish(channel, data, kept, opts)
	if warn {
		m.log.Warn("broker: publication not kept in history: MaxHistoryBytes reached",
			"channel", channel, "bytes", len(data), "max_history_bytes", m.maxBytes)
	}
	return pos, err
}

func (m *Memory) publish(channel string, data, kept []byte, opts ChannelOptions) (pos Position, warn bool, err error) {
	e, err := m.lock(channel, true)
	if err != nil {
		return Position{}, false, err
	}
	defer e.mu.Unlock()
	ms := m.now().UnixMilli()
	if !e.stream {
		if !m.newStream(e, ms) {
			m.dropIfEmpty(e)
			return Position{}, false, m.tooMany(channel)
		}
	}
	// Times never go back within a stream, so the history stays ordered by
	// age even if the clock does.
	ms = max(ms, e.last)
	e.size, e.ttl = opts.HistorySize, opts.HistoryTTL
	// What is evicted is counted once at the end, and its bytes are given
	// back in the same operation that reserves the new publication's.
	byAge, freed := m.trimAge(e, ms)
	bySize := 0
	for e.n > max(e.size-1, 0) {
		freed += e.evictOldest()
		bySize++
	}
	e.offset++
	e.last = ms
	pub := Publication{Offset: e.offset, Data: data, Time: ms}
	var p *Publication
	byBytes, added := 0, 0
	sh := e.sh
	if e.size > 0 {
		var ok bool
		ok, byBytes = m.reserveBytes(e, int64(len(data)), freed)
		if ok {
			pub.Data = kept
			p = e.push(pub)
			added = 1
		} else {
			sh.notRetained.Add(1)
			if last := m.lastWarn.Load(); ms-last >= warnEvery.Milliseconds() {
				warn = m.lastWarn.CompareAndSwap(last, ms)
			}
		}
	} else if freed > 0 {
		m.bytes.Add(-freed)
	}
	if d := added - byAge - bySize - byBytes; d != 0 {
		sh.pubs.Add(int64(d))
	}
	if byAge > 0 {
		sh.evictedAge.Add(uint64(byAge))
	}
	if bySize > 0 {
		sh.evictedSize.Add(uint64(bySize))
	}
	if byBytes > 0 {
		sh.evictedBytes.Add(uint64(byBytes))
	}
	sh.published.Add(1)
	if p == nil {
		e.scratch = pub
		p = &e.scratch
	}
	pos = Position{Offset: e.offset, Epoch: e.epoch}
	if e.subscribed {
		if h := m.handler.Load(); h != nil {
			h.h.HandlePublication(e.name, p, pos)
		}
	}
	e.scratch = Publication{}
	return pos, warn, nil
}

// PublishJoin hands info to the Handler's HandleJoin if the node is
// subscribed to the channel (in order with the channel's publications).
func (m *Memory) PublishJoin(channel string, info ClientInfo) error {
	return m.presenceEvent(channel, info, true)
}

// PublishLeave hands info to the Handler's HandleLeave if the node is
// subscribed to the channel (in order with the channel's publications).
func (m *Memory) PublishLeave(channel string, info ClientInfo) error {
	return m.presenceEvent(channel, info, false)
}

func (m *Memory) presenceEvent(channel string, info ClientInfo, join bool) error {
	e, err := m.lock(channel, false)
	if err != nil || e == nil {
		return err
	}
	defer e.mu.Unlock()
	if !e.subscribed {
		return nil
	}
	if h := m.handler.Load(); h != nil {
		if join {
			h.h.HandleJoin(e.name, info)
		} else {
			h.h.HandleLeave(e.name, info)
		}
	}
	return nil
}

// Subscribe makes Publish, PublishJoin and PublishLeave of the channel call
// the Handler. It is a flag, not a count: one Unsubscribe undoes any number
// of Subscribes. A subscription alone does not count against MaxChannels,
// and it keeps the channel's stream from expiring.
func (m *Memory) Subscribe(channel string) error {
	e, err := m.lock(channel, true)
	if err != nil {
		return err
	}
	e.subscribed = true
	e.mu.Unlock()
	return nil
}

// Unsubscribe stops delivery of the channel to the Handler. Its stream and
// history stay (until they expire).
func (m *Memory) Unsubscribe(channel string) error {
	e, err := m.lock(channel, false)
	if err != nil || e == nil {
		return err
	}
	e.subscribed = false
	m.dropIfEmpty(e)
	e.mu.Unlock()
	return nil
}

// History is Broker.History. Precisely:
//
//   - since == nil: the newest retained publications, at most limit of
//     them if limit > 0, oldest first, and a nil error.
//   - since != nil: an error ErrUnrecoverable (with no publications) if
//     since.Epoch is not the current epoch (since {0, ""} is the start of
//     any epoch), if since.Offset is past the
//     current offset, if the publication after since.Offset is no longer
//     retained, or if limit > 0 and more than limit publications follow
//     since (all or nothing: a recovery never gets a partial list).
//     Otherwise exactly the publications with offsets since.Offset+1 …
//     current, which is none (and a nil error) when since is the current
//     position.
//
// The position returned is always the current one. Reading a channel that
// has no stream creates none (a client's made-up names must take no room
// under MaxChannels): the position is {0, ""}, since is recoverable only if
// it is {0, ""} itself, and from {0, ""} a later stream's publications are
// recoverable from its first one, while it is retained.
//
// The publications' Data are the broker's copies, shared: the caller must
// not modify them.
func (m *Memory) History(channel string, since *Position, limit int) ([]Publication, Position, error) {
	e, err := m.lock(channel, true)
	if err != nil {
		return nil, Position{}, err
	}
	defer e.mu.Unlock()
	ms := m.now().UnixMilli()
	if !e.stream {
		// No stream: nothing was published (or its stream expired). A read
		// creates none, so reading (or subscribing to) made-up names takes
		// no room under MaxChannels; the position is {0, ""}, from which
		// the stream's first publication onwards is recoverable.
		m.dropIfEmpty(e)
		if since != nil && since.Offset != 0 {
			return nil, Position{}, ErrUnrecoverable
		}
		return nil, Position{}, nil
	}
	m.expire(e, max(ms, e.last))
	pos := Position{Offset: e.offset, Epoch: e.epoch}
	if since == nil {
		k := e.n
		if limit > 0 && k > limit {
			k = limit
		}
		return e.copyOut(k), pos, nil
	}
	// {0, ""} is the position of a channel read before its stream
	// existed: everything from the stream's first publication follows it.
	fromStart := *since == Position{}
	if (since.Epoch != e.epoch && !fromStart) || since.Offset > e.offset {
		return nil, pos, ErrUnrecoverable
	}
	missing := e.offset - since.Offset
	if missing == 0 {
		return nil, pos, nil
	}
	if missing > uint64(e.n) || (limit > 0 && missing > uint64(limit)) {
		return nil, pos, ErrUnrecoverable
	}
	return e.copyOut(int(missing)), pos, nil
}

// AddPresence records info in the channel's presence (with its own copy of
// info.Info), replacing an entry of the same client.
func (m *Memory) AddPresence(channel string, info ClientInfo) error {
	e, err := m.lock(channel, true)
	if err != nil {
		return err
	}
	defer e.mu.Unlock()
	if !e.counted() && !m.reserveChannel() {
		m.dropIfEmpty(e)
		return m.tooMany(channel)
	}
	if e.presence == nil {
		e.presence = make(map[string]ClientInfo)
	}
	if old, ok := e.presence[info.Client]; ok {
		info.Client = old.Client
	} else {
		info.Client = strings.Clone(info.Client)
	}
	info.User = strings.Clone(info.User)
	info.Info = bytes.Clone(info.Info)
	e.presence[info.Client] = info
	return nil
}

// RemovePresence takes client out of the channel's presence; an unknown
// client is not an error.
func (m *Memory) RemovePresence(channel string, client string) error {
	e, err := m.lock(channel, false)
	if err != nil || e == nil {
		return err
	}
	defer e.mu.Unlock()
	if _, ok := e.presence[client]; !ok {
		return nil
	}
	delete(e.presence, client)
	if len(e.presence) == 0 {
		e.presence = nil
		if !e.stream {
			m.channels.Add(-1)
		}
		m.dropIfEmpty(e)
	}
	return nil
}

// Presence returns a new slice of the channel's presence, sorted by client
// id. The Info slices are the broker's copies: the caller must not modify
// them.
func (m *Memory) Presence(channel string) ([]ClientInfo, error) {
	e, err := m.lock(channel, false)
	if err != nil || e == nil {
		return nil, err
	}
	defer e.mu.Unlock()
	if len(e.presence) == 0 {
		return nil, nil
	}
	out := make([]ClientInfo, 0, len(e.presence))
	for _, info := range e.presence {
		out = append(out, info)
	}
	slices.SortFunc(out, func(a, b ClientInfo) int { return strings.Compare(a.Client, b.Client) })
	return out, nil
}

// lock returns the channel's entry, locked, creating it (empty) if create
// is set, or nil if it does not exist and create is not set. It never waits
// for an entry's mutex while holding a shard's.
func (m *Memory) lock(channel string, create bool) (*entry, error) {
	sh := &m.shards[shardOf(channel)]
	for {
		sh.mu.Lock()
		if m.closed.Load() {
			sh.mu.Unlock()
			return nil, ErrClosed
		}
		e := sh.m[channel]
		if e == nil {
			if !create {
				sh.mu.Unlock()
				return nil, nil
			}
			e = &entry{sh: sh, name: strings.Clone(channel)}
			sh.m[e.name] = e
		}
		sh.mu.Unlock()
		e.mu.Lock()
		if !e.dead {
			return e, nil
		}
		e.mu.Unlock() // taken out meanwhile (expired, or Close): look again
	}
}

// dropIfEmpty takes e (locked) out of its shard's map if it holds nothing.
func (m *Memory) dropIfEmpty(e *entry) {
	if !e.empty() {
		return
	}
	e.dead = true
	e.sh.mu.Lock()
	if e.sh.m[e.name] == e {
		delete(e.sh.m, e.name)
	}
	e.sh.mu.Unlock()
}

// newStream gives e (locked, without a stream) a stream with a new epoch,
// unless that would pass MaxChannels.
func (m *Memory) newStream(e *entry, ms int64) bool {
	if !e.counted() && !m.reserveChannel() {
		return false
	}
	e.stream = true
	e.epoch = m.newEpoch()
	e.offset = 0
	e.last = ms
	m.streams.Add(1)
	return true
}

func (m *Memory) reserveChannel() bool {
	for {
		n := m.channels.Load()
		if n >= m.maxChannels {
			return false
		}
		if m.channels.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (m *Memory) tooMany(channel string) error {
	m.refused.Add(1)
	return fmt.Errorf("%w: %d kept, channel %q refused", ErrTooManyChannels, m.maxChannels, channel)
}

// reserveBytes replaces freed bytes (evicted from e by the caller) with
// n in the history bytes if that stays within MaxHistoryBytes, evicting
// e's oldest publications as needed, and says how many it evicted. It
// fails, with e's history empty, if even that is not enough.
func (m *Memory) reserveBytes(e *entry, n, freed int64) (ok bool, evicted int) {
	for {
		cur := m.bytes.Load()
		if next := cur - freed + n; next <= m.maxBytes {
			if m.bytes.CompareAndSwap(cur, next) {
				return true, evicted
			}
			continue
		}
		if e.n == 0 {
			if freed > 0 {
				m.bytes.Add(-freed)
			}
			return false, evicted
		}
		freed += e.evictOldest()
		evicted++
	}
}

// push appends p (whose bytes are reserved) to e's history, which has room
// for it within e.size, and returns where it is kept.
func (e *entry) push(p Publication) *Publication {
	if e.n == len(e.buf) {
		size := max(min(2*len(e.buf), e.size), min(4, e.size), e.n+1)
		buf := make([]Publication, size)
		k := copy(buf, e.buf[e.head:])
		copy(buf[k:], e.buf[:e.head])
		e.buf, e.head = buf, 0
	}
	i := e.head + e.n
	if i >= len(e.buf) {
		i -= len(e.buf)
	}
	e.buf[i] = p
	e.n++
	return &e.buf[i]
}

// evictOldest takes e's oldest publication out of its history and returns
// its length; the counters are the caller's to update.
func (e *entry) evictOldest() int64 {
	p := &e.buf[e.head]
	n := int64(len(p.Data))
	*p = Publication{}
	e.head++
	if e.head == len(e.buf) {
		e.head = 0
	}
	e.n--
	return n
}

// trimAge evicts e's publications that are HistoryTTL old at ms and
// returns how many and their bytes; the counters are the caller's to
// update.
func (m *Memory) trimAge(e *entry, ms int64) (k int, freed int64) {
	if e.ttl <= 0 || e.n == 0 {
		return 0, 0
	}
	cutoff := ms - ceilMs(e.ttl)
	for e.n > 0 && e.buf[e.head].Time <= cutoff {
		freed += e.evictOldest()
		k++
	}
	return k, freed
}

// expire is trimAge with the counters updated.
func (m *Memory) expire(e *entry, ms int64) {
	if k, freed := m.trimAge(e, ms); k > 0 {
		m.bytes.Add(-freed)
		e.sh.pubs.Add(-int64(k))
		e.sh.evictedAge.Add(uint64(k))
	}
}

// copyOut returns a new slice of e's newest k publications, oldest first.
func (e *entry) copyOut(k int) []Publication {
	if k == 0 {
		return nil
	}
	out := make([]Publication, k)
	i := e.head + e.n - k
	if i >= len(e.buf) {
		i -= len(e.buf)
	}
	n := copy(out, e.buf[i:min(i+k, len(e.buf))])
	copy(out[n:], e.buf[:k-n])
	return out
}

func (m *Memory) janitor(every time.Duration) {
	defer close(m.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			m.sweep()
		}
	}
}

// sweep trims every history by age and drops the streams the expiry rule
// allows (see Memory). Entries busy at that moment are left for the next
// sweep.
func (m *Memory) sweep() {
	ms := m.now().UnixMilli()
	expired := 0
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.Lock()
		if m.closed.Load() {
			sh.mu.Unlock()
			return
		}
		for name, e := range sh.m {
			if !e.mu.TryLock() {
				continue
			}
			if !e.stream {
				e.mu.Unlock()
				continue
			}
			m.expire(e, max(ms, e.last))
			if e.n == 0 && len(e.buf) > 64 {
				e.buf, e.head = nil, 0
			}
			if !e.subscribed && len(e.presence) == 0 && e.n == 0 &&
				ms-e.last >= max(m.idleMs, ceilMs(e.ttl)) {
				e.stream, e.epoch, e.offset, e.buf, e.head = false, "", 0, nil, 0
				m.streams.Add(-1)
				m.channels.Add(-1)
				m.streamsExpired.Add(1)
				e.dead = true
				delete(sh.m, name)
				expired++
			}
			e.mu.Unlock()
		}
		sh.mu.Unlock()
	}
	if expired > 0 {
		m.log.Debug("broker: idle streams expired", "streams", expired)
	}
}

// newEpoch returns a new epoch (see epochs): epochs of one Memory never
// repeat.
func (m *Memory) newEpoch() string { return m.epochs.next() }

func shardOf(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h % numShards
}

// ceilMs is d in whole milliseconds, rounded up.
func ceilMs(d time.Duration) int64 {
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}
