package broker

import (
	"crypto/sha1"
	"encoding/hex"

	"github.com/redis/rueidis"
)

// The Redis broker's Lua scripts. Each runs atomically in Redis, so a
// publication's offset, its place in history, its key expiry and its
// pub/sub message are one step: offsets are gap-free and every subscriber
// connection receives a channel's messages in offset order. Times come from
// the Redis server's TIME, one clock for every node.

// publishScript: KEYS meta, stream, pub/sub channel; ARGV data, history
// size, history ttl (ms), epoch offered for a new stream, key ttl (ms, 0:
// no expiry), publish command, and (optional) the epoch and offset the
// publishing node last delivered of the channel ("" if it does not know).
// Returns {offset, epoch, time ms}.
//
// A new stream (no meta key: never published, expired or lost) takes the
// offered epoch and drops any stream left over, so the history is always a
// contiguous run of offsets ending at the current one. A channel that keeps
// no history has its stream deleted for the same reason. A stream behind
// the offset the publishing node delivered in the same epoch went back
// (see newEpochScript) and is started again the same way.
var publishScript = rueidis.NewLuaScript(`
local e = redis.call('HGET', KEYS[1], 'e')
if e and ARGV[7] and e == ARGV[7] and tonumber(redis.call('HGET', KEYS[1], 'o') or '0') < tonumber(ARGV[8]) then
  -- Behind what the publishing node delivered of this epoch: Redis went
  -- back (see newEpochScript); a new epoch rather than reused offsets.
  e = nil
end
if not e then
  e = ARGV[4]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e, 'o', 0)
end
local o = redis.call('HINCRBY', KEYS[1], 'o', 1)
-- Numbers are doubles in Redis's Lua, and '..' writes them as %.14g
-- (1e+14): offsets and times go into the history and the message as
-- integers.
local os = string.format('%d', o)
redis.call('HSET', KEYS[1], 't', ARGV[3])
local size = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local kttl = tonumber(ARGV[5])
local id = ''
local ms
if size > 0 then
  id = redis.call('XADD', KEYS[2], 'MAXLEN', size, '*', 'o', os, 'd', ARGV[1])
  ms = tonumber(string.match(id, '^(%d+)'))
  if ttl > 0 then
    redis.call('XTRIM', KEYS[2], 'MINID', ms - ttl + 1)
  end
  if kttl > 0 then redis.call('PEXPIRE', KEYS[2], kttl) else redis.call('PERSIST', KEYS[2]) end
else
  redis.call('DEL', KEYS[2])
  local t = redis.call('TIME')
  ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
if kttl > 0 then redis.call('PEXPIRE', KEYS[1], kttl) else redis.call('PERSIST', KEYS[1]) end
redis.call(ARGV[6], KEYS[3], 'p' .. os .. ' ' .. string.format('%d', ms) .. ' ' .. e .. ' ' .. ARGV[1])
return {o, e, ms}
`)

// historyScript: KEYS meta, stream; ARGV since offset (-1: none), limit
// (0: all), byte budget (0: none), epoch of since ("": not checked).
// Returns {offset, epoch, cutoff ms, [id, offset, data]…}, the entries
// newest first: the newest limit ones without since; with since, the ones
// after it, or none when more than limit follow it. When since's epoch is
// given and is not the stream's, since counts from the stream's start.
// With a byte budget only the oldest of those entries are returned, as
// many as fit in it (at least one), so a reader can page through a long
// gap in order. Entries at or before cutoff are past the channel's history
// TTL (not trimmed yet: no publish since they aged) and are not returned.
// No meta key: {0, "", 0}.
const historySrc = `
local m = redis.call('HMGET', KEYS[1], 'o', 'e', 't')
if not m[1] then return {0, '', 0} end
local off = tonumber(m[1])
local ttl = tonumber(m[3] or '0') or 0
local cut = 0
if ttl > 0 then
  local t = redis.call('TIME')
  cut = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - ttl
end
local out = {off, m[2], cut}
local since = tonumber(ARGV[1])
local lim = tonumber(ARGV[2])
local budget = tonumber(ARGV[3])
if since >= 0 and ARGV[4] ~= '' and ARGV[4] ~= m[2] then since = 0 end
local n = lim
if since >= 0 then
  n = off - since
  if n <= 0 or (lim > 0 and n > lim) then return out end
end
local ents
if n > 0 then
  ents = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', n)
else
  ents = redis.call('XREVRANGE', KEYS[2], '+', '-')
end
-- Entries past the TTL are the oldest (ids carry the time): left out
-- before the budget picks the oldest, or a page of them alone would hide
-- the retained ones after them from a reader paging through a gap.
local last = #ents
if cut > 0 then
  while last > 0 and tonumber(string.match(ents[last][1], '^(%d+)')) <= cut do
    last = last - 1
  end
end
local j = 1
if budget > 0 and last > 0 then
  j = last
  local total = #ents[j][2][4]
  while j > 1 and total + #ents[j - 1][2][4] <= budget do
    j = j - 1
    total = total + #ents[j][2][4]
  end
end
for i = j, last do
  local x = ents[i]
  out[#out + 1] = x[1]
  out[#out + 1] = x[2][2]
  out[#out + 1] = x[2][4]
end
return out
`

