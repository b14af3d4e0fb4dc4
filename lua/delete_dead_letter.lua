--[[
delete_dead_letter: delete one of a tenant's dead letters, and release the body key it
references.

KEYS[1] dead letters (STREAM) the tenant's dead letters in this partition
KEYS[2] body         (HASH)   the body key the dead letter references (any key of the
                              partition, untouched, when its body is inline)
KEYS[3] usage        (HASH)   the tenant's stored bytes in this partition: the letter's
                              charge is released (shared/delivery.lua release_dead_letter)

ARGV[1] dead letter id   stream id in KEYS[1]
ARGV[2] body id          the body key KEYS[2] the dead letter references ("" for inline)

Returns 1 when deleted, 0 when the dead letter no longer existed (nothing is written).

Invariants: the body loses the letter's hold in the step that deletes the letter, so a
retried call releases nothing twice (shared/delivery.lua drop_dead_letter_body).
]]
local rcall = redis.call
local entry = rcall('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #entry == 0 then return 0 end
local ref = nil
local fields = entry[1][2]
for f = 1, #fields, 2 do
  if fields[f] == 'br' then ref = fields[f + 1] end
end
if ref ~= nil and (ref ~= ARGV[2] or not names_body(KEYS[2], ref)) then
  return redis.error_reply('delete_dead_letter: KEYS[2] is not the body key of ' .. ref)
end
local t = rcall('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
release_dead_letter({key = KEYS[3], now_ms = now_ms}, fields)
rcall('XDEL', KEYS[1], ARGV[1])
if ref ~= nil then drop_dead_letter_body(KEYS[2], now_ms) end
return 1
