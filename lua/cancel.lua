--[[
cancel: cancel a run in one partition: tombstone it, drop its waiters and saved notifications,
in bounded batches.

The tombstone lives in the run's home partition only (src/store/tombstones.rs): the
caller first calls this script there with a TTL (sets the tombstone, so no new wait or
lookback notify of the run is accepted, and lists the run's events there), then, in every
partition, without one (ARGV[3] = 0: nothing is written for a run with no state there):
first with no event keys (returns up to ARGV[5] of the run's event ids), then with the
keys of those events (removes their state, at most ARGV[4] waiters per call), until no
event is returned.

KEYS[1] run events     (SET)    event ids the run has state for in this partition
KEYS[2] deadlines      (ZSET)   member "<tenant>|<field>|<eventId>"
KEYS[3] cancelled      (STRING) tombstone of the run (written only with ARGV[3] > 0: the home
                                partition's)
KEYS[4] waiter count   (STRING) the tenant's waiters registered in this partition
KEYS[5] usage          (HASH)   the tenant's stored bytes in this partition (shared/usage.lua):
                                the tombstone charged; waiters, saved lists and run-set
                                members removed released
KEYS[6..] triples: event waiters (HASH), event runs (ZSET), saved (LIST), one triple per
          ARGV event id

ARGV[1] tenant
ARGV[2] run id
ARGV[3] tombstone ttl   milliseconds; 0 = sweep only, no tombstone
ARGV[4] max waiters     most waiters removed by this call
ARGV[5] max events      most event ids returned
ARGV[6..] event ids matching the KEYS triples

Returns {waitersRemoved, savedRemoved (not expired yet), eventId1, eventId2, ...} where the event ids are up
to ARGV[5] of the run's events with state left in this partition (none: done).

Invariants: the waiters removed leave the event hash, the run index, the deadline set and
the tenant's count (KEYS[4]) and stored bytes (KEYS[5]) in the same script. An event leaves the run's set only once
all of the run's waiters on it are gone (its saved list goes with it), so a later call
finds what an earlier one had no budget for. Work per call: O(ARGV[4] + ARGV[5]) waiters
and events plus the saved lists dropped (each at most `saved_per_run_event` items).
]]
local rcall = redis.call
local run_key, deadlines_key, cancelled_key, count_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local tenant, run, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local budget, max_events = tonumber(ARGV[4]), tonumber(ARGV[5])
local t = rcall('TIME')
local u = {key = KEYS[5], now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)}

-- The tombstone is charged once, when written, to the bucket its expiry falls in (each
-- call sets it again for the full TTL: it may then outlive that bucket by the time the
-- cancel takes, uncounted).
if ttl > 0 and rcall('SET', cancelled_key, '1', 'PX', ttl, 'GET') == false then
  usage_add(u, usage_end(u.now_ms, ttl), #cancelled_key + 1 + ITEM)
end
local run_end = math.floor(rcall('PEXPIRETIME', run_key) / 1000)
local released = 0
local waiters, saved = 0, 0
for i = 6, #ARGV do
  if budget <= 0 then break end
  local event = ARGV[i]
  local base = 6 + (i - 6) * 3
  local ev_key, runs_key, saved_key = KEYS[base], KEYS[base + 1], KEYS[base + 2]
  local fields = rcall('ZRANGEBYLEX', runs_key, '[' .. run .. '|', '(' .. run .. '}',
    'LIMIT', 0, budget)
  if #fields > 0 then
    local found = rcall('HMGET', ev_key, unpack(fields))
    for j = 1, #fields do
      if found[j] then released = released + waiter_bytes(tenant, event, fields[j], found[j]) end
    end
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
    local items = rcall('LRANGE', saved_key, 0, -1)
    if #items > 0 then
      usage_add(u, math.floor(rcall('PEXPIRETIME', saved_key) / 1000), -list_bytes(items))
    end
    -- Counted: the items not expired yet (an expired one may outlive its time in the
    -- list until the list's own expiry, the end of its usage bucket).
    for _, item in ipairs(items) do
      local expires = tonumber(string.match(item, '^(%d+)\n'))
      if expires and expires > u.now_ms then saved = saved + 1 end
    end
    rcall('UNLINK', saved_key)
    if rcall('SREM', run_key, event) == 1 and run_end > 0 then
      usage_add(u, run_end, -RUN_MEMBER)
    end
  end
end
count_waiters(count_key, -waiters)
usage_add(u, 'L', -released)
local out = {waiters, saved}
local rest = rcall('SRANDMEMBER', run_key, max_events)
for i = 1, #rest do out[#out + 1] = rest[i] end
return out
