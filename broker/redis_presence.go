package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// Presence in Redis is an expiring set per channel (see setAddScript): a
// hash client → info and a sorted set client → expiry. The node that owns
// a connection refreshes its entries every third of PresenceTTL, so the
// entries of a node that died (or lost Redis for longer than the TTL)
// expire and are dropped by the next read.

func (r *Redis) presenceKeys(ch string) []string {
	return []string{r.prefix + ":p:{" + ch + "}", r.prefix + ":x:{" + ch + "}"}
}

// localPresence is what this node has put in presence, to refresh it: a
// channel's clients and their encoded infos. It holds an entry per
// subscription with presence, which the hub bounds.
type localPresence struct {
	mu sync.Mutex
	m  map[string]map[string]string
}

func (p *localPresence) init() { p.m = map[string]map[string]string{} }

func (p *localPresence) add(ch, client, enc string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	cs := p.m[ch]
	if cs == nil {
		cs = map[string]string{}
		p.m[ch] = cs
	}
	cs[client] = enc
}

func (p *localPresence) remove(ch, client string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if cs := p.m[ch]; cs != nil {
		delete(cs, client)
		if len(cs) == 0 {
			delete(p.m, ch)
		}
	}
}

// snapshot returns every channel's entries as set-add arguments (member,
// value pairs).
func (p *localPresence) snapshot() map[string][]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string][]string, len(p.m))
	for ch, cs := range p.m {
		args := make([]string, 0, 2*len(cs))
		for c, enc := range cs {
			args = append(args, c, enc)
		}
		out[ch] = args
	}
	return out
}

// removeAll takes every entry of this node out of Redis (on Close), in
// one pipeline bounded by ctx.
func (p *localPresence) removeAll(ctx context.Context, r *Redis) {
	var cmds rueidis.Commands
	for ch, args := range p.snapshot() {
		clients := make([]string, 0, len(args)/2)
		for i := 0; i < len(args); i += 2 {
			clients = append(clients, args[i])
		}
		keys := r.presenceKeys(ch)
		cmds = append(cmds, r.client.B().Hdel().Key(keys[0]).Field(clients...).Build(),
			r.client.B().Zrem().Key(keys[1]).Member(clients...).Build())
	}
	if len(cmds) == 0 {
		return
	}
	for _, res := range r.client.DoMulti(ctx, cmds...) {
		if err := res.Error(); err != nil {
			r.log.Debug("broker: redis: presence not removed at close", "err", err)
			return
		}
	}
}

// AddPresence records info in the channel's presence, owned by this node
// (refreshed until RemovePresence or Close). The write is queued (see
// redis_ops.go): it returns at once, and an error only if the queue is
// full; the entry is kept for the next refresh either way.
func (r *Redis) AddPresence(channel string, info ClientInfo) error {
	if r.closed.Load() {
		return ErrClosed
	}
	enc, err := encodeClientInfo(info)
	if err != nil {
		return err
	}
	r.presence.add(channel, info.Client, enc)
	if err := r.ops.push(redisOp{kind: opAdd, ch: channel, client: info.Client, enc: enc}); err != nil {
		return fmt.Errorf("broker: redis presence of %q: %w", channel, err)
	}
	return nil
}

// RemovePresence takes client out of the channel's presence (queued, as
// AddPresence; refused only if the queue is full, and then the entry
// expires with PresenceTTL, as it is no longer refreshed).
func (r *Redis) RemovePresence(channel string, client string) error {
	if r.closed.Load() {
		return ErrClosed
	}
	r.presence.remove(channel, client)
	if err := r.ops.push(redisOp{kind: opRemove, ch: channel, client: client}); err != nil {
		return fmt.Errorf("broker: redis presence of %q: %w", channel, err)
	}
	return nil
}

