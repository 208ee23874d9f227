-- The one place a payment's status changes. Runs atomically inside Redis.
--
-- KEYS[1]  payment hash   <prefix>:pay:{<CheckoutRequestID>}
-- KEYS[2]  its channel    <prefix>:pay:{<CheckoutRequestID>}:ch   (same hash slot)
-- KEYS[3]  its history  <prefix>:pay:{<CheckoutRequestID>}:hist (same hash slot)
-- KEYS[4]  optional: the webhook stream <prefix>:wh:{w}:stream. Given outside Redis
--          Cluster only (it lives in another slot); without it no event is appended.
-- ARGV[1]  mode: "pending" | "final"
--
-- Hash fields: state (STATE JSON), status, version, cbt (callback token nonce),
--   phd (keyed digest of the pushed phone), amountMismatch (what a refused callback got
--   wrong), early:<nonce> (an outcome that arrived before the pending record, one per
--   callback token nonce, never overwritten), wh (where the payment's webhook events go:
--   "*" the configured merchant.webhook_url, or the push's own URL; absent: none),
--   histDropped (history entries not kept because the list was full).
--
-- mode "pending": ARGV[2] nonce, ARGV[3] pending STATE JSON, ARGV[4] ttl seconds,
--                 ARGV[5] phone digest, ARGV[6] optional webhook target ("" or absent:
--                 none; "*": the configured URL; otherwise the push's URL), ARGV[7]
--                 history entries to append (a JSON array: the `pushed` entry)
--   -> {"PENDING", state} | {"FINAL", state} (the early callback of this nonce applied)
--      | {"PENDING_MISMATCH", state, fields} (its early callback did not match the push)
--      | {"PENDING_CONFIRM", state} (its early callback is a success awaiting confirmation)
--      | {"EXISTS", state} (already written with this nonce) | {"COLLISION"} (a record
--      bound to another nonce: two pushes got the same CheckoutRequestID)
-- mode "final":   ARGV[2] nonce ("" = trusted source such as STK Push Query: no token
--                 check, never an early record), ARGV[3] outcome JSON, ARGV[4] ttl
--                 seconds, ARGV[5] early ttl seconds, ARGV[6] binding JSON
--                 {"phd":…,"mrid":…} (what the callback says it is for; "" fields are
--                 not checked), ARGV[7] most early records kept per payment, ARGV[8]
--                 "1" when a success must be confirmed by STK Push Query first,
--                 ARGV[9] history entries to append before the decision's own (a JSON
--                 array: the `callback` entry, or a trusted source's `query_asked` and
--                 `query_answer`; "" or absent: none)
--   -> {"APPLIED", state} | {"CORRECTED", state} (version 3 after UNCONFIRMED)
--      | {"MISMATCH", fields} | {"AWAITING_CONFIRMATION"} | {"DUPLICATE", state or ""}
--      | {"EARLY"} | {"EARLY_FULL"} | {"FORBIDDEN"} | {"NOT_FOUND"}
--
-- Confirmation (`callbacks.confirm_with_query`): a success callback that passes the
-- checks is kept in the `confirm` field instead of being applied, and the caller hands
-- the payment to reconciliation. A trusted SUCCESS (STK Push Query) then applies the kept
-- callback outcome, receipt included; a trusted failure applies the failure.
--
-- A callback completes only what it was issued for: its MerchantRequestID must be the
-- push's, and a success must carry the pushed amount and, when it carries one, the
-- pushed phone. Otherwise nothing is applied: the payment stays PENDING, the mismatch is
-- recorded, and the caller hands the payment to reconciliation (STK Push Query).
--
-- A final state is written and published in the same script, so a subscriber that
-- subscribes first and then reads can never miss it. With KEYS[4] and a webhook target,
-- the same step appends the webhook event (id evt_<CheckoutRequestID>_v<version>, type
-- payment.final or payment.corrected, the target, the STATE) to the stream, so nothing
-- is published that is not also queued for the merchant's backend. A final state never changes, with
-- one exception: a genuine callback for a payment closed as UNCONFIRMED is recorded as a
-- correction, version 3, once.
--
-- History (KEYS[3], see shared/src/history.rs): the caller's entries are appended in the
-- same step as the decision, each `callback` entry with the script's `decision` (and the
-- mismatching `fields`), then a `final` entry {cause, status, reason, version} whenever a
-- final state is written. An entry without `at` is stamped with Redis's clock (TIME, in
-- Unix ms). At most HIST_MAX entries; the last HIST_FINAL_RESERVE places are only for
-- `final` entries; an entry with no room is counted in the hash's `histDropped`. Nothing
-- is appended where no record exists (NOT_FOUND). The list has the payment hash's TTL:
-- it takes it when it is made and whenever the script sets the hash's. A call writes the
-- history with one LLEN and one RPUSH at most, whatever its number of entries.

local null = cjson.null

