-- set_totals.lua: set users' totals on one board, each only if newer
-- (apply_totals in lib/board.lua). Used to reconcile and rebuild a board; a
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
local count = #ARGV / stride
-- Unsharded, the users' banned and shadow-banned keys are KEYS[3..] (lib/board.lua)
local flags
if not sharded then
  local pair_keys = {}
  for k = 3, #KEYS do pair_keys[k - 2] = KEYS[k] end
  flags = hidden_flags(pair_keys, count)
end
local flat, hidden = {}, {}
for i = 0, count - 1 do
  local a = stride * i + 1
  local user_id = ARGV[a]
  flat[4 * i + 1], flat[4 * i + 2] = user_id, tonumber(ARGV[a + 1])
  flat[4 * i + 3], flat[4 * i + 4] = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  if (sharded and ARGV[a + 4] == '1') or (not sharded and flags[i + 1]) then
    hidden[user_id] = true
  end
end
return apply_totals(board_key, entries_key, flat, hidden)
