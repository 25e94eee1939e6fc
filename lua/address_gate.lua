-- address_gate.lua: read-only, the per-address checks of a sharded deployment.
--
-- On a cluster a player's script cannot touch an address's keys (another slot),
-- so ingest first asks this script, in the address's slot, how long the address
-- is limited for token manipulation and whether its limit would let one more
-- request through; it passes both answers to the player's script, and commits
-- the address limit (lua/rate_limit.lua) only once that script accepted. Nothing
-- is written here: a refused request changes nothing.
--
-- KEYS[1] ip rate key   KEYS[2] address-limited key
-- ARGV[1..2] ip rate (count, period ms)
--
-- Returns {address-limited ttl ms (<= 0: not limited), retry after ms (0: allowed)}.

local rate_key, limited_key = KEYS[1], KEYS[2]
local count, period = tonumber(ARGV[1]), tonumber(ARGV[2])

local ok, _, retry = gcra_check(rate_key, now_ms(), count, period, 1)
if ok then retry = 0 end
return {redis.call('PTTL', limited_key), retry}
