-- action_token.lua: record a newly issued action token, or refuse unchanged.
--
-- Checks the access token is not revoked, the user is not banned, and the
-- per-user and per-IP issue limits; then commits the limits and stores the
-- token's nonce -> user id for its lifetime (the increment script consumes it).
--
-- KEYS[1] revoked jti key   KEYS[2] banned key   KEYS[3] user rate key
-- KEYS[4] ip rate key       KEYS[5] action token key   KEYS[6] address-limited key
-- KEYS[7] the user's token-failure counter (a limited address refuses only users
--         with token failures of their own in the window)
-- ARGV[1] user id   ARGV[2..3] user rate (count, period ms)   ARGV[4..5] ip rate
-- ARGV[6] token lifetime ms
-- ARGV[7..8] sharded only: the address's limited ttl ms and IP-limit verdict (retry
--          ms, 0 when allowed) from lua/address_gate.lua; KEYS[4] and KEYS[6] are
--          then not touched (the caller commits the IP limit after an 'ok'; see
--          lib/address.lua)
--
-- Returns {'ok', 0} or {reason, retry after ms}, reason one of 'revoked',
-- 'banned', 'address_limited', 'limited_user', 'limited_ip'.

local revoked_key, banned_key, user_rate_key, ip_rate_key, token_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local address_limited_key, user_failures_key = KEYS[6], KEYS[7]
local user_id = ARGV[1]
local user_count, user_period = tonumber(ARGV[2]), tonumber(ARGV[3])
local ip_count, ip_period = tonumber(ARGV[4]), tonumber(ARGV[5])
local token_ttl = tonumber(ARGV[6])

if redis.call('EXISTS', revoked_key) == 1 then return {'revoked', 0} end
if redis.call('EXISTS', banned_key) == 1 then return {'banned', 0} end
local lockout = address_lockout(address_limited_key, user_failures_key, ARGV[7] or '')
if lockout then return {'address_limited', lockout} end

local now = now_ms()
local user_ok, user_tat, user_retry = gcra_check(user_rate_key, now, user_count, user_period, 1)
if not user_ok then return {'limited_user', user_retry} end
local ip_ok, ip_tat, ip_retry = address_rate(ip_rate_key, now, ip_count, ip_period, ARGV[8] or '')
if not ip_ok then return {'limited_ip', ip_retry} end

gcra_commit(user_rate_key, now, user_tat)
if ip_tat then gcra_commit(ip_rate_key, now, ip_tat) end
redis.call('SET', token_key, user_id, 'PX', token_ttl)
return {'ok', 0}
