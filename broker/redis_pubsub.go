package broker

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// redisSub is the node's subscription to one channel: the position of the
// last publication handed to the Handler. mu is held while a message of
// the channel is handled, so Handler calls for it are one at a time.
type redisSub struct {
	mu    sync.Mutex
	name  string
	ready bool // position read: messages before it are covered by it
	epoch string
	off   uint64
	// t is the time (Redis's, ms) of the publication at off, 0 if not
	// known (off read at Subscribe, or the start of an epoch). Another
	// publication at off or before it, but later, proves that Redis went
	// back within the epoch (see newEpochScript).
	t int64
}

// fillBudget bounds the publication bytes one history read brings in to
// fill a gap (a read returns at least one publication, so a gap costs at
// most this plus one message at a time); a longer gap is read page by
// page.
const fillBudget = 4 << 20

// subscribeBatch bounds the channels named in one (S)SUBSCRIBE when the
// node subscribes again after a reconnection.
const subscribeBatch = 500

func (r *Redis) subscribeCmd(ps rueidis.DedicatedClient, chans ...string) rueidis.Completed {
	if r.sharded {
		return ps.B().Ssubscribe().Channel(chans...).Build()
	}
	return ps.B().Subscribe().Channel(chans...).Build()
}

func (r *Redis) unsubscribeCmd(ps rueidis.DedicatedClient, chans ...string) rueidis.Completed {
	if r.sharded {
		return ps.B().Sunsubscribe().Channel(chans...).Build()
	}
	return ps.B().Unsubscribe().Channel(chans...).Build()
}

// Subscribe subscribes the node to the channel on Redis and reads the
// channel's position, from which delivery starts. It fails while the
// pub/sub connection is down.
func (r *Redis) Subscribe(channel string) error {
	if r.closed.Load() {
		return ErrClosed
	}
	s := &redisSub{name: channel}
	r.mu.Lock()
	ps := r.ps
	if ps == nil {
		r.mu.Unlock()
		err := r.Ready()
		if err == nil { // the connection is being taken down
			err = ErrRedisUnavailable
		}
		return fmt.Errorf("broker: redis subscribe to %q: %w", channel, err)
	}
	r.subs[channel] = s
	r.mu.Unlock()
	fail := func(err error) error {
		r.mu.Lock()
		if r.subs[channel] == s {
			delete(r.subs, channel)
		}
		r.mu.Unlock()
		return err
	}
	ctx, cancel := r.ctx()
	defer cancel()
	if err := ps.Do(ctx, r.subscribeCmd(ps, r.chanKey(channel))).Error(); err != nil {
		return fail(fmt.Errorf("broker: redis subscribe to %q: %w", channel, err))
	}
	// Read after the subscription is confirmed, holding s.mu: a message
	// that came before is dropped (s is not ready), but it was published
	// before the read, so the position covers it. s.mu is not held during
	// the subscribe itself: rueidis reads its confirmation on the goroutine
	// that runs the message handlers, which may be waiting for s.mu.
	s.mu.Lock()
	pos, err := r.position(channel, true)
	if err == nil {
		s.epoch, s.off, s.ready = pos.Epoch, pos.Offset, true
	}
	s.mu.Unlock()
	if err != nil {
		// Not left subscribed on Redis for nothing (if this fails too, the
		// messages are dropped until the next connection, which subscribes
		// only to the channels wanted). After s.mu is released: the reply
		// is read by the goroutine a message handler may hold up on it.
		uctx, ucancel := r.ctx()
		_ = ps.Do(uctx, r.unsubscribeCmd(ps, r.chanKey(channel))).Error()
		ucancel()
		return fail(err)
	}
	return nil
}

// NodePosition is NodePositioner: the position of the last publication of
// the channel handed to the Handler (or read at Subscribe). Everything
// after it follows, also across a lost connection (from history).
func (r *Redis) NodePosition(channel string) (Position, bool) {
	r.mu.Lock()
	s := r.subs[channel]
	r.mu.Unlock()
	if s == nil {
		return Position{}, false
	}
	// Under s.mu: every publication at or before s.off has been handed to
	// the Handler (deliver updates s.off and calls it under the lock).
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ready {
		return Position{}, false
	}
	return Position{Offset: s.off, Epoch: s.epoch}, true
}

