-- fraud_batch.lua: the Redis bookkeeping of the worker's per-batch cadence and
-- farm rules, for a chunk of a batch in one call. The judgement itself stays in
-- Python (scoreboard/fraud_rules.py): this only keeps the state and returns it.
--
-- Cadence: each user's latest accept times as one string ("ms,ms,..."), the
-- newest `keep` of them, living `cadence_ttl` ms. A time not after the newest
-- one kept is ignored, so a redelivered batch adds nothing. The kept times are
-- returned once there are `keep` of them.
-- Farms: per address, each account's latest accept (a ZSET, ZADD GT), accounts
-- older than `window` before the chunk's newest accept from that address
-- dropped, living `window` ms; and each account's accepts in the current window
-- (a HASH per address and fixed window, the caller names it, living two
-- windows). Both are returned once there are `min_accounts` accounts.
--
-- Tireless play: per user, the "hours" (numbers of `hour_ms` periods) with an
-- accept, a ZSET living `span` hours; returned once there are `tireless` of them
-- in the last `span` hours (`tireless` 0: off).
--
-- Top action: per user, "run,newest ms": how many accepts in a row were worth their
-- board's top price, living `top_ttl` ms; an accept not after the newest counted
-- is ignored (a redelivery). Returned once the run reaches `top_run` (0: off).
--
-- KEYS[1..U] cadence string of each user, KEYS[U+1..2U] active-hours ZSET of each
-- user, KEYS[2U+1..3U] top-run string of each user, KEYS[3U+1..3U+A] accounts ZSET
-- of each address, KEYS[3U+A+1..3U+2A] activity HASH (account -> accepts) of each
-- address's current window
-- ARGV[1] JSON (one argument: packing thousands of small ones costs the caller more
-- than the whole script costs Redis): {"keep": n, "cadence_ttl": ms, "window": ms,
--   "min_accounts": n, "users": [[ms, ...], ...] (ascending; U of them, in KEYS order),
--   "hours": [[hour, ...], ...] (U of them), "tireless": n, "span": hours, "hour_ms": ms,
--   "top": [[[ms, 1 if top price else 0], ...], ...] (U of them, ascending),
--   "top_run": n, "top_ttl": ms,
--   "addresses": [[newest ms, [[ms, user id], ...], [[user id, accepts], ...]], ...]
--   (A of them)}
--
-- Returns {cadence, farms, tireless, top}: cadence a list of {user index (from 1),
-- {ms, ...}}, tireless a list of {user index (from 1), {hour, ...}}, top a list of
-- {user index (from 1), run},
-- farms a list of {address index (from 1), {user id, latest ms, ...},
-- {user id, accepts in the window, ...}}.

local data = cjson.decode(ARGV[1])
local keep, cadence_ttl = data.keep, data.cadence_ttl
local window, min_accounts = data.window, data.min_accounts
local users = #data.users

local function zadd_args(pairs_list)
  local args = {}
  for _, pair in ipairs(pairs_list) do
    args[#args + 1] = string.format('%d', pair[1])
    args[#args + 1] = pair[2]
  end
  return args
end

local tireless = {}
if data.tireless > 0 then
  for i = 1, users do
    local key, newest = KEYS[users + i], 0
    for _, hour in ipairs(data.hours[i]) do
      redis.call('ZADD', key, hour, hour)
      if hour > newest then newest = hour end
    end
    redis.call('ZREMRANGEBYSCORE', key, '-inf', newest - data.span)
    redis.call('PEXPIRE', key, data.span * data.hour_ms)
    if redis.call('ZCARD', key) >= data.tireless then
      tireless[#tireless + 1] = {i, redis.call('ZRANGE', key, 0, -1)}
    end
  end
end

local top = {}
if data.top_run > 0 then
  for i = 1, users do
    local key = KEYS[2 * users + i]
    local run, newest = 0, -1
    local stored = redis.call('GET', key)
    if stored then
      local r, n = string.match(stored, '^(%d+),(%d+)$')
      run, newest = tonumber(r), tonumber(n)
    end
    for _, accept in ipairs(data.top[i]) do
      if accept[1] > newest then
        if accept[2] == 1 then run = run + 1 else run = 0 end
        newest = accept[1]
      end
    end
    redis.call('SET', key, string.format('%d,%d', run, newest), 'PX', data.top_ttl)
    if run >= data.top_run then top[#top + 1] = {i, run} end
  end
end

local cadence = {}
for i = 1, (keep > 0 and users or 0) do
  local key = KEYS[i]
  local times = {}
  local stored = redis.call('GET', key)
  if stored then
    for t in string.gmatch(stored, '%d+') do times[#times + 1] = tonumber(t) end
  end
  local newest = times[#times] or -1
  for _, t in ipairs(data.users[i]) do
    if t > newest then
      times[#times + 1] = t
      newest = t
    end
  end
  local kept, text = {}, {}
  for j = math.max(1, #times - keep + 1), #times do
    kept[#kept + 1] = times[j]
    text[#text + 1] = string.format('%d', times[j])
  end
  redis.call('SET', key, table.concat(text, ','), 'PX', cadence_ttl)
  if #kept >= keep then cadence[#cadence + 1] = {i, kept} end
end

local farms = {}
local addresses = #data.addresses
for j, address in ipairs(data.addresses) do
  local key, activity_key = KEYS[3 * users + j], KEYS[3 * users + addresses + j]
  redis.call('ZADD', key, 'GT', unpack(zadd_args(address[2])))
  redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%d', address[1] - window))
  redis.call('PEXPIRE', key, window)
  for _, counted in ipairs(address[3]) do
    redis.call('HINCRBY', activity_key, counted[1], counted[2])
  end
  redis.call('PEXPIRE', activity_key, 2 * window)
  if redis.call('ZCARD', key) >= min_accounts then
    farms[#farms + 1] = {j, redis.call('ZRANGE', key, 0, -1, 'WITHSCORES'),
                         redis.call('HGETALL', activity_key)}
  end
end
return {cadence, farms, tireless, top}
