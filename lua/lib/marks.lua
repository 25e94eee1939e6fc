-- marks.lua: the idempotency marks of accepted event ids, shared by increment.lua
-- and batch.lua (scoreboard/lua.py prepends it; scoreboard/dedup_marks.py is the
-- Python side and says why).
--
-- A source's marks are members of SETs, one per window of `ttl` ms, named
-- prefix .. window number. An event id is looked up in the current window and
-- the one before; a window's SET expires when the window after it ends. So a
-- mark is known for at least `ttl` and forgotten after less than 2 * `ttl`.
--
-- Returns the current window's key, the previous one's, and the ms until the
-- current window's SET may go.
local function mark_windows(prefix, now, ttl)
  local window = math.floor(now / ttl)
  return prefix .. string.format('%d', window), prefix .. string.format('%d', window - 1),
         (window + 2) * ttl - now
end

-- Gives the current window's SET its expiry once: the moment is fixed per window,
-- and a PEXPIRE on every call is a write (AOF and replication work, ~2 us each in
-- increment.lua) where the PTTL that spares it is a read.
local function expire_window(marks_now, marks_ttl)
  if redis.call('PTTL', marks_now) < 0 then redis.call('PEXPIRE', marks_now, marks_ttl) end
end
