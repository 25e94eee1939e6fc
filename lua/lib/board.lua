-- board.lua: compare-and-set of users' totals on one board, and which users are
-- hidden (banned or shadow-banned), shared by set_totals.lua and apply_batch.lua
-- (scoreboard/lua.py prepends it to them, after lib/chunks.lua, whose `chunked`
-- and `existing` it uses).
--
-- A board is a ZSET (score = -total, member = "<reached ms>|<user id>", see
-- scoreboard/ranking.py) plus a HASH user id -> "<version>|<member>". A total is
-- applied only when its version (the Postgres row's) is greater than the
-- stored one: replays and stale writers change nothing, and a total that went
-- down (an action removed) still applies. A hidden (banned or shadow-banned)
-- user is kept off the board, and taken off it if there.
--
-- All the totals of one board go in a few calls (one HMGET, ZREM, ZADD, HSET
-- and HDEL per chunk) rather than four or five per total: each redis.call
-- costs more than the command it runs, and one per total made a worker's
-- batch of 1,000 totals take about 23 ms of Redis (BENCHMARKS.md, "Worker").

-- `flat`: each total as four values in a row (user id, total, reached ms,
-- version; numbers as numbers), rather than a table per total: the tables (one
-- from cjson per total, one more to split them by board) were a fifth of a
-- worker's batch in this script. `hidden`: user id -> true for a banned or
-- shadow-banned user. A user listed twice keeps the newer version (what
-- applying them one by one would leave). Returns how many users' entries
-- changed.
local function apply_totals(board_key, entries_key, flat, hidden)
  local users, at_value, at_user = {}, {}, {}
  for a = 1, #flat, 4 do
    local user_id = flat[a]
    local seen = at_user[user_id]
    if not seen then
      seen = #users + 1
      users[seen] = user_id
      at_user[user_id] = seen
      at_value[seen] = a
    elseif flat[a + 3] > flat[at_value[seen] + 3] then
      at_value[seen] = a
    end
  end
  local n = #users
  if n == 0 then return 0 end
  local stored = {}
  for first = 1, n, CHUNK do
    local last = math.min(n, first + CHUNK - 1)
    local got = redis.call('HMGET', entries_key, unpack(users, first, last))
    for j = 1, last - first + 1 do stored[first + j - 1] = got[j] end
  end
  local find, sub, format = string.find, string.sub, string.format
  local removed, added, entries, dropped = {}, {}, {}, {}
  local changed = 0
  for i = 1, n do
    local user_id, a = users[i], at_value[i]
    local current = stored[i]
    local current_version, current_member = -1, nil
    if current then
      local sep = find(current, '|', 1, true)
      current_version = tonumber(sub(current, 1, sep - 1))
      current_member = sub(current, sep + 1)
    end
    if hidden[user_id] then
      if current_member then
        removed[#removed + 1] = current_member
        dropped[#dropped + 1] = user_id
        changed = changed + 1
      end
    elseif flat[a + 3] > current_version then
      local total, version = flat[a + 1], flat[a + 3]
      local member = format('%013d|%s', flat[a + 2], user_id)
      -- (a total down to 0 leaves the board even when its member is unchanged)
      if current_member and (current_member ~= member or total <= 0) then
        removed[#removed + 1] = current_member
      end
      if total > 0 then
        added[#added + 1] = -total
        added[#added + 1] = member
        entries[#entries + 1] = user_id
        entries[#entries + 1] = format('%d|%s', version, member)
      else
        dropped[#dropped + 1] = user_id
      end
      changed = changed + 1
    end
  end
  -- Members are "<reached>|<user id>": one user's old member is never another's
  -- new one, so removing all before adding all is the same as one by one.
  chunked('ZREM', board_key, removed, 1)
  chunked('ZADD', board_key, added, 2)
  chunked('HSET', entries_key, entries, 2)
  chunked('HDEL', entries_key, dropped, 1)
  return changed
end

-- Whether each of n users is hidden (banned or shadow-banned): `pair_keys` holds
-- user i's two keys at 2i - 1 and 2i. One EXISTS over all of them answers the
-- usual batch (nobody hidden); only when it counts more than 0 is each user
-- asked alone.
local function hidden_flags(pair_keys, n)
  local flags = {}
  local any = n > 0 and existing(pair_keys) > 0
  for i = 1, n do
    flags[i] = any and redis.call('EXISTS', pair_keys[2 * i - 1], pair_keys[2 * i]) > 0
  end
  return flags
end
