--[[
cancel: cancel a run in one partition: tombstone it, drop its waiters and saved notifications,
in bounded batches.

Called repeatedly per partition: first with no event keys (sets the tombstone so no new
wait or lookback notify of the run is accepted, returns up to ARGV[5] of the run's event
ids), then with the keys of those events (removes their state, at most ARGV[4] waiters per
call), until no event is returned. The tombstone closes the race with a concurrent wait;
every call sets it again.

KEYS[1] run events     (SET)    event ids the run has state for in this partition
KEYS[2] deadlines      (ZSET)   member "<tenant>|<field>|<eventId>"
KEYS[3] cancelled      (STRING) tombstone of the run
KEYS[4] waiter count   (STRING) the tenant's waiters registered in this partition
KEYS[5..] triples: event waiters (HASH), event runs (ZSET), saved (LIST), one triple per
          ARGV event id

ARGV[1] tenant
ARGV[2] run id
ARGV[3] tombstone ttl   milliseconds
ARGV[4] max waiters     most waiters removed by this call
ARGV[5] max events      most event ids returned
ARGV[6..] event ids matching the KEYS triples

Returns {waitersRemoved, savedRemoved, eventId1, eventId2, ...} where the event ids are up
to ARGV[5] of the run's events with state left in this partition (none: done).

Invariants: the waiters removed leave the event hash, the run index, the deadline set and
the tenant's count (KEYS[4]) in the same script. An event leaves the run's set only once
all of the run's waiters on it are gone (its saved list goes with it), so a later call
finds what an earlier one had no budget for. Work per call: O(ARGV[4] + ARGV[5]) waiters
and events plus the saved lists dropped (each at most `saved_per_run_event` items).
]]
local rcall = redis.call
local run_key, deadlines_key, cancelled_key, count_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local tenant, run, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local budget, max_events = tonumber(ARGV[4]), tonumber(ARGV[5])

rcall('SET', cancelled_key, '1', 'PX', ttl)
local waiters, saved = 0, 0
for i = 6, #ARGV do
  if budget <= 0 then break end
  local event = ARGV[i]
  local base = 5 + (i - 6) * 3
  local ev_key, runs_key, saved_key = KEYS[base], KEYS[base + 1], KEYS[base + 2]
  local fields = rcall('ZRANGEBYLEX', runs_key, '[' .. run .. '|', '(' .. run .. '}',
    'LIMIT', 0, budget)
  if #fields > 0 then
    local removed = rcall('HDEL', ev_key, unpack(fields))
    rcall('ZREM', runs_key, unpack(fields))
    local members = {}
    for j = 1, #fields do members[j] = tenant .. '|' .. fields[j] .. '|' .. event end
    rcall('ZREM', deadlines_key, unpack(members))
    waiters = waiters + removed
    budget = budget - #fields
  end
  if budget > 0 then
    -- Every waiter of the run on this event is gone: drop its saved list and the event.
    saved = saved + rcall('LLEN', saved_key)
    rcall('UNLINK', saved_key)
    rcall('SREM', run_key, event)
  end
end
count_waiters(count_key, -waiters)
local out = {waiters, saved}
local rest = rcall('SRANDMEMBER', run_key, max_events)
for i = 1, #rest do out[#out + 1] = rest[i] end
return out