local HIST_MAX = 64
local HIST_FINAL_RESERVE = 2
-- This call's entries, pushed in one RPUSH at the end; the list's length before them
-- (read once, when the first entry comes); entries with no room; whether this call set
-- the payment hash's TTL (then the list takes it again).
local hist_new = {}
local hist_len = nil
local hist_dropped = 0
local ttl_set = false
local hist_now = nil

local function now_ms()
  if not hist_now then
    local t = redis.call('TIME')
    hist_now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return hist_now
end

local function hist(e)
  if e['at'] == nil then
    e['at'] = now_ms()
  end
  if not hist_len then
    hist_len = redis.call('LLEN', KEYS[3])
  end
  local room = HIST_MAX - HIST_FINAL_RESERVE
  if e['type'] == 'final' then
    room = HIST_MAX
  end
  if hist_len + #hist_new < room then
    hist_new[#hist_new + 1] = cjson.encode(e)
  else
    hist_dropped = hist_dropped + 1
  end
end

-- Appends the caller's entries (the JSON array in `arg`); a `callback` entry gets the
-- decision, and with a mismatch the fields that differ.
local function note(arg, decision, bad)
  if arg == nil or arg == '' then
    return
  end
  for _, e in ipairs(cjson.decode(arg)) do
    if e['type'] == 'callback' then
      e['decision'] = decision
      if bad and bad ~= '' then
        local fields = {}
        for f in string.gmatch(bad, '[^,]+') do
          fields[#fields + 1] = f
        end
        e['fields'] = fields
      end
    end
    hist(e)
  end
end

local function present(v)
  return v ~= nil and v ~= null and v ~= ''
end

-- What a callback got wrong about the push it claims to complete: "" when nothing.
local function mismatch(state, stored_phd, outcome, binding)
  local bad = {}
  if present(binding['mrid']) and binding['mrid'] ~= state['merchantRequestId'] then
    bad[#bad + 1] = 'merchantRequestId'
  end
  if outcome['status'] == 'SUCCESS' then
    local paid, pushed = outcome['amount'], state['amount']
    if not present(paid) or not present(pushed) or tonumber(paid) ~= tonumber(pushed) then
      bad[#bad + 1] = 'amount'
    end
    if present(binding['phd']) and present(stored_phd) and binding['phd'] ~= stored_phd then
      bad[#bad + 1] = 'phone'
    end
  end
  return table.concat(bad, ',')
end

-- The transition: the state takes the outcome's result. Only a success carries receipt,
-- amount, phone and transaction date; a failure keeps the pushed amount and phone and
-- has no receipt or date.
local function merge(state, outcome, version)
  state['status'] = outcome['status']
  state['reason'] = outcome['reason'] or null
  state['resultCode'] = outcome['resultCode'] or null
  state['resultDesc'] = outcome['resultDesc'] or null
  if outcome['status'] == 'SUCCESS' then
    for _, k in ipairs({'mpesaReceiptNumber', 'amount', 'phoneNumber', 'transactionDate'}) do
      if present(outcome[k]) then
        state[k] = outcome[k]
      end
    end
  else
    state['mpesaReceiptNumber'] = null
    state['transactionDate'] = null
  end
  state['timestamp'] = outcome['completedAt']
  state['completedAt'] = outcome['completedAt']
  state['resultSource'] = outcome['resultSource'] or null
  state['version'] = version
  return cjson.encode(state)
end

-- Bound on the webhook stream: the delivery workers move entries out at once; this only
-- caps it when no worker runs.
local STREAM_MAX = '1000000'

local function publish_final(state, outcome, version, cause)
  local enc = merge(state, outcome, version)
  redis.call('HSET', KEYS[1], 'state', enc, 'status', outcome['status'], 'version', version)
  hist({type = 'final', cause = cause, status = outcome['status'],
    reason = outcome['reason'], version = version})
  redis.call('PUBLISH', KEYS[2], enc)
  if KEYS[4] then
    local wh = redis.call('HGET', KEYS[1], 'wh')
    if wh then
      local kind = 'payment.final'
      if version == 3 then
        kind = 'payment.corrected'
      end
      redis.call('XADD', KEYS[4], 'MAXLEN', '~', STREAM_MAX, '*',
        'id', 'evt_' .. state['checkoutRequestId'] .. '_v' .. version, 'type', kind,
        'url', wh, 'state', enc)
    end
  end
  return enc
end

local function early_fields()
  local out = {}
  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(f, 1, 6) == 'early:' then
      out[#out + 1] = f
    end
  end
  return out
end

local cur = redis.call('HMGET', KEYS[1], 'status', 'state', 'cbt', 'phd', 'version')
local status, state_json, cbt, phd, version = cur[1], cur[2], cur[3], cur[4], tonumber(cur[5])

local function pending_mode()
  local nonce = ARGV[2]
  if status then
    if cbt == nonce then
      return {'EXISTS', state_json}
    end
    return {'COLLISION'}
  end
  local early = redis.call('HGET', KEYS[1], 'early:' .. nonce)
  local stale = early_fields()
  if #stale > 0 then
    redis.call('HDEL', KEYS[1], unpack(stale))
  end
  redis.call('HSET', KEYS[1], 'state', ARGV[3], 'status', 'PENDING', 'version', 1,
    'cbt', nonce, 'phd', ARGV[5])
  if ARGV[6] and ARGV[6] ~= '' then
    redis.call('HSET', KEYS[1], 'wh', ARGV[6])
  end
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  ttl_set = true
  note(ARGV[7])
  if not early then
    return {'PENDING', ARGV[3]}
  end
  local e = cjson.decode(early)
  local state = cjson.decode(ARGV[3])
  local bad = mismatch(state, ARGV[5], e['o'], e['b'])
  if bad ~= '' then
    redis.call('HSET', KEYS[1], 'amountMismatch', bad)
    return {'PENDING_MISMATCH', ARGV[3], bad}
  end
  if e['c'] == '1' and e['o']['status'] == 'SUCCESS' then
    redis.call('HSET', KEYS[1], 'confirm', cjson.encode(e['o']))
    return {'PENDING_CONFIRM', ARGV[3]}
  end
  return {'FINAL', publish_final(state, e['o'], 2, 'callback')}
end

local function final_mode()
  local nonce = ARGV[2]
  local outcome = cjson.decode(ARGV[3])
  if nonce == '' then
    if not status then
      return {'NOT_FOUND'}
    end
    note(ARGV[9])
    if status ~= 'PENDING' then
      return {'DUPLICATE', state_json}
    end
    local cause = 'query'
    if outcome['reason'] == 'UNCONFIRMED' then
      cause = 'unconfirmed'
    end
    if outcome['status'] == 'SUCCESS' then
      local kept = redis.call('HGET', KEYS[1], 'confirm')
      if kept then
        outcome = cjson.decode(kept)
      end
    end
    return {'APPLIED', publish_final(cjson.decode(state_json), outcome, 2, cause)}
  end
  local binding = cjson.decode(ARGV[6])
  if not status then
    local field = 'early:' .. nonce
    if redis.call('HEXISTS', KEYS[1], field) == 1 then
      note(ARGV[9], 'duplicate')
      return {'DUPLICATE', ''}
    end
    if #early_fields() >= tonumber(ARGV[7]) then
      note(ARGV[9], 'early_full')
      return {'EARLY_FULL'}
    end
    redis.call('HSET', KEYS[1], field, cjson.encode({o = outcome, b = binding, c = ARGV[8]}))
    redis.call('EXPIRE', KEYS[1], ARGV[5])
    ttl_set = true
    note(ARGV[9], 'early')
    return {'EARLY'}
  end
  if cbt ~= nonce then
    note(ARGV[9], 'forbidden')
    return {'FORBIDDEN'}
  end
  local state = cjson.decode(state_json)
  local correcting = status == 'FAILED' and state['reason'] == 'UNCONFIRMED' and version == 2
  if status ~= 'PENDING' and not correcting then
    note(ARGV[9], 'duplicate')
    return {'DUPLICATE', state_json}
  end
  local bad = mismatch(state, phd, outcome, binding)
  if bad ~= '' then
    redis.call('HSET', KEYS[1], 'amountMismatch', bad)
    note(ARGV[9], 'mismatch', bad)
    return {'MISMATCH', bad}
  end
  if correcting then
    note(ARGV[9], 'corrected')
    return {'CORRECTED', publish_final(state, outcome, 3, 'correction')}
  end
  if ARGV[8] == '1' and outcome['status'] == 'SUCCESS' then
    redis.call('HSET', KEYS[1], 'confirm', ARGV[3])
    note(ARGV[9], 'awaiting_confirmation')
    return {'AWAITING_CONFIRMATION'}
  end
  note(ARGV[9], 'applied')
  return {'APPLIED', publish_final(state, outcome, 2, 'callback')}
end

local reply
if ARGV[1] == 'pending' then
  reply = pending_mode()
elseif ARGV[1] == 'final' then
  reply = final_mode()
else
  return redis.error_reply('payment.lua: unknown mode')
end
-- The history's writes, once per call. The list's TTL is the hash's: set when the list is
-- made and whenever this call set the hash's (a pending record, an early callback);
-- otherwise it already is.
if #hist_new > 0 then
  redis.call('RPUSH', KEYS[3], unpack(hist_new))
end
if hist_dropped > 0 then
  redis.call('HINCRBY', KEYS[1], 'histDropped', hist_dropped)
end
if (#hist_new > 0 and hist_len == 0) or ttl_set then
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl > 0 then
    redis.call('PEXPIRE', KEYS[3], pttl)
  end
end
return reply
