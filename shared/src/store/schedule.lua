-- Reconciliation: the due set of pending payments and the cluster's STK Push Query
-- budget. Runs atomically inside Redis. Touches only the two `{q}` keys below (one hash
-- slot); never a payment key, which lives in another slot under Redis Cluster.
--
-- KEYS[1]  due set   <prefix>:reconcile:{q}:due     sorted set, member = CheckoutRequestID,
--                                                   score = Unix ms when next due
-- KEYS[2]  bucket    <prefix>:reconcile:{q}:bucket  hash: tokens (float), ts (Redis ms)
-- ARGV[1]  mode: "claim" | "refund"
--
-- The bucket refills max_per_minute tokens per 60 s up to a capacity of max_per_minute,
-- measured with Redis's own clock (TIME), so the budget holds across nodes whatever
-- their clocks say. A missing bucket is full.
--
-- mode "claim":  ARGV[2] now (caller's Unix ms), ARGV[3] batch, ARGV[4] claim ttl ms,
--                ARGV[5] max_per_minute
--   Takes up to min(batch, whole tokens) members with score <= now, oldest first,
--   consumes one token for each, and claims each by moving its score to now + ttl: a
--   node that dies with a claim only delays the payment. -> the claimed members.
-- mode "refund": ARGV[2] count, ARGV[3] max_per_minute
--   Gives back tokens of claims that sent no query (capped at capacity). -> tokens now.

local function bucket(cap)
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local b = redis.call('HMGET', KEYS[2], 'tokens', 'ts')
  local tokens, ts = tonumber(b[1]), tonumber(b[2])
  if tokens == nil or ts == nil then
    tokens, ts = cap, now_ms
  end
  if now_ms > ts then
    tokens = math.min(cap, tokens + (now_ms - ts) * cap / 60000)
  end
  return math.max(0, tokens), now_ms
end

local function save(tokens, now_ms)
  redis.call('HSET', KEYS[2], 'tokens', tostring(tokens), 'ts', tostring(now_ms))
  -- A bucket left alone for a minute is full again: the same as no bucket.
  redis.call('PEXPIRE', KEYS[2], 120000)
end

if ARGV[1] == 'claim' then
  local now = tonumber(ARGV[2])
  local batch = tonumber(ARGV[3])
  local ttl = tonumber(ARGV[4])
  local cap = tonumber(ARGV[5])
  local tokens, now_ms = bucket(cap)
  local n = math.min(batch, math.floor(tokens))
  if n < 1 then
    save(tokens, now_ms)
    return {}
  end
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, n)
  local until_ms = string.format('%.0f', now + ttl)
  for _, id in ipairs(due) do
    redis.call('ZADD', KEYS[1], 'XX', until_ms, id)
  end
  save(tokens - #due, now_ms)
  return due
elseif ARGV[1] == 'refund' then
  local count = tonumber(ARGV[2])
  local cap = tonumber(ARGV[3])
  local tokens, now_ms = bucket(cap)
  tokens = math.min(cap, tokens + count)
  save(tokens, now_ms)
  return tostring(tokens)
end
return redis.error_reply('schedule.lua: unknown mode')
