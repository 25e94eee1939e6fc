-- entry.lua: a stream entry in the packed form of scoreboard/stream_entry.py,
-- shared by increment.lua and batch.lua (scoreboard/lua.py prepends it).
-- 'item' is event_id \31 user_id \31 board \31 points \31 username (batch.lua
-- receives it packed by ingest); 'context' is what every entry of one call
-- shares: source \31 ts \31 ip \31 request_id.

local function entry_context(source, now, client_addr, request_id)
  return source .. '\31' .. tostring(now) .. '\31' .. client_addr .. '\31' .. request_id
end

-- XADDs one entry (with 'traceparent' only when given); returns its stream id.
local function add_entry(stream_key, item, context, traceparent)
  if traceparent ~= '' then
    return redis.call('XADD', stream_key, '*', 'item', item, 'context', context,
      'traceparent', traceparent)
  end
  return redis.call('XADD', stream_key, '*', 'item', item, 'context', context)
end
