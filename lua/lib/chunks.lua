-- chunks.lua: commands over long lists, a bounded number of values per call
-- (scoreboard/lua.py prepends it to the scripts that send them: batch.lua,
-- apply_batch.lua, set_totals.lua through lib/board.lua).

local CHUNK = 500  -- values per unpack(), well inside Lua's C stack

-- Run `command key` over `values` (a flat list), CHUNK at a time; `step` keeps
-- pairs together.
local function chunked(command, key, values, step)
  local size = CHUNK * step
  for first = 1, #values, size do
    redis.call(command, key, unpack(values, first, math.min(#values, first + size - 1)))
  end
end

-- How many of `keys` exist (a key listed twice counts twice).
local function existing(keys)
  local found = 0
  for first = 1, #keys, CHUNK do
    found = found + redis.call('EXISTS', unpack(keys, first, math.min(#keys, first + CHUNK - 1)))
  end
  return found
end
