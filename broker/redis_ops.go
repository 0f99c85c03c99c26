package broker

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// The hub records presence and sends join and leave events from the event
// loops (a subscribe, a close). A round trip to Redis for each would stall
// a loop, and a disconnect storm would stall it for as many round trips as
// there are subscriptions with presence. So the Redis broker queues those
// writes and one goroutine sends them in order, in pipelined batches. The
// node's own Presence reads wait for the writes queued before them, so a
// node sees its own connections.

// maxQueuedOps bounds the presence writes and events waiting for Redis;
// each holds a channel name, a client id and an info of at most a token's
// size. Past it (Redis slower than the loops, or away) they are refused:
// an entry added is still refreshed later from the node's own record, a
// removal still expires with the TTL, an event is lost.
const maxQueuedOps = 16384

// opsBatch bounds the writes sent in one pipeline.
const opsBatch = 256

// ErrQueueFull is wrapped by the error of a presence write or event
// refused because maxQueuedOps wait already.
var ErrQueueFull = errors.New("broker: redis: too many presence writes waiting")

type opKind uint8

const (
	opAdd opKind = iota
	opRemove
	opJoin
	opLeave
	// opRefresh writes every entry the node has in presence again (see
	// presenceLoop). In the queue, it is ordered with the adds and
	// removals: it reads the node's entries when its turn comes, so a
	// removal queued after that read is sent after the refresh's writes,
	// and one queued before it has left the node's entries already.
	opRefresh
)

type redisOp struct {
	kind   opKind
	ch     string
	client string
	enc    string // encoded ClientInfo (add, join, leave)
}

// opQueue is the FIFO of presence writes and events.
type opQueue struct {
	mu     sync.Mutex
	ops    []redisOp
	queued uint64        // ops ever queued
	done   uint64        // ops sent (or given up on)
	doneCh chan struct{} // closed when done advances
	wake   chan struct{} // a token when ops are waiting

	refused atomic.Uint64 // pushes refused: the queue was full
}

func (q *opQueue) init() {
	q.doneCh = make(chan struct{})
	q.wake = make(chan struct{}, 1)
}

func (q *opQueue) push(op redisOp) error {
	q.mu.Lock()
	if len(q.ops) >= maxQueuedOps {
		q.mu.Unlock()
		q.refused.Add(1)
		return ErrQueueFull
	}
	q.ops = append(q.ops, op)
	q.queued++
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return nil
}

// take removes up to n ops from the front.
func (q *opQueue) take(n int) []redisOp {
	q.mu.Lock()
	defer q.mu.Unlock()
	k := min(n, len(q.ops))
	if k == 0 {
		return nil
	}
	out := make([]redisOp, k)
	copy(out, q.ops)
	rest := copy(q.ops, q.ops[k:])
	clear(q.ops[rest:])
	q.ops = q.ops[:rest]
	if cap(q.ops) > 4*opsBatch && rest < cap(q.ops)/4 {
		q.ops = append([]redisOp(nil), q.ops...) // give a burst's memory back
	}
	return out
}

func (q *opQueue) finished(k int) {
	q.mu.Lock()
	q.done += uint64(k)
	close(q.doneCh)
	q.doneCh = make(chan struct{})
	q.mu.Unlock()
}

// waitQueued waits until the ops queued before the call are sent, at most
// d.
func (q *opQueue) waitQueued(d time.Duration) {
	q.mu.Lock()
	target := q.queued
	q.mu.Unlock()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		q.mu.Lock()
		if q.done >= target {
			q.mu.Unlock()
			return
		}
		ch := q.doneCh
		q.mu.Unlock()
		select {
		case <-ch:
		case <-timer.C:
			return
		}
	}
}

// opsLoop sends the queued ops until Close.
func (r *Redis) opsLoop() {
	defer r.wg.Done()
	for {
		select {
		case <-r.stop:
			return
		case <-r.ops.wake:
		}
		for {
			batch := r.ops.take(opsBatch)
			if len(batch) == 0 {
				break
			}
			r.sendOps(batch)
			r.ops.finished(len(batch))
			if r.closed.Load() {
				return
			}
		}
	}
}

