-- token_failure.lua: count a token-manipulation failure; flag or limit past a threshold.
--
-- Called when ingest refuses a forged, expired, foreign or replayed action
-- token (counted for the authenticated user and the address) or an invalid
-- access token (the address only: an unverified subject must never get
-- someone else banned). Counters are GCRA-free fixed-lifetime counters: they
-- expire `window_ms` after the first failure.
--
-- KEYS[1] user failures counter (may be the same as KEYS[2] when no user)
-- KEYS[2] address failures counter   KEYS[3] banned key of the user
-- KEYS[4] address-limited key        KEYS[5] fraud stream
-- KEYS[6] flagged key of the user
-- ARGV[1] user id ('' for none)   ARGV[2] address   ARGV[3] what failed (a code)
-- ARGV[4] window ms   ARGV[5] user threshold   ARGV[6] address threshold
-- ARGV[7] address limit duration ms   ARGV[8] flag duration ms
-- ARGV[9] sharded only (scoreboard/keys.py): 'user' counts the user's failure only
--         (KEYS[2], KEYS[4] not touched), 'address' the address's only and does not
--         XADD its decision (KEYS[5] not touched: the caller records it on a shard's
--         fraud stream); absent or '': both, as on a single node
--
-- Reaching the user threshold is an offence: the user is flagged here (unless
-- already flagged or banned), and the worker's recorder climbs the ladder
-- (docs/fraud.md: a second offence is a temporary ban, a third a ban), so
-- nothing jumps to a permanent ban. Limiting an address restarts its counter,
-- so it takes as many new failures, not one, to limit it again after it expires.
--
-- Returns {user failures, address failures, flagged now (0/1), limited now (0/1)}.

local user_key, address_key, banned_key, limited_key, fraud_key, flagged_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local user_id, address, failure = ARGV[1], ARGV[2], ARGV[3]
local window, user_max, address_max = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local limit_ms, flag_ms = tonumber(ARGV[7]), tonumber(ARGV[8])
local part = ARGV[9] or ''

local function count(key)
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('PEXPIRE', key, window) end
  return n
end

local user_failures, flagged_now = 0, 0
if user_id ~= '' and part ~= 'address' then
  user_failures = count(user_key)
  if user_failures >= user_max and redis.call('EXISTS', banned_key) == 0
      and redis.call('EXISTS', flagged_key) == 0 then
    redis.call('SET', flagged_key, 'token_manipulation', 'PX', flag_ms)
    redis.call('XADD', fraud_key, '*', 'rule', 'token_manipulation', 'severity', 'critical',
      'action', 'flagged', 'user_id', user_id, 'client_addr', address,
      'evidence', '{"failures":' .. user_failures .. ',"last":"' .. failure .. '"}',
      'expires_ms', tostring(now_ms() + flag_ms))
    flagged_now = 1
  end
end
if part == 'user' then return {user_failures, 0, flagged_now, 0} end
local address_failures = count(address_key)
local limited_now = 0
if address_failures >= address_max and redis.call('EXISTS', limited_key) == 0 then
  redis.call('SET', limited_key, failure, 'PX', limit_ms)
  redis.call('DEL', address_key)
  limited_now = 1
end
if limited_now == 1 and part ~= 'address' then
  redis.call('XADD', fraud_key, '*', 'rule', 'token_manipulation', 'severity', 'high',
    'action', 'address_limited', 'user_id', user_id, 'client_addr', address,
    'evidence', '{"failures":' .. address_failures .. ',"last":"' .. failure .. '"}')
end
return {user_failures, address_failures, flagged_now, limited_now}
