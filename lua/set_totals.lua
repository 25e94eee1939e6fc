-- set_totals.lua: set users' totals on one board, each only if newer
-- (apply_total in lib/board.lua). Used to reconcile and rebuild a board; a
-- worker's batch goes through apply_batch.lua.
--
-- KEYS[1] board ZSET   KEYS[2] board entries HASH
-- KEYS[3 + 2i], KEYS[4 + 2i] banned and shadow-banned keys of user i (i from 0)
-- ARGV[4i+1 .. 4i+4] user id, total, reached ms, version
-- Sharded (scoreboard/keys.py: the bans are in the players' slots), only KEYS[1..2]
-- are passed and each user has a fifth argument: ARGV[5i+1 .. 5i+5] user id, total,
-- reached ms, version, hidden ('1' when banned or shadow-banned, read beforehand)
-- Returns the number of users whose entry changed.

local board_key, entries_key = KEYS[1], KEYS[2]
local sharded = #KEYS == 2
local stride = sharded and 5 or 4
local changed = 0
for i = 0, #ARGV / stride - 1 do
  local a = stride * i + 1
  local hidden
  if sharded then hidden = ARGV[a + 4] == '1'
  else hidden = redis.call('EXISTS', KEYS[3 + 2 * i], KEYS[4 + 2 * i]) > 0 end
  changed = changed + apply_total(board_key, entries_key, hidden, ARGV[a], tonumber(ARGV[a + 1]),
                                  tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]))
end
return changed
