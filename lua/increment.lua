-- increment.lua: accept one player increment, atomically, or refuse it unchanged.
--
-- Checks, in order, before any write: the access token is not revoked, the
-- user is not banned, the action token was issued to this user and is unused,
-- the per-user limit (the reduced one if the user is flagged) and the per-IP
-- limit, the event id is new. Then: consumes the action token, commits both
-- limits, marks the event id, XADDs the entry to the stream.
--
-- KEYS[1] action token key      (holds the user id it was issued to)
-- KEYS[2] revoked jti key       KEYS[3] banned key       KEYS[4] flagged key
-- KEYS[5] user rate key         KEYS[6] flagged-user rate key
-- KEYS[7] ip rate key           KEYS[8] event id key     KEYS[9] stream
-- ARGV[1] user id
-- ARGV[2..3] user rate (count, period ms)  ARGV[4..5] flagged rate  ARGV[6..7] ip rate
-- ARGV[8] dedup ttl ms
-- ARGV[9..15] entry: event_id, board, points, username, source, client address, request id
--
-- Returns {'ok', stream id, accepted ms} or {reason, retry after ms}, reason one of
-- 'revoked', 'banned', 'token_used', 'token_foreign', 'limited_user',
-- 'limited_ip', 'duplicate'.

local token_key, revoked_key, banned_key, flagged_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local user_rate_key, flagged_rate_key, ip_rate_key = KEYS[5], KEYS[6], KEYS[7]
local event_key, stream_key = KEYS[8], KEYS[9]

local user_id = ARGV[1]
local user_count, user_period = tonumber(ARGV[2]), tonumber(ARGV[3])
local flagged_count, flagged_period = tonumber(ARGV[4]), tonumber(ARGV[5])
local ip_count, ip_period = tonumber(ARGV[6]), tonumber(ARGV[7])
local dedup_ttl = tonumber(ARGV[8])
local event_id, board, points, username = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local source, client_addr, request_id = ARGV[13], ARGV[14], ARGV[15]

if redis.call('EXISTS', revoked_key) == 1 then return {'revoked', 0} end
if redis.call('EXISTS', banned_key) == 1 then return {'banned', 0} end

local owner = redis.call('GET', token_key)
if not owner then return {'token_used', 0} end
if owner ~= user_id then return {'token_foreign', 0} end

local now = now_ms()
local limit_key, limit_count, limit_period = user_rate_key, user_count, user_period
if redis.call('EXISTS', flagged_key) == 1 then
  limit_key, limit_count, limit_period = flagged_rate_key, flagged_count, flagged_period
end
local user_ok, user_tat, user_retry = gcra_check(limit_key, now, limit_count, limit_period, 1)
if not user_ok then return {'limited_user', user_retry} end
local ip_ok, ip_tat, ip_retry = gcra_check(ip_rate_key, now, ip_count, ip_period, 1)
if not ip_ok then return {'limited_ip', ip_retry} end
if redis.call('EXISTS', event_key) == 1 then return {'duplicate', 0} end

redis.call('DEL', token_key)
gcra_commit(limit_key, now, user_tat)
gcra_commit(ip_rate_key, now, ip_tat)
redis.call('SET', event_key, '1', 'PX', dedup_ttl)
local stream_id = redis.call('XADD', stream_key, '*',
  'event_id', event_id, 'user_id', user_id, 'username', username, 'board', board,
  'points', points, 'source', source, 'ts', tostring(now),
  'ip', client_addr, 'request_id', request_id)
return {'ok', stream_id, now}