// sendOps sends a batch in order: consecutive adds as one pipeline of
// script calls, consecutive other writes as one pipeline of commands.
func (r *Redis) sendOps(batch []redisOp) {
	ttl := r.opts.PresenceTTL
	for len(batch) > 0 {
		if batch[0].kind == opRefresh {
			r.refreshPresence()
			batch = batch[1:]
			continue
		}
		n := 1
		adds := batch[0].kind == opAdd
		for n < len(batch) && batch[n].kind != opRefresh && (batch[n].kind == opAdd) == adds {
			n++
		}
		part := batch[:n]
		batch = batch[n:]
		ctx, cancel := r.ctx()
		var err error
		if adds {
			execs := make([]rueidis.LuaExec, len(part))
			for i, op := range part {
				execs[i] = rueidis.LuaExec{Keys: r.presenceKeys(op.ch), Args: []string{msString(ttl), op.client, op.enc}}
			}
			for _, res := range r.execOnce(ctx, setAddSrc, setAddSha, execs) {
				if err = res.Error(); err != nil {
					break
				}
			}
		} else {
			cmds := make(rueidis.Commands, 0, 2*len(part))
			for _, op := range part {
				switch op.kind {
				case opRemove:
					keys := r.presenceKeys(op.ch)
					cmds = append(cmds, r.client.B().Hdel().Key(keys[0]).Field(op.client).Build(),
						r.client.B().Zrem().Key(keys[1]).Member(op.client).Build())
				case opJoin, opLeave:
					kind := "j"
					if op.kind == opLeave {
						kind = "l"
					}
					cmds = append(cmds, r.publishCmd(op.ch, kind+op.enc))
				}
			}
			for _, res := range r.client.DoMulti(ctx, cmds...) {
				if err = res.Error(); err != nil {
					break
				}
			}
		}
		cancel()
		if err != nil {
			r.stats.OpErrors.Add(uint64(len(part)))
			r.log.Debug("broker: redis: presence writes or events not sent", "ops", len(part), "err", err)
		}
	}
}

// publishCmd publishes msg on the channel's pub/sub channel.
func (r *Redis) publishCmd(ch, msg string) rueidis.Completed {
	if r.sharded {
		return r.client.B().Spublish().Channel(r.chanKey(ch)).Message(msg).Build()
	}
	return r.client.B().Publish().Channel(r.chanKey(ch)).Message(msg).Build()
}

// execOnce runs the script src (SHA-1 sha) once per exec in one pipeline,
// each command sent once: EVALSHA, then EVAL for all of them if Redis does
// not know the script yet. rueidis's ExecMulti first loads the script with
// a SCRIPT LOAD it retries until the context's deadline: with Redis away,
// the ops goroutine would wait out a whole timeout per batch, and so would
// the Presence calls that wait for the queue, on event loops.
func (r *Redis) execOnce(ctx context.Context, src, sha string, execs []rueidis.LuaExec) []rueidis.RedisResult {
	cmds := make(rueidis.Commands, len(execs))
	for i, e := range execs {
		cmds[i] = r.client.B().Evalsha().Sha1(sha).Numkeys(int64(len(e.Keys))).Key(e.Keys...).Arg(e.Args...).Build()
	}
	res := r.client.DoMulti(ctx, cmds...)
	if len(res) == 0 {
		return res
	}
	if rerr, ok := rueidis.IsRedisErr(res[0].Error()); !ok || !rerr.IsNoScript() {
		return res
	}
	// One script, one pipeline: Redis knew it for none of them.
	for i, e := range execs {
		cmds[i] = r.client.B().Eval().Script(src).Numkeys(int64(len(e.Keys))).Key(e.Keys...).Arg(e.Args...).Build()
	}
	return r.client.DoMulti(ctx, cmds...)
}
