-- rate_limit.lua: one GCRA limit, checked and committed atomically.
--
-- KEYS[1] rate key   ARGV[1..2] rate (count, period ms)   ARGV[3] cost
-- Returns {1, 0} when allowed (and committed), {0, retry after ms} when not.

local rate_key = KEYS[1]
local count, period, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])

local now = now_ms()
local ok, tat, retry = gcra_check(rate_key, now, count, period, cost)
if not ok then return {0, retry} end
gcra_commit(rate_key, now, tat)
return {1, 0}
