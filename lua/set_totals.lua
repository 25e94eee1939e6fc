-- set_totals.lua: set users' totals on one board, each only if newer.
--
-- A board is a ZSET (score = -total, member = "<reached ms>|<user id>", see
-- scoreboard/ranking.py) plus a HASH user id -> "<version>|<member>". A total is
-- applied only when its version (the Postgres row's) is greater than the
-- stored one: replays and stale writers change nothing, and a total that went
-- down (an action removed) still applies. A banned or shadow-banned user is
-- kept off the board (and taken off it if there).
--
-- KEYS[1] board ZSET   KEYS[2] board entries HASH
-- KEYS[3 + 2i], KEYS[4 + 2i] banned and shadow-banned keys of user i (i from 0)
-- ARGV[4i+1 .. 4i+4] user id, total, reached ms, version
-- Returns the number of users whose entry changed.

local board_key, entries_key = KEYS[1], KEYS[2]
local changed = 0
for i = 0, #ARGV / 4 - 1 do
  local a = 4 * i + 1
  local user_id, total = ARGV[a], tonumber(ARGV[a + 1])
  local reached, version = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local hidden = redis.call('EXISTS', KEYS[3 + 2 * i], KEYS[4 + 2 * i]) > 0
  local current = redis.call('HGET', entries_key, user_id)
  local current_version, current_member = -1, nil
  if current then
    local sep = string.find(current, '|', 1, true)
    current_version = tonumber(string.sub(current, 1, sep - 1))
    current_member = string.sub(current, sep + 1)
  end
  if hidden then
    if current_member then
      redis.call('ZREM', board_key, current_member)
      redis.call('HDEL', entries_key, user_id)
      changed = changed + 1
    end
  elseif version > current_version then
    local member = string.format('%013d|%s', reached, user_id)
    if current_member and current_member ~= member then
      redis.call('ZREM', board_key, current_member)
    end
    if total > 0 then
      redis.call('ZADD', board_key, -total, member)
      redis.call('HSET', entries_key, user_id, version .. '|' .. member)
    else
      redis.call('HDEL', entries_key, user_id)
    end
    changed = changed + 1
  end
end
return changed
