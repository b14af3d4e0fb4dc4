--[[
cancel: cancel a run in one partition: tombstone it, drop its waiters and saved notifications.

Called twice per partition: first with no event keys (sets the tombstone so no new wait or
lookback notify of the run is accepted, returns the run's event ids), then with the keys
of those events (removes their state). The tombstone closes the race with a concurrent wait.

KEYS[1] run events     (SET)    event ids the run has state for in this partition
KEYS[2] deadlines      (ZSET)   member "<tenant>|<field>|<eventId>"
KEYS[3] cancelled      (STRING) tombstone of the run
KEYS[4] waiter count   (STRING) the tenant's waiters registered in this partition
KEYS[5..] pairs: event waiters (HASH), saved (LIST), one pair per ARGV event id

ARGV[1] tenant
ARGV[2] run id
ARGV[3] tombstone ttl   milliseconds
ARGV[4..] event ids matching the KEYS pairs

Returns {waitersRemoved, savedRemoved, eventId1, eventId2, ...} where the event ids are the
run's remaining events in this partition (the second call returns none).

Invariants: the waiters removed leave the tenant's count (KEYS[4]) in the same script.
]]
local rcall = redis.call
local run_key, deadlines_key, cancelled_key, count_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local tenant, run, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])

rcall('SET', cancelled_key, '1', 'PX', ttl)
local waiters, saved = 0, 0
for i = 4, #ARGV do
  local event = ARGV[i]
  local ev_key = KEYS[5 + (i - 4) * 2]
  local saved_key = KEYS[6 + (i - 4) * 2]
  local cursor = '0'
  for _ = 1, 10000 do
    local res = rcall('HSCAN', ev_key, cursor, 'MATCH', run .. '|*', 'COUNT', 1000)
    cursor = res[1]
    for j = 1, #res[2], 2 do
      local field = res[2][j]
      rcall('HDEL', ev_key, field)
      rcall('ZREM', deadlines_key, tenant .. '|' .. field .. '|' .. event)
      waiters = waiters + 1
    end
    if cursor == '0' then break end
  end
  saved = saved + rcall('LLEN', saved_key)
  rcall('DEL', saved_key)
  rcall('SREM', run_key, event)
end
count_waiters(count_key, -waiters)
local out = {waiters, saved}
local rest = rcall('SMEMBERS', run_key)
for i = 1, #rest do out[#out + 1] = rest[i] end
return out
