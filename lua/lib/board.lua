-- board.lua: the compare-and-set of one user's total on one board, shared by
-- set_totals.lua and apply_batch.lua (scoreboard/lua.py prepends it to them).
--
-- A board is a ZSET (score = -total, member = "<reached ms>|<user id>", see
-- scoreboard/ranking.py) plus a HASH user id -> "<version>|<member>". A total is
-- applied only when its version (the Postgres row's) is greater than the
-- stored one: replays and stale writers change nothing, and a total that went
-- down (an action removed) still applies. A hidden (banned or shadow-banned)
-- user is kept off the board, and taken off it if there.
--
-- Returns 1 when the user's entry changed, else 0.
local function apply_total(board_key, entries_key, hidden, user_id, total, reached, version)
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
      return 1
    end
    return 0
  end
  if version <= current_version then return 0 end
  local member = string.format('%013d|%s', reached, user_id)
  -- (a total down to 0 leaves the board even when its member is unchanged)
  if current_member and (current_member ~= member or total <= 0) then
    redis.call('ZREM', board_key, current_member)
  end
  if total > 0 then
    redis.call('ZADD', board_key, -total, member)
    redis.call('HSET', entries_key, user_id, string.format('%d|%s', version, member))
  else
    redis.call('HDEL', entries_key, user_id)
  end
  return 1
end
