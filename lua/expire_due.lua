--[[
expire_due: time out due waiters: take each one and enqueue its timeout delivery.

The caller lists candidates (members of the deadline set with a due score); this script
re-checks every candidate against Redis TIME and the deadline set, so a waiter that was
notified meanwhile, or whose deadline is not reached by Redis' clock, is left alone.

KEYS[1] deadlines      (ZSET)   member "<tenant>|<field>|<eventId>", score deadline (ms)
KEYS[2] deliveries     (STREAM) delivery jobs of the partition
KEYS[3..] per candidate, in ARGV order, 2 keys: event waiters (HASH), and the count of
          its tenant's waiters in this partition (STRING)

ARGV[1] message id base  the i-th candidate's timeout delivery gets "<base><i>"
ARGV[2..] per candidate, 5 values: member, field, tenant, event id, trace context
          (W3C traceparent kept with the timeout delivery, "" for none)

Returns {member1, latenessMs1, member2, latenessMs2, ...} for the waiters timed out.

Invariants: ZREM decides: a waiter is timed out only if it was still in the deadline set,
and notify removes it from that set in its own atomic script, so event xor timeout (I1).
Two schedulers running this for the same candidates fire each waiter once. A waiter timed
out leaves its tenant's count in the same script.
]]
local rcall = redis.call
local deadlines_key, stream_key = KEYS[1], KEYS[2]
local msg_base = ARGV[1]
local t = rcall('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local n = (#ARGV - 1) / 5
for i = 1, n do
  local base = 1 + (i - 1) * 5
  local member, field, tenant, event = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4]
  local trace = ARGV[base + 5]
  local ev_key, count_key = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local score = rcall('ZSCORE', deadlines_key, member)
  if score and tonumber(score) <= now_ms then
    rcall('ZREM', deadlines_key, member)
    local waiter = rcall('HGET', ev_key, field)
    if waiter then
      rcall('HDEL', ev_key, field)
      count_waiters(count_key, -1)
      enqueue_delivery(stream_key, {
        msg = msg_base .. i, kind = 'timeout', tenant = tenant, event = event,
        at_ms = score, now_ms = now_ms, trace = trace, ct = 'null',
      }, waiter, '')
      out[#out + 1] = member
      out[#out + 1] = now_ms - tonumber(score)
    end
  end
end
return out