var historyScript = rueidis.NewLuaScriptReadOnly(historySrc)

// historyScriptOnce and positionScriptOnce are historyScript and
// positionScript for the calls made on event loops (History, Subscribe):
// rueidis retries a read-only command on a network error until its
// context's deadline, which with Redis away would hold the loop for the
// whole timeout. Not marked read-only, they are sent once. (The pub/sub
// goroutine's reads keep the retries: a resync meeting a Redis still
// loading its data waits for it rather than leave a gap.)
var historyScriptOnce = rueidis.NewLuaScript(historySrc)

// newEpochScript: KEYS meta, stream; ARGV the epoch a node found behind
// what it delivered, a new epoch. Returns {offset, epoch} after it, {0, ""}
// without a stream.
//
// A stream whose offset went back within its epoch (Redis restarted from
// an older snapshot, or failed over to a lagging replica) has lost
// publications, and the next ones reuse their offsets: positions held of
// that epoch would recover the wrong publications. It gets the new epoch,
// from offset 0, and its history (the old epoch's) is dropped; only if it
// is still at the old epoch, so that the nodes that see it at once agree
// on one new epoch (the others find it here).
var newEpochScript = rueidis.NewLuaScript(`
local m = redis.call('HMGET', KEYS[1], 'o', 'e')
if not m[1] then return {0, ''} end
if m[2] ~= ARGV[1] then return {tonumber(m[1]), m[2]} end
redis.call('HSET', KEYS[1], 'e', ARGV[2], 'o', 0)
redis.call('DEL', KEYS[2])
return {0, ARGV[2]}
`)

// positionScript: KEYS meta. Returns {offset, epoch}, {0, ""} without a
// stream.
const positionSrc = `
local m = redis.call('HMGET', KEYS[1], 'o', 'e')
if not m[1] then return {0, ''} end
return {tonumber(m[1]), m[2]}
`

var (
	positionScript     = rueidis.NewLuaScriptReadOnly(positionSrc)
	positionScriptOnce = rueidis.NewLuaScript(positionSrc)
)

// setAddScript keeps an entry in an expiring set (presence, the node
// registry): a hash of member → value and a sorted set of member → expiry
// (Redis time, ms). KEYS hash, zset; ARGV ttl (ms), then member, value
// pairs. Both keys live twice the ttl past the last add, so a set whose
// writers all died goes away.
const setAddSrc = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], 2 * ttl)
redis.call('PEXPIRE', KEYS[2], 2 * ttl)
return 1
`

var (
	setAddScript = rueidis.NewLuaScript(setAddSrc)
	setAddSha    = sha1Hex(setAddSrc)
)

// setReadScript: KEYS hash, zset; ARGV limit. Drops the expired members
// and returns the values of the live ones (at most limit).
var setReadScript = rueidis.NewLuaScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
while true do
  local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 500)
  if #dead == 0 then break end
  redis.call('HDEL', KEYS[1], unpack(dead))
  redis.call('ZREM', KEYS[2], unpack(dead))
end
local live = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf', 'LIMIT', 0, tonumber(ARGV[1]))
if #live == 0 then return {} end
local vals = {}
for i = 1, #live, 500 do
  local part = redis.call('HMGET', KEYS[1], unpack(live, i, math.min(i + 499, #live)))
  for _, v in ipairs(part) do
    if v then vals[#vals + 1] = v end
  end
end
return vals
`)

// keepScript: KEYS meta; ARGV idle (ms). A channel some node subscribes to
// keeps its stream (offset and epoch) for at least idle more, as a
// subscribed stream of the Memory broker never expires: otherwise a quiet
// channel's subscribers would see a new epoch at its next publication.
var keepScript = rueidis.NewLuaScript(`
local t = redis.call('PTTL', KEYS[1])
local idle = tonumber(ARGV[1])
if t >= 0 and t < idle then redis.call('PEXPIRE', KEYS[1], idle) end
return 1
`)

// sha1Hex is a script's SHA-1, as EVALSHA names it.
func sha1Hex(src string) string {
	h := sha1.Sum([]byte(src))
	return hex.EncodeToString(h[:])
}
