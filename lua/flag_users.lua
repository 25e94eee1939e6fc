-- flag_users.lua: flag users for a rule a worker decided per batch (cadence
-- regularity, farms), unless already flagged or banned, and record each
-- decision on the fraud stream exactly as the inline rules do: the worker's
-- recorder then writes the fraud_events and user_restrictions rows. Running
-- again for the same users (a redelivered batch) changes nothing while the
-- flag lasts.
--
-- KEYS[1] fraud stream, then per user i (from 1): KEYS[2i] flagged key,
--   KEYS[2i+1] banned key
-- ARGV[1] rule   ARGV[2] severity   ARGV[3] flag duration ms, then per user i:
--   ARGV[3i+1] user id, ARGV[3i+2] client address, ARGV[3i+3] evidence (JSON text)
--
-- Returns the user ids this call flagged.

local fraud_key = KEYS[1]
local rule, severity, flag_ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local flagged = {}
for i = 1, (#KEYS - 1) / 2 do
  local flagged_key, banned_key = KEYS[2 * i], KEYS[2 * i + 1]
  local user_id, address, evidence = ARGV[3 * i + 1], ARGV[3 * i + 2], ARGV[3 * i + 3]
  if redis.call('EXISTS', flagged_key) == 0 and redis.call('EXISTS', banned_key) == 0 then
    redis.call('SET', flagged_key, rule, 'PX', flag_ttl)
    redis.call('XADD', fraud_key, '*', 'rule', rule, 'severity', severity,
      'action', 'flagged', 'user_id', user_id, 'client_addr', address,
      'evidence', evidence, 'expires_ms', tostring(now + flag_ttl))
    flagged[#flagged + 1] = user_id
  end
end
return flagged
