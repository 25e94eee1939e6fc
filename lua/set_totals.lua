-- set_totals.lua: set users' totals on one board, each only if newer.
--
-- A board is a ZSET (score = -total, member = "<reached ms>|<user id>", see
-- scoreboard/ranking.py) plus a HASH user id -> "<version>|<member>". A total is
-- applied only when its version (the Postgres row's) is greater than the
-- stored one: replays and stale writers change nothing, and a total that went
-- down (an action removed) still applies.
--
-- KEYS[1] board ZSET   KEYS[2] board entries HASH
-- ARGV[4i+1 .. 4i+4] user id, total, reached ms, version (i from 0)
-- Returns the number of users whose entry changed.

local board_key, entries_key = KEYS[1], KEYS[2]
local changed = 0
for i = 1, #ARGV, 4 do
  local user_id, total = ARGV[i], tonumber(ARGV[i + 1])
  local reached, version = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local current = redis.call('HGET', entries_key, user_id)
  local current_version, current_member = -1, nil
  if current then
    local sep = string.find(current, '|', 1, true)
    current_version = tonumber(string.sub(current, 1, sep - 1))
    current_member = string.sub(current, sep + 1)
  end
  if version > current_version then
    local member = string.format('%013d|%s', reached, user_id)
    if current_member and current_member ~= member then
      redis.call('ZREM', board_key, current_member)
    end
    redis.call('ZADD', board_key, -total, member)
    redis.call('HSET', entries_key, user_id, version .. '|' .. member)
    changed = changed + 1
  end
end
return changed
