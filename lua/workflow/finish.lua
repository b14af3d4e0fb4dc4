--[[
workflow/finish: end a run (its last step returned, it was cancelled, or a delivery to it
failed for good), acknowledge the delivery that ended it, and enqueue what the end owes
(the failure callback, the result for an invoking parent run). One script: a run ends
exactly once, and what its end owes is enqueued by that one call only.

KEYS[1] run         (HASH)   the run record
KEYS[2] steps       (LIST)   the history (deleted: the run's pending deliveries then send
                             nothing, see src/delivery/workflow.rs)
KEYS[3] deliveries  (STREAM) delivery jobs of the run's partition
KEYS[4] usage       (HASH)   the tenant's stored bytes in the run's partition: the history
                             is released, the record's bytes move to the bucket of its
                             new expiry (see workflow/submit.lua)

ARGV[1] state       "success" | "canceled" | "failed"
ARGV[2] result      the run's return value as sent with the end ("" none)
ARGV[3] ttl         ms the ended run's record is kept (trigger de-duplication, 400 to late
                    publishes, 404 to the lazy fetch)
ARGV[4] group       consumer group of KEYS[3]
ARGV[5] entry id    the delivery to acknowledge and delete ("" none)
ARGV[6..] job, body pairs enqueued only when this call ends the run

Returns the state the run had before the call ("" when there is no such run; then
nothing is written but the acknowledgement).
]]
local rcall = redis.call
if ARGV[5] ~= '' then
  rcall('XACK', KEYS[3], ARGV[4], ARGV[5])
  rcall('XDEL', KEYS[3], ARGV[5])
end
local state = rcall('HGET', KEYS[1], 'state')
if not state then return '' end
if state ~= 'running' then return state end
local t = rcall('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
rcall('HSET', KEYS[1], 'state', ARGV[1], 'ended', tostring(now_ms))
if ARGV[2] ~= '' then rcall('HSET', KEYS[1], 'result', ARGV[2]) end
rcall('DEL', KEYS[2])
local u = {key = KEYS[4], now_ms = now_ms}
local z = rcall('HMGET', KEYS[1], 'z', 'zb', 'zs')
local held, bucket, steps = tonumber(z[1]) or 0, z[2], tonumber(z[3]) or 0
if bucket then usage_add(u, bucket, -held) end
local kept = held - steps + #ARGV[2] + 20 + ITEM
local ends = usage_end(now_ms, tonumber(ARGV[3]))
usage_add(u, ends, kept)
rcall('HSET', KEYS[1], 'z', kept, 'zb', ends, 'zs', 0)
rcall('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
for i = 6, #ARGV - 1, 2 do
  rcall('XADD', KEYS[3], '*', 'j', ARGV[i], 'b', ARGV[i + 1])
end
return state
