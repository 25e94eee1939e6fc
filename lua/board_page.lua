-- board_page.lua: a consistent slice of a board, in one round trip.
--
-- Reads the board's revision, the entries at positions [start, stop] (ZRANGE
-- order: see scoreboard/ranking.py), the number of entries with a strictly
-- higher total than the first one (its competition rank - 1), the board size,
-- and the display names. Read-only.
--
-- KEYS[1] board ZSET   KEYS[2] revision   KEYS[3] usernames HASH
-- ARGV[1] start   ARGV[2] stop (0-based positions, inclusive)
-- Returns {revision, size, higher_than_first, member1, zscore1, name1, member2, ...}.

local board_key, revision_key, names_key = KEYS[1], KEYS[2], KEYS[3]
local start, stop = tonumber(ARGV[1]), tonumber(ARGV[2])

local revision = tonumber(redis.call('GET', revision_key) or '0')
local size = redis.call('ZCARD', board_key)
local result = {revision, size, 0}
if start < 0 or start > stop then return result end
local slice = redis.call('ZRANGE', board_key, start, stop, 'WITHSCORES')
if #slice == 0 then return result end
result[3] = redis.call('ZCOUNT', board_key, '-inf', '(' .. slice[2])
for i = 1, #slice, 2 do
  local member = slice[i]
  local user_id = string.sub(member, string.find(member, '|', 1, true) + 1)
  result[#result + 1] = member
  result[#result + 1] = slice[i + 1]
  result[#result + 1] = redis.call('HGET', names_key, user_id) or user_id
end
return result
