-- gcra.lua: shared prelude, prepended to every script by scoreboard/lua.py.
--
-- The same arithmetic as scoreboard/limits.py (the reference, unit-tested):
-- a rate of `count` per `period_ms` lets a burst of `count` through, then one
-- every period_ms/count. State is one number per key, the theoretical arrival
-- time (tat), in ms. Callers first CHECK every limit, and only when all pass
-- do they COMMIT, so a refused request writes nothing.

redis.replicate_commands()  -- Redis 6.2: TIME before writes needs effects replication

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Returns allowed, new_tat (to commit), retry_after_ms. The tat keeps microseconds
-- (rounded up), so rates above 1,000 a second per key are not rounded away.
local function gcra_check(key, now, count, period_ms, cost)
  local tat = tonumber(redis.call('GET', key))
  if tat == nil or tat < now then tat = now end
  local new_tat = math.ceil((tat + (period_ms / count) * cost) * 1000) / 1000
  local allow_at = new_tat - period_ms
  if allow_at > now then
    return false, tat, math.ceil(allow_at - now)
  end
  return true, new_tat, 0
end

local function gcra_commit(key, now, new_tat)
  redis.call('SET', key, string.format('%.3f', new_tat), 'PX',
    math.max(1, math.ceil(new_tat - now)))
end
