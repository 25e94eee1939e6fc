-- backend_gate.lua: read-only, a game backend's checks before a sharded batch.
--
-- On a cluster a backend's batch is split by player shard (each part one
-- lua/batch.lua call in its shard's slot); the checks of the backend itself run
-- first, here, in the backend's own slot: its access token is not revoked, its
-- account not banned, and its limit would let the batch's increments through.
-- Nothing is written: the caller charges the limit with the increments the
-- parts accepted (lua/rate_limit.lua).
--
-- KEYS[1] revoked jti key   KEYS[2] backend rate key   KEYS[3] banned key of the backend
-- ARGV[1..2] backend rate (count, period ms)   ARGV[3] cost (the batch's increments)
--
-- Returns {'ok', 0} or {reason, retry after ms}, reason one of 'revoked', 'banned',
-- 'limited_backend'.

local revoked_key, rate_key, banned_key = KEYS[1], KEYS[2], KEYS[3]
local count, period, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])

if redis.call('EXISTS', revoked_key) == 1 then return {'revoked', 0} end
if redis.call('EXISTS', banned_key) == 1 then return {'banned', 0} end
if cost > 0 then
  local ok, _, retry = gcra_check(rate_key, now_ms(), count, period, cost)
  if not ok then return {'limited_backend', retry} end
end
return {'ok', 0}
