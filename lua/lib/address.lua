-- address.lua: the client address's two verdicts (its lockout for token
-- manipulation, its rate), shared by action_token.lua and increment.lua
-- (scoreboard/lua.py prepends it to them).
--
-- Unsharded they are read here from the address's keys. Sharded
-- (scoreboard/keys.py) those keys are in another slot: ingest asks
-- lua/address_gate.lua there first and passes its two answers (`given_ttl`,
-- `given_retry`; '' when unsharded), and commits the address's rate itself
-- once the script said 'ok'.

-- Whether this user is locked out at this address: the address is limited and
-- the user has token failures of its own in the window (honest users behind the
-- same address keep working). Returns the lockout's ms left, or nil.
local function address_lockout(limited_key, failures_key, given_ttl)
  local ttl
  if given_ttl ~= '' then ttl = tonumber(given_ttl) else ttl = redis.call('PTTL', limited_key) end
  if ttl > 0 and redis.call('EXISTS', failures_key) == 1 then return ttl end
  return nil
end

-- The address's rate, checked for one more request: allowed, the tat to commit
-- (nil when sharded: the caller commits it), retry after ms.
local function address_rate(rate_key, now, count, period_ms, given_retry)
  if given_retry ~= '' then
    local retry = tonumber(given_retry)
    return retry <= 0, nil, retry
  end
  return gcra_check(rate_key, now, count, period_ms, 1)
end
