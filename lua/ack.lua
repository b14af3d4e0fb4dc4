--[[
ack: delivery attempts succeeded (2xx): acknowledge and delete their stream entries, and
release the body each one referenced.

KEYS[1]     deliveries (STREAM) delivery jobs of the partition
KEYS[2..n]  bodies     (HASH)   the body keys the entries reference (see
                                shared/delivery.lua hold_body); none when no entry does
ARGV[1] consumer group
ARGV[2..] entries, in pairs: entry id, index into KEYS of the body key it references (0 for
          a body inline in the entry). One or more entries: a worker acknowledges what
          gathered while its previous call was in flight.

Returns how many of the entries were pending and are now gone; an entry already
acknowledged (a retried call, or another consumer finished it after reclaiming it) is
not counted.

Invariants: a body loses a reference only with the XACK that ends the entry holding it,
so a retried call releases nothing twice; the body key is deleted with its last live
reference unless a dead letter still holds it (shared/delivery.lua settle_body).
]]
local rcall = redis.call
local stream, group = KEYS[1], ARGV[1]
for i = 2, #ARGV, 2 do
  local k = tonumber(ARGV[i + 1])
  if k == nil or k < 0 or k == 1 or k > #KEYS then
    return redis.error_reply('ack: entry ' .. ARGV[i] .. ' names no body key')
  end
end
local now_ms
local acked = 0
local inline = {}
for i = 2, #ARGV, 2 do
  local id, k = ARGV[i], tonumber(ARGV[i + 1])
  if k == 0 then
    inline[#inline + 1] = id
  elseif rcall('XACK', stream, group, id) == 1 then
    acked = acked + 1
    rcall('XDEL', stream, id)
    if not now_ms then
      local t = rcall('TIME')
      now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    end
    release_body(KEYS[k], now_ms)
  end
end
-- Entries holding their body: one XACK and one XDEL for all of them.
if #inline > 0 then
  acked = acked + rcall('XACK', stream, group, unpack(inline))
  rcall('XDEL', stream, unpack(inline))
end
return acked
