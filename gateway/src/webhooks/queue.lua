-- The webhook delivery queue. Runs atomically inside Redis (gateway/src/webhooks/queue.rs).
--
-- KEYS[1] the event stream   <prefix>:wh:{w}:stream  (payment.lua appends; group "delivery")
-- KEYS[2] the events         <prefix>:wh:{w}:events  hash: event id -> record JSON
-- KEYS[3] due                <prefix>:wh:{w}:due     zset: event id -> next attempt (ms),
--                                                     or the end of a worker's lease
-- KEYS[4] dead letters       <prefix>:wh:{w}:dead    zset: event id -> when given up (ms)
-- ARGV[1] mode
--
-- "enqueue" ARGV[2] now ms, ARGV[3] group, then per stream entry: entry id, event id,
--           record JSON. Moves entries from the stream into the queue: the record is
--           kept unless one exists, the event is due now unless queued already, and the
--           entry is acknowledged and deleted (an empty event id: a malformed entry, only
--           acknowledged and deleted). -> number of entries moved
-- "claim"   ARGV[2] now ms, ARGV[3] lease ms, ARGV[4] most. Leases due events: each is
--           due again at now + lease, so that a worker that dies mid-attempt only
--           delays it. A correction (id ending _v3) whose final (_v2) is still queued
--           is not claimed but postponed by a second. -> {event id, record JSON, ...}
--           (records gone are dropped)
-- "done"    ARGV[2] event id. Delivered: forgotten. -> 1
-- "retry"   ARGV[2] event id, ARGV[3] record JSON, ARGV[4] next attempt ms. -> 1, or 0
--           when the event is no longer queued (another worker finished it)
-- "dead"    ARGV[2] event id, ARGV[3] record JSON, ARGV[4] now ms. Given up: kept in
--           the dead letters. -> 1, or 0 when no longer queued
-- "replay"  ARGV[2] event id, ARGV[3] now ms. A dead letter is queued again, due now,
--           its attempts and age counted afresh. -> 1, or 0 when not a dead letter

local mode = ARGV[1]

if mode == 'enqueue' then
  local now = ARGV[2]
  local moved = 0
  for i = 4, #ARGV, 3 do
    local entry, id, rec = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    if id ~= '' and redis.call('HSETNX', KEYS[2], id, rec) == 1 then
      redis.call('ZADD', KEYS[3], 'NX', now, id)
    end
    redis.call('XACK', KEYS[1], ARGV[3], entry)
    redis.call('XDEL', KEYS[1], entry)
    moved = moved + 1
  end
  return moved
end

if mode == 'claim' then
  local now = tonumber(ARGV[2])
  local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
  local out = {}
  for _, id in ipairs(ids) do
    local rec = redis.call('HGET', KEYS[2], id)
    -- A correction waits while its payment's final event is still queued.
    local final = nil
    if string.sub(id, -3) == '_v3' then
      final = string.sub(id, 1, -3) .. 'v2'
    end
    if rec and final and redis.call('ZSCORE', KEYS[3], final) then
      redis.call('ZADD', KEYS[3], now + 1000, id)
    elseif rec then
      redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), id)
      out[#out + 1] = id
      out[#out + 1] = rec
    else
      redis.call('ZREM', KEYS[3], id)
    end
  end
  return out
end

if mode == 'done' then
  redis.call('ZREM', KEYS[3], ARGV[2])
  redis.call('HDEL', KEYS[2], ARGV[2])
  return 1
end

if mode == 'retry' then
  if not redis.call('ZSCORE', KEYS[3], ARGV[2]) then
    return 0
  end
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
  return 1
end

if mode == 'dead' then
  if redis.call('ZREM', KEYS[3], ARGV[2]) == 0 then
    return 0
  end
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[2])
  return 1
end

if mode == 'replay' then
  if redis.call('ZREM', KEYS[4], ARGV[2]) == 0 then
    return 0
  end
  local raw = redis.call('HGET', KEYS[2], ARGV[2])
  if not raw then
    return 0
  end
  local rec = cjson.decode(raw)
  rec['attempts'] = 0
  rec['since'] = tonumber(ARGV[3])
  redis.call('HSET', KEYS[2], ARGV[2], cjson.encode(rec))
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
  return 1
end

return redis.error_reply('queue.lua: unknown mode')
