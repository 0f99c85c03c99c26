package auth

import (
	"math/rand/v2"
	"sync"
	"time"
)

// cacheShards is the shard count of a cache of at least that many entries
// (a power of two: the shard is picked by the key's first byte).
const cacheShards = 16

// cache maps the SHA-256 of a verified token to its claims. It holds at most
// the size it was made with, in shards with a mutex each.
type cache struct {
	shards []shard
	mask   byte
}

type shard struct {
	mu      sync.Mutex
	index   map[[32]byte]int32 // key -> position in entries
	entries []entry            // len <= limit
	limit   int
	_       [64]byte // keep neighbouring shards' mutexes off one cache line
}

type entry struct {
	key    [32]byte
	claims *Claims
	until  time.Time // zero: never expires
}

func newCache(size int) *cache {
	n := cacheShards
	if size < n {
		n = 1
	}
	c := &cache{shards: make([]shard, n), mask: byte(n - 1)}
	for i := range c.shards {
		// Spread size over the shards so the limits add up to size exactly.
		limit := size / n
		if i < size%n {
			limit++
		}
		c.shards[i].limit = limit
		c.shards[i].index = make(map[[32]byte]int32)
	}
	return c
}

func (c *cache) shard(key *[32]byte) *shard { return &c.shards[key[0]&c.mask] }

func (c *cache) get(key *[32]byte) (*Claims, time.Time, bool) {
	s := c.shard(key)
	s.mu.Lock()
	i, ok := s.index[*key]
	if !ok {
		s.mu.Unlock()
		return nil, time.Time{}, false
	}
	e := &s.entries[i]
	claims, until := e.claims, e.until
	s.mu.Unlock()
	return claims, until, true
}

// put stores claims for key; a full shard first evicts, of two entries
// picked at random, the one that expires first (one with no exp last).
func (c *cache) put(key *[32]byte, claims *Claims, until time.Time) {
	s := c.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if i, ok := s.index[*key]; ok {
		s.entries[i].claims, s.entries[i].until = claims, until
		return
	}
	if len(s.entries) < s.limit {
		s.index[*key] = int32(len(s.entries))
		s.entries = append(s.entries, entry{key: *key, claims: claims, until: until})
		return
	}
	victim := rand.IntN(len(s.entries))
	if other := rand.IntN(len(s.entries)); expiresBefore(s.entries[other].until, s.entries[victim].until) {
		victim = other
	}
	delete(s.index, s.entries[victim].key)
	s.entries[victim] = entry{key: *key, claims: claims, until: until}
	s.index[*key] = int32(victim)
}

// expiresBefore orders expiry times, zero (never) last.
func expiresBefore(a, b time.Time) bool {
	if a.IsZero() {
		return false
	}
	return b.IsZero() || a.Before(b)
}

// len is the number of entries held (for tests).
func (c *cache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += len(s.entries)
		s.mu.Unlock()
	}
	return n
}