// Presence returns the channel's live entries from every node, sorted by
// client id, at most MaxPresence of them.
func (r *Redis) Presence(channel string) ([]ClientInfo, error) {
	if r.closed.Load() {
		return nil, ErrClosed
	}
	// Called on event loops: with the pub/sub connection down, fail at
	// once rather than wait for queued writes Redis will not take.
	if err := r.Ready(); err != nil {
		return nil, fmt.Errorf("broker: redis presence of %q: %w", channel, err)
	}
	// This node's own writes queued before the read are in it.
	r.ops.waitQueued(r.timeout)
	vals, err := r.setRead(r.presenceKeys(channel), r.opts.MaxPresence)
	if err != nil {
		return nil, fmt.Errorf("broker: redis presence of %q: %w", channel, err)
	}
	if len(vals) == 0 {
		return nil, nil
	}
	out := make([]ClientInfo, 0, len(vals))
	for _, v := range vals {
		info, err := decodeClientInfo(v)
		if err != nil {
			r.stats.BadMessages.Add(1)
			continue
		}
		out = append(out, info)
	}
	slices.SortFunc(out, func(a, b ClientInfo) int { return strings.Compare(a.Client, b.Client) })
	return out, nil
}

// presenceLoop refreshes this node's presence entries every third of
// PresenceTTL, through the ops queue (opRefresh): a refresh written apart
// from it could write an entry read before a removal that the queue sent
// meanwhile, and bring it back until the TTL.
func (r *Redis) presenceLoop() {
	defer r.wg.Done()
	t := time.NewTicker(r.opts.PresenceTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
		// One refresh waiting is enough: it reads the entries when it runs.
		if !r.refreshQueued.CompareAndSwap(false, true) {
			continue
		}
		if err := r.ops.push(redisOp{kind: opRefresh}); err != nil {
			r.refreshQueued.Store(false)
			r.log.Debug("broker: redis: presence not refreshed", "err", err)
		}
	}
}

// refreshPresence writes every entry of the node's presence again, in
// pipelines (on the ops goroutine, at the refresh's turn in the queue).
func (r *Redis) refreshPresence() {
	r.refreshQueued.Store(false)
	ttl := msString(r.opts.PresenceTTL)
	var execs []rueidis.LuaExec
	send := func() bool {
		if len(execs) == 0 {
			return true
		}
		ctx, cancel := r.ctx()
		defer cancel()
		defer func() { execs = execs[:0] }()
		for _, res := range r.execOnce(ctx, setAddSrc, setAddSha, execs) {
			if err := res.Error(); err != nil {
				r.log.Debug("broker: redis: presence not refreshed", "err", err)
				return false
			}
		}
		return true
	}
	for ch, args := range r.presence.snapshot() {
		keys := r.presenceKeys(ch)
		for len(args) > 0 {
			n := min(len(args), 2*subscribeBatch)
			execs = append(execs, rueidis.LuaExec{Keys: keys, Args: append([]string{ttl}, args[:n]...)})
			args = args[n:]
			if len(execs) == opsBatch && !send() {
				return
			}
		}
		if r.closed.Load() {
			return
		}
	}
	send()
}

// setAdd adds member, value pairs to an expiring set with ttl.
func (r *Redis) setAdd(keys []string, ttl time.Duration, pairs ...string) error {
	ctx, cancel := r.ctx()
	defer cancel()
	args := append([]string{msString(ttl)}, pairs...)
	return setAddScript.Exec(ctx, r.client, keys, args).Error()
}

// setRemove takes members out of an expiring set.
func (r *Redis) setRemove(ctx context.Context, keys []string, members ...string) error {
	res := r.client.DoMulti(ctx,
		r.client.B().Hdel().Key(keys[0]).Field(members...).Build(),
		r.client.B().Zrem().Key(keys[1]).Member(members...).Build())
	return errors.Join(res[0].Error(), res[1].Error())
}

// setRead drops an expiring set's expired members and returns the values
// of at most limit live ones.
func (r *Redis) setRead(keys []string, limit int) ([]string, error) {
	ctx, cancel := r.ctx()
	defer cancel()
	return setReadScript.Exec(ctx, r.client, keys, []string{strconv.Itoa(limit)}).AsStrSlice()
}

// msString is d in whole milliseconds (rounded up), as a Redis argument.
func msString(d time.Duration) string { return strconv.FormatInt(ceilMs(d), 10) }
