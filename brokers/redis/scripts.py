"""Lua scripts: every step that must be atomic on the Redis server runs as one script.

They never re-encode an envelope (Redis' cjson would turn ``[]`` into ``{}`` and round floats
to 14 digits); they only decode to read a field, and move the original strings around. Keys
a script computes from data (a delayed message's list, a replayed message's list) are not
declared in ``KEYS``, so these scripts assume a single Redis server, not Redis Cluster (kombu
makes the same assumption).
"""

from __future__ import annotations

__all__ = [
    "ACK_ONE_INTO",
    "CHORD_ADJUST",
    "CHORD_PART",
    "PROMOTE",
    "RATE_TOKEN",
    "RECEIVE",
    "REPLAY",
    "RESTORE",
    "SET_RESULT",
    "UNLOCK",
]

_PROMOTE_BODY = """
local function promote(delayed, counts, now, limit)
    if limit <= 0 then return 0 end
    local due = redis.call('ZRANGE', delayed, '-inf', now, 'BYSCORE', 'LIMIT', 0, limit)
    for _, member in ipairs(due) do
        local entry = cjson.decode(member)
        redis.call('ZREM', delayed, member)
        if redis.call('HINCRBY', counts, entry[1], -1) <= 0 then
            redis.call('HDEL', counts, entry[1])
        end
        redis.call('LPUSH', entry[2], entry[3])
    end
    return #due
end
"""

PROMOTE = (
    _PROMOTE_BODY
    + """
-- KEYS: delayed zset, delayed count hash. ARGV: now, limit.
return promote(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]))
"""
)
"""Move up to ``limit`` due delayed messages (zset members ``[queue, list_key, envelope]``) to
their lists; returns how many moved."""

RECEIVE = (
    _PROMOTE_BODY
    + """
-- KEYS: unacked, unacked_index, delayed, delayed counts, receipt, then the lists in serving
--       order.
-- ARGV: now, wanted, promote limit, call id, receipt lifetime (s), then each list's queue name.
local unacked, index = KEYS[1], KEYS[2]
local now, wanted = tonumber(ARGV[1]), tonumber(ARGV[2])
promote(KEYS[3], KEYS[4], now, tonumber(ARGV[3]))
local out = {}
local tags = {}

local function record(number, item)
    local queue = ARGV[5 + number]
    local tag = ''
    local ok, env = pcall(cjson.decode, item)
    if ok and type(env) == 'table' and type(env.properties) == 'table'
            and type(env.properties.delivery_tag) == 'string' then
        tag = env.properties.delivery_tag
        local exchange, routing_key = '', queue
        local info = env.properties.delivery_info
        if type(info) == 'table' then
            if type(info.exchange) == 'string' then exchange = info.exchange end
            if type(info.routing_key) == 'string' then routing_key = info.routing_key end
        end
        redis.call('ZADD', index, now, tag)
        local where = cjson.encode(exchange) .. ', ' .. cjson.encode(routing_key)
        redis.call('HSET', unacked, tag, '[' .. item .. ', ' .. where .. ']')
        tags[#tags + 1] = tag
    end
    out[#out + 1] = tag
    out[#out + 1] = number
    out[#out + 1] = item
end

local taken = 0
for number = 1, #KEYS - 5 do
    if taken >= wanted then break end
    local items = redis.call('RPOP', KEYS[5 + number], wanted - taken)
    if items then
        for _, item in ipairs(items) do
            record(number, item)
            taken = taken + 1
        end
    end
end
if #tags > 0 then
    redis.call('SET', KEYS[5], cjson.encode({ARGV[4], tags}), 'EX', tonumber(ARGV[5]))
end
local nxt = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
table.insert(out, 1, nxt[2] or '')
return out
"""
)
"""Promote due delayed messages, then pop up to N entries and record each in ``unacked``
(tag -> ``[envelope, exchange, routing_key]``) and ``unacked_index`` (tag -> time), as kombu.
Returns ``[next_due_or_empty, tag, list_number, item, ...]``; an empty tag marks an entry
that is not a kombu envelope (left unrecorded for the caller to dead-letter).

The call also leaves a receipt (its id and the tags it took) under the consumer's receipt
key: when the reply is lost (the server or the connection died just after the call ran), the
consumer reads it back and puts those messages back on their queues at once, instead of
leaving them to the visibility timeout. (A message a BRPOP took is recorded by the consumer
itself, on its ack line: see :meth:`~taskframe.brokers.redis.unacked.Unacked.record`.)"""

