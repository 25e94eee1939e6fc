-- watch_ranks.lua: where each watched player stands on a board, in one round trip.
--
-- For every user id: whether the player is known (has a display name, i.e. has
-- scored on some board), their 0-based position, and the rows right above, at
-- and right below them (ZRANGE order: see scoreboard/ranking.py), each with the
-- number of entries with a strictly higher total (its competition rank - 1).
-- One call reads all the watched players of a board for one broadcaster tick,
-- consistently with the board's revision. Read-only.
--
-- The counts cost one ZCOUNT per player and one more when the row above has a
-- different total: a row tied with the player shares their count, and the row
-- below with a lower total has every row up to the player above it.
--
-- KEYS[1] board ZSET   KEYS[2] board entries HASH   KEYS[3] revision   KEYS[4] usernames HASH
-- ARGV[1..n] user ids
-- Returns {revision, reply1, reply2, ...}; each reply is
-- {known (0/1), position (-1 when not on the board), user_id1, total1, name1, higher1, ...}
-- with the rows from position - 1 to position + 1 that exist.

local board_key, entries_key, revision_key, names_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

local result = {tonumber(redis.call('GET', revision_key) or '0')}
for i = 1, #ARGV do
  local user_id = ARGV[i]
  local reply = {redis.call('HEXISTS', names_key, user_id), -1}
  local entry = redis.call('HGET', entries_key, user_id)
  local position = nil
  if entry then
    position = redis.call('ZRANK', board_key, string.sub(entry, string.find(entry, '|', 1, true) + 1))
  end
  if position then
    reply[2] = position
    local first = position > 0 and position - 1 or 0
    local rows = redis.call('ZRANGE', board_key, first, position + 1, 'WITHSCORES')
    local own = position - first  -- the player's row, 0-based
    local own_score = rows[2 * own + 2]
    local own_higher = redis.call('ZCOUNT', board_key, '-inf', '(' .. own_score)
    for r = 1, #rows, 2 do
      local row_index, member, score = (r - 1) / 2, rows[r], rows[r + 1]
      local higher = own_higher
      if score ~= own_score then
        if row_index > own then
          higher = position + 1
        else
          higher = redis.call('ZCOUNT', board_key, '-inf', '(' .. score)
        end
      end
      local row_user = string.sub(member, string.find(member, '|', 1, true) + 1)
      reply[#reply + 1] = row_user
      reply[#reply + 1] = -tonumber(score)
      reply[#reply + 1] = redis.call('HGET', names_key, row_user) or row_user
      reply[#reply + 1] = higher
    end
  end
  result[#result + 1] = reply
end
return result
