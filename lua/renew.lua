--[[
renew: a worker keeps the delivery entries it read but has not started yet (they wait for
one of its attempt slots): their idle time is reset, so that no other worker takes them
over as if this worker had died (`reclaim`), and no delivery is counted.

KEYS[1] deliveries (STREAM) delivery jobs of the partition; consumer group ARGV[1]

ARGV[1] consumer group
ARGV[2] consumer         the caller
ARGV[3..] entry ids the caller holds (at most one read batch)

Returns the ids still owned by ARGV[2], now idle 0. An id left out was taken over by another
consumer (this worker was cut off longer than `delivery.reclaim_idle_secs`), or is no
longer pending: the caller must not deliver it.

Invariants: only entries pending with ARGV[2] are touched (an entry another consumer took
over is never taken back); delivery counts are unchanged (XCLAIM JUSTID), so renewing never
brings an entry closer to `delivery.max_deliveries`.
]]
local rcall = redis.call
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local kept = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  if #rcall('XPENDING', stream, group, id, id, 1, consumer) == 1 then
    -- Redis 7 drops a pending id whose entry was deleted and returns nothing for it.
    if #rcall('XCLAIM', stream, group, consumer, 0, id, 'JUSTID') == 1 then
      kept[#kept + 1] = id
    end
  end
end
return kept
