--[[
redrive: send a dead letter again: move it from the tenant's dead letters back into the
delivery stream, as a fresh delivery (attempts reset) with the same message id.

KEYS[1] dead letters (STREAM) the tenant's dead letters in this partition
KEYS[2] deliveries   (STREAM) delivery jobs of the same partition
KEYS[3] body         (HASH)   the body key the dead letter references (any key of the
                              partition, untouched, when its body is inline)
KEYS[4] usage        (HASH)   the tenant's stored bytes in this partition: the letter's
                              charge is released (shared/delivery.lua release_dead_letter)

ARGV[1] dead letter id   stream id in KEYS[1]
ARGV[2] job JSON         the dead letter's job with attempts reset (written by the caller,
                         which read the same immutable entry)
ARGV[3] body id          the body key KEYS[3] the dead letter references ("" for inline)

Returns the new delivery entry's id, false when the dead letter no longer exists (it was
deleted or redriven meanwhile: nothing is written), or 0 when its body key is gone
(nothing is written; see lua/README.md "Bodies" for when that can happen).

Invariants: the dead letter is deleted in the step that enqueues it again, so a redrive
that is retried after a lost reply enqueues it once; a referenced body turns the letter's
hold into a live job's reference in the same step.
]]
local rcall = redis.call
local entry = rcall('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #entry == 0 then return false end
local body, ref = '', nil
local fields = entry[1][2]
for f = 1, #fields, 2 do
  if fields[f] == 'b' then body = fields[f + 1] elseif fields[f] == 'br' then ref = fields[f + 1] end
end
local t = rcall('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local u = {key = KEYS[4], now_ms = now_ms}
if ref == nil then
  release_dead_letter(u, fields)
  rcall('XDEL', KEYS[1], ARGV[1])
  return rcall('XADD', KEYS[2], '*', 'j', ARGV[2], 'b', body)
end
if ref ~= ARGV[3] or not names_body(KEYS[3], ref) then
  return redis.error_reply('redrive: KEYS[3] is not the body key of ' .. ref)
end
if rcall('HEXISTS', KEYS[3], 'b') == 0 then return 0 end
release_dead_letter(u, fields)
rcall('XDEL', KEYS[1], ARGV[1])
redrive_body(KEYS[3], now_ms)
return rcall('XADD', KEYS[2], '*', 'j', ARGV[2], 'br', ref)
