-- apply_batch.lua: the Redis side of one persisted batch, in one call.
--
-- Sets every board's totals (apply_totals in lib/board.lua: compare-and-set on
-- the version), keeps the username map and the set of boards, bumps each
-- touched board's revision, acknowledges the batch's entries and announces
-- each board's change. One script rather than a MULTI of one script per
-- board: one round trip with no SCRIPT EXISTS before it, a few arguments
-- instead of several per total, and if Redis answers NOSCRIPT nothing at all
-- has run (in a MULTI the XACK would have gone through without the boards).
-- The users' banned keys are built here from two prefixes (as in batch.lua:
-- they carry the call's tag, so the keys are in its slot): two key names per
-- total cost the worker more to build and send than the script spends on them.
--
-- KEYS[1] stream   KEYS[2] usernames HASH   KEYS[3] boards SET
-- KEYS[4 + 3b], KEYS[5 + 3b], KEYS[6 + 3b] board b's ZSET, entries HASH and
--   revision (b from 0, in the order of the "boards" list below)
-- KEYS[f], KEYS[f + 1] banned and shadow-banned key prefixes (a user's key is
--   the prefix .. user id), f = 4 + 3 * number of boards; unsharded only
-- ARGV[1] consumer group   ARGV[2] change-notice channel
-- ARGV[3] JSON {"boards": [name, ...],
--               "totals": [[user id, total, reached ms, version, user id, ...], ...]:
--                 one flat list per board (in the order of "boards"), four values
--                 per total (lib/board.lua's apply_totals takes them so),
--               "names": [user id, username, user id, username, ...] (each user of
--                 the totals once: a user usually has a total on several boards),
--               "ack": [stream id, ...],
--               "trace": W3C traceparent (optional; tracing on),
--               "hidden": [user id, ...] (sharded only: the users of the totals
--                 who are banned or shadow-banned, read in the players' slots
--                 beforehand; the banned and shadow-banned prefixes are then not
--                 passed, "ack" is empty and KEYS[1] is not touched: the caller
--                 XACKs in the stream's slot after this call)}
--   The notice is the board's name, followed by "\n" and the traceparent when
--   there is one (board names hold no newline).
-- Returns the number of board entries that changed.

local stream_key, usernames_key, boards_key = KEYS[1], KEYS[2], KEYS[3]
local group, channel = ARGV[1], ARGV[2]
local batch = cjson.decode(ARGV[3])
local boards, totals, ack = batch.boards, batch.totals, batch.ack
local banned_prefix, shadow_prefix = KEYS[4 + 3 * #boards], KEYS[5 + 3 * #boards]
local names = batch.names

-- The hidden users. Unsharded: from their banned and shadow-banned keys, built
-- here (lib/board.lua), once per user (from "names") rather than once per total.
local hidden = {}
if batch.hidden then
  for _, user_id in ipairs(batch.hidden) do hidden[user_id] = true end
else
  local users, pair_keys = #names / 2, {}
  for u = 1, users do
    local user_id = names[2 * u - 1]
    pair_keys[2 * u - 1] = banned_prefix .. user_id
    pair_keys[2 * u] = shadow_prefix .. user_id
  end
  local flags = hidden_flags(pair_keys, users)
  for u = 1, users do
    if flags[u] then hidden[names[2 * u - 1]] = true end
  end
end
local changed = 0
for b = 0, #boards - 1 do
  changed = changed + apply_totals(KEYS[4 + 3 * b], KEYS[5 + 3 * b], totals[b + 1], hidden)
end
chunked('HSET', usernames_key, names, 2)
if #boards > 0 then redis.call('SADD', boards_key, unpack(boards)) end
for b = 0, #boards - 1 do redis.call('INCR', KEYS[6 + 3 * b]) end
for i = 1, #ack, CHUNK do
  redis.call('XACK', stream_key, group, unpack(ack, i, math.min(i + CHUNK - 1, #ack)))
end
local suffix = batch.trace and ('\n' .. batch.trace) or ''
for _, board in ipairs(boards) do redis.call('PUBLISH', channel, board .. suffix) end
return changed
