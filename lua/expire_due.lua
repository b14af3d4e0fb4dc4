--[[
expire_due: time out due waiters: take each one and enqueue its timeout delivery.

The caller lists candidates (members of the deadline set with a due score); this script
re-checks every candidate against Redis TIME and the deadline set, so a waiter that was
notified meanwhile, or whose deadline is not reached by Redis' clock, is left alone.

KEYS[1] deadlines      (ZSET)   member "<tenant>|<field>|<eventId>", score deadline (ms)
KEYS[2] deliveries     (STREAM) delivery jobs of the partition
KEYS[3..] per candidate, in ARGV order, 5 keys: event waiters (HASH), the count of its
          tenant's waiters in this partition (STRING), the event's history (LIST), the
          event's run waiters (ZSET; a run waiter timed out leaves it), the tenant's
          stored bytes (HASH, shared/usage.lua: the waiter released, history charged)

ARGV[1] message id base  the i-th candidate's timeout delivery gets "<base><i>"
ARGV[2] history ttl      milliseconds an event's history is kept (0 = no history)
ARGV[3] history max      entries an event's history keeps
ARGV[4] time budget      microseconds after which the call examines no further candidate
                         (`redis.script_budget_us`; 0 = none; shared/delivery.lua budget_ends)
ARGV[5..] per candidate, 4 values: member, field, tenant, event id

The timeout delivery continues the trace of the waiter's registration (its stored
"traceparent"), and its "registered" and "timed_out" entries go to the event's history.

Returns {examined, member1, latenessMs1, member2, latenessMs2, ...}: how many candidates
were examined, in order (all, or fewer once the time budget was spent: the caller goes
again at once for the rest), and the waiters timed out.

Invariants: ZREM decides: a waiter is timed out only if it was still in the deadline set,
and notify removes it from that set in its own atomic script, so event xor timeout (I1).
Two schedulers running this for the same candidates fire each waiter once. A waiter timed
out leaves its tenant's count and stored bytes in the same script.
]]
local rcall = redis.call
local deadlines_key, stream_key = KEYS[1], KEYS[2]
local msg_base = ARGV[1]
local history_ttl, history_max = tonumber(ARGV[2]), tonumber(ARGV[3])
local t = rcall('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ends = budget_ends(t, tonumber(ARGV[4]))
local out = {0}
local n = (#ARGV - 4) / 4
for i = 1, n do
  if i > 1 and budget_spent(ends) then break end
  out[1] = i
  local base = 4 + (i - 1) * 4
  local member, field, tenant, event = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4]
  local k = 5 * i - 2
  local ev_key, count_key = KEYS[k], KEYS[k + 1]
  local history_key, runs_key = KEYS[k + 2], KEYS[k + 3]
  local u = {key = KEYS[k + 4], now_ms = now_ms}
  local score = rcall('ZSCORE', deadlines_key, member)
  if score and tonumber(score) <= now_ms then
    rcall('ZREM', deadlines_key, member)
    local waiter = rcall('HGET', ev_key, field)
    if waiter then
      rcall('HDEL', ev_key, field)
      if string.sub(field, 1, 1) ~= '|' then rcall('ZREM', runs_key, field) end
      count_waiters(count_key, -1)
      usage_add(u, 'L', -waiter_bytes(tenant, event, field, waiter))
      local trace = json_string(waiter, 'traceparent') or ''
      if not string.match(trace, '^%x%x%-%x+%-%x+%-%x%x$') then trace = '' end
      enqueue_delivery(stream_key, {
        field = field, msg = msg_base .. i, kind = 'timeout', tenant = tenant, event = event,
        at_ms = score, now_ms = now_ms, trace = trace, ct = 'null',
      }, waiter, '')
      local entry = waiter_fields(field, waiter, 'timeoutUrl')
      entry[#entry + 1] = 'messageId'
      entry[#entry + 1] = msg_base .. i
      entry[#entry + 1] = 'deadline'
      entry[#entry + 1] = math.floor(tonumber(score) / 1000)
      add_history({key = history_key, ttl_ms = history_ttl, max = history_max, u = u},
        {registered_entry(field, waiter), history_entry(now_ms, 'timed_out', entry)})
      out[#out + 1] = member
      out[#out + 1] = now_ms - tonumber(score)
    end
  end
end
return out