// Unsubscribe stops delivery of the channel and unsubscribes the node on
// Redis (if the connection is up: a new one subscribes only to the
// channels still wanted).
func (r *Redis) Unsubscribe(channel string) error {
	if r.closed.Load() {
		return ErrClosed
	}
	r.mu.Lock()
	s := r.subs[channel]
	delete(r.subs, channel)
	ps := r.ps
	r.mu.Unlock()
	if s != nil {
		// Wait for a delivery in progress: none starts after this.
		s.mu.Lock()
		s.ready = false
		s.mu.Unlock()
	}
	if ps == nil {
		return nil
	}
	ctx, cancel := r.ctx()
	defer cancel()
	if err := ps.Do(ctx, r.unsubscribeCmd(ps, r.chanKey(channel))).Error(); err != nil && !errors.Is(err, rueidis.ErrClosing) {
		return fmt.Errorf("broker: redis unsubscribe from %q: %w", channel, err)
	}
	return nil
}

// pubsubLoop keeps the pub/sub connection: connects, subscribes to the
// node's channels, re-synchronizes them from history, waits for the
// connection to break, and starts again (backing off up to a second).
func (r *Redis) pubsubLoop() {
	defer r.wg.Done()
	backoff := 50 * time.Millisecond
	first := true
	for !r.closed.Load() {
		err := r.connectPubSub(first)
		if r.closed.Load() {
			return
		}
		if err == nil {
			backoff = 50 * time.Millisecond
			first = false
			continue
		}
		msg := err.Error()
		r.lastErr.Store(&msg)
		select {
		case <-r.stop:
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// connectPubSub runs one pub/sub connection until it breaks. It returns
// nil if the connection was up (and then broke), else why it could not
// be made.
func (r *Redis) connectPubSub(first bool) error {
	ps, release := r.client.Dedicate()
	defer release()
	wait := ps.SetPubSubHooks(rueidis.PubSubHooks{
		OnMessage: r.onMessage,
	})
	// A PING makes the connection now: an unreachable Redis shows here.
	ctx, cancel := r.ctx()
	err := ps.Do(ctx, ps.B().Ping().Build()).Error()
	cancel()
	if err != nil {
		ps.Close()
		<-wait
		return fmt.Errorf("pub/sub connection: %w", err)
	}
	if !first {
		// The command connection may still be the one Redis closed: its
		// next command would fail with the old connection's error. A PING
		// (safe to repeat, unlike a publish) takes that error and makes
		// rueidis connect it again.
		for range 2 {
			ctx, cancel := r.ctx()
			err := r.client.Do(ctx, r.client.B().Ping().Build()).Error()
			cancel()
			if err == nil {
				break
			}
		}
	}
	// The connection is not made the node's (r.ps) until it is subscribed
	// to exactly the channels wanted: meanwhile Subscribe fails (the node
	// is not ready) and Unsubscribe only forgets the channel, and the
	// channels unsubscribed during the batches are unsubscribed here.
	// (With r.ps set before the batches, an Unsubscribe's UNSUBSCRIBE
	// could go before the batch that names its channel, leaving it
	// subscribed on Redis.)
	r.mu.Lock()
	chans := make([]string, 0, len(r.subs))
	for name := range r.subs {
		chans = append(chans, name)
	}
	r.mu.Unlock()
	disconnect := func() {
		r.mu.Lock()
		if r.ps == ps {
			r.ps = nil
		}
		r.mu.Unlock()
		r.ready.Store(false)
		ps.Close()
		<-wait
	}
	subscribed := make(map[string]struct{}, len(chans))
	for len(chans) > 0 {
		n := min(len(chans), subscribeBatch)
		keys := make([]string, n)
		for i, name := range chans[:n] {
			keys[i] = r.chanKey(name)
			subscribed[name] = struct{}{}
		}
		ctx, cancel := r.ctx()
		err := ps.Do(ctx, r.subscribeCmd(ps, keys...)).Error()
		cancel()
		if err != nil {
			disconnect()
			return fmt.Errorf("pub/sub resubscribe: %w", err)
		}
		chans = chans[n:]
	}
	for {
		r.mu.Lock()
		var extra []string
		for name := range subscribed {
			if _, ok := r.subs[name]; !ok {
				extra = append(extra, r.chanKey(name))
				delete(subscribed, name)
				if len(extra) == subscribeBatch {
					break
				}
			}
		}
		if len(extra) == 0 {
			r.ps = ps // under the same lock as the check: nothing in between
			r.mu.Unlock()
			break
		}
		r.mu.Unlock()
		ctx, cancel := r.ctx()
		err := ps.Do(ctx, r.unsubscribeCmd(ps, extra...)).Error()
		cancel()
		if err != nil {
			disconnect()
			return fmt.Errorf("pub/sub unsubscribe of channels no longer wanted: %w", err)
		}
	}
	r.ready.Store(true)
	if !first {
		r.stats.Reconnects.Add(1)
		r.log.Info("broker: redis pub/sub connection restored")
		r.resync()
	}
	select {
	case err = <-wait:
	case <-r.stop:
		err = ErrClosed
	}
	disconnect()
	if !r.closed.Load() {
		r.log.Warn("broker: redis pub/sub connection lost; local delivery of other nodes' publications stops until it is back", "err", err)
	}
	return nil
}

// resync reads every subscribed channel's history since the position the
// node last delivered and delivers what it missed (a few channels at a
// time).
func (r *Redis) resync() {
	r.mu.Lock()
	subs := make([]*redisSub, 0, len(r.subs))
	for _, s := range r.subs {
		subs = append(subs, s)
	}
	r.mu.Unlock()
	work := make(chan *redisSub)
	var wg sync.WaitGroup
	for range min(8, len(subs)) {
		wg.Go(func() {
			for s := range work {
				s.mu.Lock()
				if s.ready {
					r.fill(s, 0)
				}
				s.mu.Unlock()
			}
		})
	}
	for _, s := range subs {
		work <- s
	}
	close(work)
	wg.Wait()
}

// onMessage handles one pub/sub message (on the connection's goroutine).
func (r *Redis) onMessage(m rueidis.PubSubMessage) {
	ch := r.channelOf(m.Channel)
	r.mu.Lock()
	s := r.subs[ch]
	r.mu.Unlock()
	if s == nil || len(m.Message) == 0 {
		r.stats.DroppedLocal.Add(1)
		return
	}
	hr := r.handler.Load()
	if hr == nil {
		return
	}
	switch m.Message[0] {
	case 'p':
		pub, epoch, ok := parsePub(m.Message[1:])
		if !ok {
			r.stats.BadMessages.Add(1)
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if !s.ready {
			return
		}
		r.deliver(s, hr.h, pub, epoch)
	case 'j', 'l':
		info, err := decodeClientInfo(m.Message[1:])
		if err != nil {
			r.stats.BadMessages.Add(1)
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if !s.ready {
			return
		}
		if m.Message[0] == 'j' {
			hr.h.HandleJoin(ch, info)
		} else {
			hr.h.HandleLeave(ch, info)
		}
	default:
		r.stats.BadMessages.Add(1)
	}
}

// deliver hands pub to h if it is s's next publication, fills a gap before
// it from history, or skips it as a duplicate. s.mu is held.
func (r *Redis) deliver(s *redisSub, h Handler, pub Publication, epoch string) {
	if epoch != s.epoch {
		// Only an epoch Redis says is current: a message of an older one
		// can still be queued after fill (or a node's new epoch) moved s
		// past it, and would take s back to a stream that is gone.
		pos, err := r.position(s.name, false)
		switch {
		case err != nil:
			// Redis does not answer (the connection is likely going
			// down, and a resync follows): take the message's word.
			r.log.Warn("broker: redis: cannot confirm a channel's new epoch", "channel", s.name, "epoch", epoch, "err", err)
		case pos.Epoch != epoch:
			r.stats.Stale.Add(1)
			if pos.Epoch != "" && pos.Epoch != s.epoch {
				r.fill(s, 0) // yet another epoch: fill moves s to it
			}
			return
		}
		r.newEpoch(s, h, epoch)
	}
	switch {
	case pub.Offset <= s.off:
		if s.t > 0 && pub.Time > s.t {
			// Not a duplicate: a publication at an offset already
			// delivered, made after the one delivered there. Redis went
			// back within the epoch (see newEpochScript).
			if r.restartEpoch(s, h) {
				r.fill(s, 0)
			}
			return
		}
		r.stats.Duplicates.Add(1)
		return
	case pub.Offset > s.off+1:
		r.fill(s, pub.Offset)
		if pub.Offset <= s.off || epoch != s.epoch {
			return // history had it, or moved on to yet another epoch
		}
		if pub.Offset > s.off+1 {
			r.stats.Skipped.Add(pub.Offset - s.off - 1)
		}
	}
	s.off, s.t = pub.Offset, pub.Time
	r.stats.Delivered.Add(1)
	h.HandlePublication(s.name, &pub, Position{Offset: pub.Offset, Epoch: epoch})
}

// fill delivers, from history, what s missed after its position: the
// retained publications after it, up to the stream's current offset (or
// only those before upto, if upto > 0, when the message at upto is
// delivered next by the caller), reading at most fillBudget bytes at a
// time. s.mu is held. Publications history no longer has are skipped
// (counted).
//
// Redis may have gone back within s's epoch (see newEpochScript): its
// offset is below s's, or history holds another publication (another
// time) at s's offset. Then the stream gets a new epoch and fill delivers
// from its start.
func (r *Redis) fill(s *redisSub, upto uint64) {
	hr := r.handler.Load()
	if hr == nil {
		return
	}
	// The first read starts one before s.off, to compare the publication
	// history holds there with the one delivered.
	check := s.off > 0 && s.t > 0
	for {
		since := s.off
		if check {
			since--
		}
		pos, cut, pubs, err := r.readHistory(s.name, int64(since), 0, r.fillBudget, s.epoch, false)
		if err != nil {
			r.log.Warn("broker: redis: cannot read history to fill a gap", "channel", s.name, "err", err)
			return
		}
		if pos.Epoch == "" {
			return // no stream (yet, or any more): nothing to deliver
		}
		if pos.Epoch != s.epoch {
			r.newEpoch(s, hr.h, pos.Epoch)
			upto, check = 0, false // upto was of the old epoch
		} else if pos.Offset < s.off || (check && replacedAt(pubs, s.off, s.t)) {
			if !r.restartEpoch(s, hr.h) {
				return
			}
			upto, check = 0, false
			continue
		}
		checked := check
		check = false
		pubs = retained(pubs, cut)
		progress := false
		for i := range pubs {
			p := &pubs[i]
			if p.Offset <= s.off {
				continue
			}
			if upto > 0 && p.Offset >= upto {
				return
			}
			if p.Offset > s.off+1 {
				r.stats.Skipped.Add(p.Offset - s.off - 1)
			}
			s.off, s.t = p.Offset, p.Time
			progress = true
			r.stats.Refetched.Add(1)
			r.stats.Delivered.Add(1)
			hr.h.HandlePublication(s.name, p, Position{Offset: p.Offset, Epoch: pos.Epoch})
		}
		if s.off >= pos.Offset || (upto > 0 && s.off+1 >= upto) {
			return
		}
		if !progress && !checked {
			// What is left is no longer retained. (A checking read's page
			// may hold only the publication at s.off: read on.)
			if upto == 0 {
				r.stats.Skipped.Add(pos.Offset - s.off)
				s.off, s.t = pos.Offset, 0
			}
			return
		}
	}
}

// replacedAt says whether pubs holds a publication at offset off whose
// time is not t: not the one the node delivered there.
func replacedAt(pubs []Publication, off uint64, t int64) bool {
	for i := range pubs {
		if pubs[i].Offset == off {
			return pubs[i].Time != t
		}
	}
	return false
}

// restartEpoch gives s's stream a new epoch (newEpochScript), as Redis
// went back within s's epoch, and moves s to the epoch the stream is at
// then (the new one, or one another node gave it first). It returns false
// if s stays (no answer, or no stream). s.mu is held.
func (r *Redis) restartEpoch(s *redisSub, h Handler) bool {
	ctx, cancel := r.ctx()
	defer cancel()
	vals, err := newEpochScript.Exec(ctx, r.client, []string{r.metaKey(s.name), r.streamKey(s.name)},
		[]string{s.epoch, r.epochs.next()}).ToArray()
	var epoch string
	if err == nil && len(vals) == 2 {
		epoch, err = vals[1].ToString()
	} else if err == nil {
		err = fmt.Errorf("%d values in the answer", len(vals))
	}
	if err != nil {
		r.log.Warn("broker: redis: channel's stream went back in its epoch; cannot give it a new epoch", "channel", s.name, "epoch", s.epoch, "offset", s.off, "err", err)
		return false
	}
	r.stats.Rollbacks.Add(1)
	r.log.Warn("broker: redis: channel's stream went back in its epoch (Redis lost publications): new epoch", "channel", s.name, "old", s.epoch, "offset", s.off, "new", epoch)
	if epoch == "" || epoch == s.epoch {
		return false
	}
	r.newEpoch(s, h, epoch)
	return true
}

// newEpoch moves s to the start of epoch and tells the Handler, if it
// wants to know, when that replaces a stream it had delivered from. s.mu
// is held.
func (r *Redis) newEpoch(s *redisSub, h Handler, epoch string) {
	old := s.epoch
	s.epoch, s.off, s.t = epoch, 0, 0
	if old == "" {
		return
	}
	r.stats.NewEpochs.Add(1)
	if eh, ok := h.(EpochHandler); ok {
		eh.HandleEpoch(s.name, Position{Epoch: epoch})
	}
}

// parsePub parses "offset time epoch data".
func parsePub(s string) (Publication, string, bool) {
	os, rest, ok1 := strings.Cut(s, " ")
	ts, rest, ok2 := strings.Cut(rest, " ")
	epoch, data, ok3 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || !ok3 || epoch == "" {
		return Publication{}, "", false
	}
	o, err1 := strconv.ParseUint(os, 10, 64)
	t, err2 := strconv.ParseInt(ts, 10, 64)
	if err1 != nil || err2 != nil || o == 0 {
		return Publication{}, "", false
	}
	return Publication{Offset: o, Data: []byte(data), Time: t}, epoch, true
}

// wireClientInfo is ClientInfo as it travels through Redis (Info as raw
// JSON).
type wireClientInfo struct {
	Client string          `json:"client"`
	User   string          `json:"user"`
	Info   json.RawMessage `json:"info,omitempty"`
}

func encodeClientInfo(info ClientInfo) (string, error) {
	b, err := json.Marshal(wireClientInfo{Client: info.Client, User: info.User, Info: info.Info})
	if err != nil {
		return "", fmt.Errorf("broker: encode client info: %w", err)
	}
	return string(b), nil
}

func decodeClientInfo(s string) (ClientInfo, error) {
	var w wireClientInfo
	if err := json.Unmarshal([]byte(s), &w); err != nil {
		return ClientInfo{}, err
	}
	return ClientInfo{Client: w.Client, User: w.User, Info: []byte(w.Info)}, nil
}

// PublishJoin and PublishLeave send presence events over the channel's
// pub/sub channel (not kept). They are queued with the presence writes
// (see redis_ops.go) and return at once: an error only if the queue is
// full. Other nodes get them in the order this node queued them, not
// necessarily in order with this node's publications.
func (r *Redis) PublishJoin(channel string, info ClientInfo) error {
	return r.event(channel, opJoin, info)
}

func (r *Redis) PublishLeave(channel string, info ClientInfo) error {
	return r.event(channel, opLeave, info)
}

func (r *Redis) event(channel string, kind opKind, info ClientInfo) error {
	if r.closed.Load() {
		return ErrClosed
	}
	enc, err := encodeClientInfo(info)
	if err != nil {
		return err
	}
	if err := r.ops.push(redisOp{kind: kind, ch: channel, enc: enc}); err != nil {
		return fmt.Errorf("broker: redis presence event on %q: %w", channel, err)
	}
	return nil
}