ACK_ONE_INTO = """
-- KEYS: unacked, unacked_index, target list. ARGV: tag ('' for none), value, push side.
if ARGV[1] ~= '' then
    if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
        redis.call('ZREM', KEYS[2], ARGV[1])
        return 0
    end
    redis.call('ZREM', KEYS[2], ARGV[1])
end
if ARGV[3] == 'left' then
    redis.call('LPUSH', KEYS[3], ARGV[2])
else
    redis.call('RPUSH', KEYS[3], ARGV[2])
end
return 1
"""
"""Settle an unacked message by moving a value into a list: requeue on reject (LPUSH, as
kombu) or park in the dead-letter list (RPUSH). Does nothing when the tag is no longer
unacked (a restore sweep already put the message back), so nothing is duplicated."""

RESTORE = """
-- KEYS: unacked, unacked_index, target lists. ARGV: tag, expected hash value, new envelope.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
    return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
for i = 3, #KEYS do
    redis.call('RPUSH', KEYS[i], ARGV[3])
end
return 1
"""
"""Restore one timed-out unacked message to the consuming end of its lists, only if it is
still the same unacked entry (compare-and-swap against a concurrent ack or sweep)."""

REPLAY = """
-- KEYS: dead-letter list. ARGV: (record, target list, envelope) triples.
local moved = 0
for i = 1, #ARGV, 3 do
    if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
        redis.call('LPUSH', ARGV[i + 1], ARGV[i + 2])
        moved = moved + 1
    end
end
return moved
"""
"""Move dead-letter records back to a queue; a record another caller replayed is skipped."""

RATE_TOKEN = """
-- KEYS: bucket hash. ARGV: rate (tokens/s), capacity. Returns seconds to wait as a string.
local rate, capacity = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1]) or capacity
local stamp = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - stamp) * rate)
local wait = 0
if tokens >= 1 then
    tokens = tokens - 1
else
    wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return tostring(wait)
"""
"""A token bucket shared by every worker, timed by the Redis server's clock."""

SET_RESULT = """
-- KEYS: result key. ARGV: encoded meta, expiry in ms (0: none).
local current = redis.call('GET', KEYS[1])
if current then
    local ok, meta = pcall(cjson.decode, current)
    if ok and type(meta) == 'table' and meta.status == 'SUCCESS' then
        return 0
    end
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
else
    redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""
"""Store a result and announce it on the channel named like the key, unless a SUCCESS is
already stored (Celery 5.7's rule, so a duplicate run cannot overwrite a success)."""

CHORD_PART = """
-- KEYS: .j, .t, .s, .d, group key, .c. ARGV: task id ('' if unknown), group index, part,
-- expiry ms (0: none). Returns 0 (counted, duplicate, or size not yet set), or the parts.
local jkey, tkey, skey, dkey, gkey, ckey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local index = ARGV[2]
if redis.call('GET', ckey) == 'done' then
    return 0
end
local size = tonumber(redis.call('GET', skey))
local seen = ARGV[1] .. ':' .. index
if redis.call('ZCOUNT', jkey, index, index) > 0 or redis.call('SISMEMBER', dkey, seen) == 1 then
    return 0
end
redis.call('ZADD', jkey, index, ARGV[3])
if ARGV[1] ~= '' then
    redis.call('SADD', dkey, seen)
end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
    for _, key in ipairs({jkey, tkey, skey, dkey, gkey}) do
        redis.call('PEXPIRE', key, ttl)
    end
end
if not size then
    return 0  -- Celery 5.7 sets .s just before its last header task: count, but wait for it
end
local total = size + (tonumber(redis.call('GET', tkey)) or 0)
if redis.call('ZCOUNT', jkey, '-inf', '+inf') < total then
    return 0
end
if not redis.call('SET', ckey, 'done', 'NX', 'EX', 300) then
    return 0
end
local parts = redis.call('ZRANGE', jkey, 0, -1)
redis.call('DEL', jkey, tkey, skey, dkey)
return parts
"""
"""Count one chord header part at most once per group index (and per Celery 5.7's ``.d``
member ``<task id>:<index>``), keyed and scored like Celery 5.4/5.7, and hand all parts in
index order to the one caller that completed the chord. Claiming ``.c`` with NX respects a
Celery worker's claim in progress; ``.c = done`` (300 s) makes late duplicates no-ops."""

CHORD_ADJUST = """
-- KEYS: .s, .t. ARGV: delta. Returns -1 when the chord was never started.
if redis.call('EXISTS', KEYS[1]) == 0 then
    return -1
end
return redis.call('INCRBY', KEYS[2], ARGV[1])
"""
"""Grow a running chord (``add_to_chord``): ``INCRBY .t``, as Celery."""


UNLOCK = """
-- KEYS: lock. ARGV: token. Deletes the lock only while it is still the caller's.
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""
"""Release ``unacked_mutex`` taken with ``SET NX PX`` (as redis-py's lock, which kombu uses)."""
