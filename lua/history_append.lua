--[[
history_append: add delivery-attempt entries to an event's history (written by the
workers, src/history.rs), charged to the tenant like every other history entry.

KEYS[1] history  (LIST)  the event's history, newest first (shared/delivery.lua add_history)
KEYS[2] usage    (HASH)  the tenant's stored bytes in the event's partition (shared/usage.lua)

ARGV[1] history ttl   milliseconds the history is kept after its newest entry (0 = none)
ARGV[2] history max   entries it keeps
ARGV[3..] entries     entry JSON, oldest first

Returns the number of entries pushed.

Invariants: the entries, the trim and the charge are one step (add_history), so the
tenant's account holds exactly what the list holds, in the bucket of its expiry.
]]
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local entries = {}
for i = 3, #ARGV do entries[#entries + 1] = ARGV[i] end
add_history({key = KEYS[1], ttl_ms = tonumber(ARGV[1]), max = tonumber(ARGV[2]),
  u = {key = KEYS[2], now_ms = now_ms}}, entries)
return #entries
