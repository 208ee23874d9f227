-- Appends history entries from outside payment.lua (reconciliation's queries, webhook
-- attempts): see shared/src/history.rs for the entry format and the bound.
--
-- KEYS[1]  payment hash  <prefix>:pay:{<CheckoutRequestID>}
-- KEYS[2]  its history   <prefix>:pay:{<CheckoutRequestID>}:hist (same hash slot)
-- ARGV[1]  most entries the list may hold before `final` entries' reserved places
-- ARGV[2…] the entries (JSON, already stamped with `at`)
--   -> 1 when appended (or counted in `histDropped`), 0 when the payment is gone
--
-- Nothing is written for a payment that no longer exists (the list would outlive it).
-- The list takes the payment hash's remaining TTL.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local room = tonumber(ARGV[1])
for i = 2, #ARGV do
  if redis.call('LLEN', KEYS[2]) < room then
    redis.call('RPUSH', KEYS[2], ARGV[i])
  else
    redis.call('HINCRBY', KEYS[1], 'histDropped', 1)
  end
end
local pttl = redis.call('PTTL', KEYS[1])
if pttl > 0 then
  redis.call('PEXPIRE', KEYS[2], pttl)
end
return 1
