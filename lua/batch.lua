-- batch.lua: accept a game backend's batch of increments, atomically.
--
-- Checks the backend's access token is not revoked, the backend account is
-- not banned, and its rate (cost: the
-- number of new increments). Each increment whose event id was seen before
-- (or earlier in this batch) counts as a duplicate; one for a banned user is
-- refused. Nothing is written unless the whole call passes its checks; then
-- each new increment marks its event id and is XADDed.
--
-- The event ids are looked up in the source's two mark windows (lib/marks.lua)
-- with one SMISMEMBER each, and the new ones marked with one SADD: a few calls
-- per batch rather than a keyed SET ... PX per increment, which was about half
-- of Redis's cost per increment (BENCHMARKS.md, "Ingest"). The usual batch has
-- no banned user: one EXISTS over all its banned keys answers that; only a
-- batch where it counts more than 0 is checked item by item. (All calls in
-- chunks, within Lua's stack.)
--
-- Redis's cost per increment is what bounds a batch (measured: about half of
-- it was receiving 2 keys and 5 arguments per increment), so an increment is
-- ONE argument, its fields joined by \31 (unit separator: no field can hold it,
-- ingest/validation.py refuses control characters), its two keys are built
-- here from two prefixes, and its stream entry carries it as is (the packed
-- form of scoreboard/stream_entry.py: fields 'item' and 'context').
--
-- Redis Cluster: the keys built here are KEYS[5] .. window and KEYS[6] ..
-- user id. KEYS[5] and KEYS[6] are declared prefixes that carry the call's hash
-- tag ({prefix}), so every key built from them hashes to the same slot as the
-- declared ones: the call stays in one slot. A sharded deployment passes the
-- prefixes of the shard's tag, one call per shard; a prefix without the tag
-- would break that.
--
-- KEYS[1] revoked jti key   KEYS[2] backend rate key   KEYS[3] stream
-- KEYS[4] banned key of the backend account
-- KEYS[5] mark prefix of this source (its windows' SETs are KEYS[5] .. window)
-- KEYS[6] banned key prefix (banned key of a user = KEYS[6] .. user id)
-- ARGV[1..2] backend rate (count, period ms)   ARGV[3] dedup ttl ms (a mark's least life)
--          count 0: one shard's part of a sharded batch (scoreboard/keys.py): the
--          backend's checks were made in its own slot (lua/backend_gate.lua) and
--          the caller charges its limit; KEYS[1], KEYS[2], KEYS[4] are not touched
-- ARGV[4] source   ARGV[5] client address   ARGV[6] request id
-- ARGV[7] W3C traceparent of the caller's span ('' when tracing is off): written
--         into each entry as 'traceparent' only when given
-- ARGV[8 + i] increment i (from 0): event_id \31 user_id \31 board \31 points \31 username
--
-- Returns {'ok', accepted, duplicates, refused event id...} or
-- {reason, retry after ms}, reason one of 'revoked', 'banned', 'limited_backend'.

local revoked_key, rate_key, stream_key, backend_banned_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local mark_prefix, banned_prefix = KEYS[5], KEYS[6]
local rate_count, rate_period = tonumber(ARGV[1]), tonumber(ARGV[2])
local dedup_ttl = tonumber(ARGV[3])
local source, client_addr, request_id, traceparent = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local FIRST = 7  -- ARGV[FIRST + i] is increment i (from 1 here)
local n = #ARGV - FIRST

local gated = rate_count == 0
if not gated and redis.call('EXISTS', revoked_key) == 1 then return {'revoked', 0} end
if not gated and redis.call('EXISTS', backend_banned_key) == 1 then return {'banned', 0} end

local find, sub = string.find, string.sub
local event_ids, banned_keys = {}, {}
for i = 1, n do
  local item = ARGV[FIRST + i]
  local after_event = find(item, '\31', 1, true)
  local after_user = find(item, '\31', after_event + 1, true)
  event_ids[i] = sub(item, 1, after_event - 1)
  banned_keys[i] = banned_prefix .. sub(item, after_event + 1, after_user - 1)
end

local now = now_ms()
local marks_now, marks_before, marks_ttl = mark_windows(mark_prefix, now, dedup_ttl)
-- marked[i]: event i is in one of the two windows
local marked = {}
for first = 1, n, CHUNK do
  local last = math.min(n, first + CHUNK - 1)
  local in_now = redis.call('SMISMEMBER', marks_now, unpack(event_ids, first, last))
  local in_before = redis.call('SMISMEMBER', marks_before, unpack(event_ids, first, last))
  for j = 1, last - first + 1 do
    marked[first + j - 1] = in_now[j] == 1 or in_before[j] == 1
  end
end
local any_banned = existing(banned_keys) > 0

local fresh, refused, seen = {}, {}, {}
local duplicates = 0
for i = 1, n do
  local event_id = event_ids[i]
  if seen[event_id] or marked[i] then
    duplicates = duplicates + 1
  elseif any_banned and redis.call('EXISTS', banned_keys[i]) == 1 then
    refused[#refused + 1] = event_id
  else
    fresh[#fresh + 1] = i
  end
  seen[event_id] = true
end

local new_tat = nil
if #fresh > 0 and not gated then
  local ok, tat, retry = gcra_check(rate_key, now, rate_count, rate_period, #fresh)
  if not ok then return {'limited_backend', retry} end
  new_tat = tat
end

if new_tat then gcra_commit(rate_key, now, new_tat) end
if #fresh > 0 then
  local fresh_ids = {}
  for j, i in ipairs(fresh) do fresh_ids[j] = event_ids[i] end
  chunked('SADD', marks_now, fresh_ids, 1)
  expire_window(marks_now, marks_ttl)
end
local context = entry_context(source, now, client_addr, request_id)
for _, i in ipairs(fresh) do
  add_entry(stream_key, ARGV[FIRST + i], context, traceparent)
end
local result = {'ok', #fresh, duplicates}
for _, event_id in ipairs(refused) do result[#result + 1] = event_id end
return result
