-- The one place a payment's status changes. Runs atomically inside Redis.
--
-- KEYS[1]  payment hash   <prefix>:pay:{<CheckoutRequestID>}
-- KEYS[2]  its channel    <prefix>:pay:{<CheckoutRequestID>}:ch   (same hash slot)
-- ARGV[1]  mode: "pending" | "final"
--
-- Hash fields: state (STATE JSON), status, version, cbt (callback token nonce),
--              early (an outcome JSON that arrived before the pending record).
--
-- mode "pending": ARGV[2] nonce, ARGV[3] pending STATE JSON, ARGV[4] ttl seconds
--   -> {"EXISTS", state} | {"FINAL", state} (an early callback applied) | {"PENDING", state}
-- mode "final":   ARGV[2] nonce ("" = trusted source such as STK Push Query: no token
--                 check, and no early record), ARGV[3] outcome JSON, ARGV[4] ttl seconds
--   -> {"APPLIED", state, pushed amount or ""} | {"DUPLICATE", state or ""} | {"EARLY"}
--      | {"FORBIDDEN"} | {"NOT_FOUND"}
--
-- A final state is written and published in the same script, so a subscriber that
-- subscribes first and then reads can never miss it.

local function merge(state_json, outcome_json)
  local state = cjson.decode(state_json)
  local outcome = cjson.decode(outcome_json)
  for k, v in pairs(outcome) do
    if v ~= cjson.null then
      state[k] = v
    end
  end
  state['timestamp'] = outcome['completedAt']
  state['version'] = 2
  return cjson.encode(state), state['status']
end

local cur = redis.call('HMGET', KEYS[1], 'status', 'state', 'early', 'cbt')
local status, state, early, cbt = cur[1], cur[2], cur[3], cur[4]

if ARGV[1] == 'pending' then
  if status then
    return {'EXISTS', state}
  end
  if early and cbt == ARGV[2] then
    local enc, final_status = merge(ARGV[3], early)
    redis.call('HSET', KEYS[1], 'state', enc, 'status', final_status, 'version', 2, 'cbt', ARGV[2])
    redis.call('HDEL', KEYS[1], 'early')
    redis.call('EXPIRE', KEYS[1], ARGV[4])
    redis.call('PUBLISH', KEYS[2], enc)
    return {'FINAL', enc}
  end
  redis.call('HSET', KEYS[1], 'state', ARGV[3], 'status', 'PENDING', 'version', 1, 'cbt', ARGV[2])
  redis.call('HDEL', KEYS[1], 'early')
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return {'PENDING', ARGV[3]}
end

if ARGV[1] == 'final' then
  if ARGV[2] ~= '' and cbt and cbt ~= ARGV[2] then
    return {'FORBIDDEN'}
  end
  if not status then
    if ARGV[2] == '' then
      return {'NOT_FOUND'}
    end
    if early then
      return {'DUPLICATE', ''}
    end
    redis.call('HSET', KEYS[1], 'early', ARGV[3], 'cbt', ARGV[2])
    redis.call('EXPIRE', KEYS[1], ARGV[4])
    return {'EARLY'}
  end
  if status ~= 'PENDING' then
    return {'DUPLICATE', state}
  end
  local pushed = cjson.decode(state)['amount']
  if type(pushed) ~= 'number' then
    pushed = ''
  else
    pushed = tostring(pushed)
  end
  local enc, final_status = merge(state, ARGV[3])
  redis.call('HSET', KEYS[1], 'state', enc, 'status', final_status, 'version', 2)
  redis.call('PUBLISH', KEYS[2], enc)
  return {'APPLIED', enc, pushed}
end

return redis.error_reply('payment.lua: unknown mode')
