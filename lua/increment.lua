-- increment.lua: accept one player increment, atomically, or refuse it unchanged.
--
-- Checks, in order, before any write: the access token is not revoked; then, if
-- the action token is already consumed and its event id is marked, this is a
-- retry of an accepted increment: answered 'replayed' with nothing written (the
-- caller returns the original 202). Then: the user is not banned, the address is
-- not limited for token manipulation (only for a user with token failures of its
-- own in the window: honest users behind the same address keep working), the
-- action token was issued to this user and is unused, the per-user limit (the
-- reduced one if the user is flagged) and the per-IP limit, the event id is
-- new. Then: consumes the action token, commits both limits, marks the event
-- id, XADDs the entry to the stream (packed: fields 'item' and 'context').
-- Last, the rapid-actions rule: more than `rapid_max` accepted within
-- `rapid_window_ms` flags the user (the reduced limit applies from the next
-- request) and records the decision on the fraud stream.
--
-- KEYS[1] action token key      (holds the user id it was issued to)
-- KEYS[2] revoked jti key       KEYS[3] banned key       KEYS[4] flagged key
-- KEYS[5] user rate key         KEYS[6] flagged-user rate key
-- KEYS[7] ip rate key           KEYS[8] mark prefix of the source (lib/marks.lua)
-- KEYS[9] stream
-- KEYS[10] address-limited key  KEYS[11] recent actions ZSET   KEYS[12] fraud stream
-- KEYS[13] the user's token-failure counter
-- ARGV[1] user id
-- ARGV[2..3] user rate (count, period ms)  ARGV[4..5] flagged rate  ARGV[6..7] ip rate
-- ARGV[8] dedup ttl ms (a mark's least life)
-- ARGV[9..15] entry: event_id, board, points, username, source, client address, request id
-- ARGV[16..18] rapid rule: max accepted in window, window ms, flag duration ms
-- ARGV[19] W3C traceparent of the caller's span ('' when tracing is off): written
--          into the entry as 'traceparent' only when given
-- ARGV[20..21] sharded only (scoreboard/keys.py): the address's limited ttl ms and
--          its IP-limit verdict (retry ms, 0 when allowed), read beforehand in the
--          address's own slot (lua/address_gate.lua); KEYS[7] and KEYS[10] are then
--          not touched (the caller commits the IP limit after an 'ok'; see
--          lib/address.lua)
--
-- Returns {'ok', stream id, accepted ms, flagged now (0/1)} or {reason, retry after ms},
-- or {'replayed', 0}, reason one of 'revoked', 'banned', 'address_limited', 'token_used', 'token_foreign',
-- 'limited_user', 'limited_ip', 'duplicate'.

local token_key, revoked_key, banned_key, flagged_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local user_rate_key, flagged_rate_key, ip_rate_key = KEYS[5], KEYS[6], KEYS[7]
local mark_prefix, stream_key = KEYS[8], KEYS[9]
local address_limited_key, recent_key, fraud_key = KEYS[10], KEYS[11], KEYS[12]
local user_failures_key = KEYS[13]

local user_id = ARGV[1]
local user_count, user_period = tonumber(ARGV[2]), tonumber(ARGV[3])
local flagged_count, flagged_period = tonumber(ARGV[4]), tonumber(ARGV[5])
local ip_count, ip_period = tonumber(ARGV[6]), tonumber(ARGV[7])
local dedup_ttl = tonumber(ARGV[8])
local event_id, board, points, username = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local source, client_addr, request_id = ARGV[13], ARGV[14], ARGV[15]
local rapid_max, rapid_window, flag_ttl = tonumber(ARGV[16]), tonumber(ARGV[17]), tonumber(ARGV[18])

-- One EXISTS for the three states that are usually absent; each is asked alone
-- only when one of them is there.
local some_state = redis.call('EXISTS', revoked_key, banned_key, flagged_key) > 0
if some_state and redis.call('EXISTS', revoked_key) == 1 then return {'revoked', 0} end
local now = now_ms()
local marks_now, marks_before, marks_ttl = mark_windows(mark_prefix, now, dedup_ttl)
local function marked()
  return redis.call('SISMEMBER', marks_now, event_id) == 1
      or redis.call('SISMEMBER', marks_before, event_id) == 1
end
local owner = redis.call('GET', token_key)
if not owner and marked() then return {'replayed', 0} end
if some_state and redis.call('EXISTS', banned_key) == 1 then return {'banned', 0} end
local lockout = address_lockout(address_limited_key, user_failures_key, ARGV[20] or '')
if lockout then return {'address_limited', lockout} end

if not owner then return {'token_used', 0} end
if owner ~= user_id then return {'token_foreign', 0} end

local limit_key, limit_count, limit_period = user_rate_key, user_count, user_period
local flagged = some_state and redis.call('EXISTS', flagged_key) == 1
if flagged then
  limit_key, limit_count, limit_period = flagged_rate_key, flagged_count, flagged_period
end
local user_ok, user_tat, user_retry = gcra_check(limit_key, now, limit_count, limit_period, 1)
if not user_ok then return {'limited_user', user_retry} end
local ip_ok, ip_tat, ip_retry = address_rate(ip_rate_key, now, ip_count, ip_period,
  ARGV[21] or '')
if not ip_ok then return {'limited_ip', ip_retry} end
if marked() then return {'duplicate', 0} end

redis.call('DEL', token_key)
gcra_commit(limit_key, now, user_tat)
if ip_tat then gcra_commit(ip_rate_key, now, ip_tat) end
redis.call('SADD', marks_now, event_id)
expire_window(marks_now, marks_ttl)
-- The entry in the packed form batch.lua writes (lib/entry.lua): two fields
-- instead of nine, cheaper for Redis to store and for the worker to read.
local item = event_id .. '\31' .. user_id .. '\31' .. board .. '\31' .. points .. '\31' .. username
local stream_id = add_entry(stream_key, item, entry_context(source, now, client_addr, request_id),
  ARGV[19] or '')

-- The rapid-actions window: its accepted increments, by time. Entries that left it
-- are trimmed once they outnumber rapid_max, and its expiry is renewed (to two
-- windows) once under one: writes not made on every call, as above.
redis.call('ZADD', recent_key, now, event_id)
local window_start = string.format('(%d', now - rapid_window)
local recent = redis.call('ZCOUNT', recent_key, window_start, '+inf')
if redis.call('ZCARD', recent_key) - recent > rapid_max then
  redis.call('ZREMRANGEBYSCORE', recent_key, '-inf', now - rapid_window)
end
if redis.call('PTTL', recent_key) < rapid_window then
  redis.call('PEXPIRE', recent_key, 2 * rapid_window)
end
local flagged_now = 0
if recent > rapid_max and not flagged then
  redis.call('SET', flagged_key, 'rapid_actions', 'PX', flag_ttl)
  redis.call('XADD', fraud_key, '*', 'rule', 'rapid_actions', 'severity', 'high',
    'action', 'flagged', 'user_id', user_id, 'client_addr', client_addr,
    'evidence', '{"accepted":' .. recent .. ',"window_ms":' .. rapid_window .. '}',
    'expires_ms', tostring(now + flag_ttl))
  flagged_now = 1
end
return {'ok', stream_id, now, flagged_now}
