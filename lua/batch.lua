-- batch.lua: accept a game backend's batch of increments, atomically.
--
-- Checks the backend's access token is not revoked, the backend account is
-- not banned, and its rate (cost: the
-- number of new increments). Each increment whose event id was seen before
-- (or earlier in this batch) counts as a duplicate; one for a banned user is
-- refused. Nothing is written unless the whole call passes its checks; then
-- each new increment marks its event id and is XADDed.
--
-- The usual batch has no duplicate and no banned user: one EXISTS over all its
-- event keys and one over all its banned keys (in chunks, within Lua's stack)
-- answer that with two calls instead of two per increment, which was a third
-- of Redis's CPU per batched increment; only a batch where either counts more
-- than 0 is checked item by item.
--
-- KEYS[1] revoked jti key   KEYS[2] backend rate key   KEYS[3] stream
-- KEYS[4] banned key of the backend account
-- KEYS[5 + 2i], KEYS[6 + 2i] event id key and banned key of increment i (i from 0)
-- ARGV[1..2] backend rate (count, period ms)   ARGV[3] dedup ttl ms
--          count 0: one shard's part of a sharded batch (scoreboard/keys.py): the
--          backend's checks were made in its own slot (lua/backend_gate.lua) and
--          the caller charges its limit; KEYS[1], KEYS[2], KEYS[4] are not touched
-- ARGV[4] source   ARGV[5] client address   ARGV[6] request id
-- ARGV[7] W3C traceparent of the caller's span ('' when tracing is off): written
--         into each entry as 'traceparent' only when given
-- ARGV[8 + 5i .. 12 + 5i] increment i: event_id, user_id, board, points, username
--
-- Returns {'ok', accepted, duplicates, refused event id...} or
-- {reason, retry after ms}, reason one of 'revoked', 'banned', 'limited_backend'.

local revoked_key, rate_key, stream_key, backend_banned_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rate_count, rate_period = tonumber(ARGV[1]), tonumber(ARGV[2])
local dedup_ttl = tonumber(ARGV[3])
local source, client_addr, request_id, traceparent = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local n = (#KEYS - 4) / 2

local gated = rate_count == 0
if not gated and redis.call('EXISTS', revoked_key) == 1 then return {'revoked', 0} end
if not gated and redis.call('EXISTS', backend_banned_key) == 1 then return {'banned', 0} end

-- How many of KEYS[first], KEYS[first + 2], ... exist (a key listed twice counts twice).
local CHUNK = 500
local function existing(first)
  local found, chunk = 0, {}
  for i = 0, n - 1 do
    chunk[#chunk + 1] = KEYS[first + 2 * i]
    if #chunk == CHUNK or i == n - 1 then
      found = found + redis.call('EXISTS', unpack(chunk))
      chunk = {}
    end
  end
  return found
end

local fresh, refused, seen = {}, {}, {}
local duplicates = 0
local per_item = existing(5) > 0 or existing(6) > 0
for i = 0, n - 1 do
  local event_key, banned_key = KEYS[5 + 2 * i], KEYS[6 + 2 * i]
  if seen[event_key] or (per_item and redis.call('EXISTS', event_key) == 1) then
    duplicates = duplicates + 1
  elseif per_item and redis.call('EXISTS', banned_key) == 1 then
    refused[#refused + 1] = ARGV[8 + 5 * i]
  else
    fresh[#fresh + 1] = i
  end
  seen[event_key] = true
end

local now = now_ms()
local new_tat = nil
if #fresh > 0 and not gated then
  local ok, tat, retry = gcra_check(rate_key, now, rate_count, rate_period, #fresh)
  if not ok then return {'limited_backend', retry} end
  new_tat = tat
end

if new_tat then gcra_commit(rate_key, now, new_tat) end
local ts = tostring(now)
for _, i in ipairs(fresh) do
  local a = 8 + 5 * i
  redis.call('SET', KEYS[5 + 2 * i], '1', 'PX', dedup_ttl)
  local entry = {'event_id', ARGV[a], 'user_id', ARGV[a + 1], 'username', ARGV[a + 4],
    'board', ARGV[a + 2], 'points', ARGV[a + 3], 'source', source, 'ts', ts,
    'ip', client_addr, 'request_id', request_id}
  if traceparent ~= '' then
    entry[#entry + 1] = 'traceparent'
    entry[#entry + 1] = traceparent
  end
  redis.call('XADD', stream_key, '*', unpack(entry))
end
local result = {'ok', #fresh, duplicates}
for _, event_id in ipairs(refused) do result[#result + 1] = event_id end
return result
