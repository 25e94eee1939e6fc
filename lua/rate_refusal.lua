-- rate_refusal.lua: count a user's rate-limit refusal; flag the user past a threshold.
--
-- Called by ingest only when the per-user limit refused an action token or an
-- increment (a 429 'limited_user'), never on the accepted path. A client that
-- honours Retry-After collects a refusal now and then; one that hammers
-- through them collects many within the window and is flagged, i.e. held to
-- the flagged limit by the increment script, like the rapid-actions rule.
-- The counter is fixed-lifetime: it expires `window_ms` after the first
-- refusal. A user already flagged or banned is not flagged again.
--
-- KEYS[1] user refusals counter   KEYS[2] flagged key   KEYS[3] banned key
-- KEYS[4] fraud stream
-- ARGV[1] user id   ARGV[2] client address   ARGV[3] refused endpoint
-- ARGV[4] window ms   ARGV[5] refusals that flag   ARGV[6] flag duration ms
--
-- Returns {refusals in the window, flagged now (0/1)}.

local counter_key, flagged_key, banned_key, fraud_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local user_id, address, endpoint = ARGV[1], ARGV[2], ARGV[3]
local window, threshold, flag_ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])

local refusals = redis.call('INCR', counter_key)
if refusals == 1 then redis.call('PEXPIRE', counter_key, window) end
local flagged_now = 0
if refusals >= threshold and redis.call('EXISTS', flagged_key) == 0
    and redis.call('EXISTS', banned_key) == 0 then
  local now = now_ms()
  redis.call('SET', flagged_key, 'rate_hammering', 'PX', flag_ttl)
  redis.call('XADD', fraud_key, '*', 'rule', 'rate_hammering', 'severity', 'high',
    'action', 'flagged', 'user_id', user_id, 'client_addr', address,
    'evidence', '{"refusals":' .. refusals .. ',"window_ms":' .. window ..
      ',"last":"' .. endpoint .. '"}',
    'expires_ms', tostring(now + flag_ttl))
  flagged_now = 1
end
return {refusals, flagged_now}
