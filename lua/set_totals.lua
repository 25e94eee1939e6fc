-- set_totals.lua: set users' totals on one board, each only if newer
-- (apply_total in lib/board.lua). Used to reconcile and rebuild a board; a
-- worker's batch goes through apply_batch.lua.
--
-- KEYS[1] board ZSET   KEYS[2] board entries HASH
-- KEYS[3 + 2i], KEYS[4 + 2i] banned and shadow-banned keys of user i (i from 0)
-- ARGV[4i+1 .. 4i+4] user id, total, reached ms, version
-- Returns the number of users whose entry changed.

local board_key, entries_key = KEYS[1], KEYS[2]
local changed = 0
for i = 0, #ARGV / 4 - 1 do
  local a = 4 * i + 1
  local hidden = redis.call('EXISTS', KEYS[3 + 2 * i], KEYS[4 + 2 * i]) > 0
  changed = changed + apply_total(board_key, entries_key, hidden, ARGV[a], tonumber(ARGV[a + 1]),
                                  tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]))
end
return changed
