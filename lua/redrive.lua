--[[
redrive: send a dead letter again: move it from the tenant's dead letters back into the
delivery stream, as a fresh delivery (attempts reset) with the same message id.

KEYS[1] dead letters (STREAM) the tenant's dead letters in this partition
KEYS[2] deliveries   (STREAM) delivery jobs of the same partition

ARGV[1] dead letter id   stream id in KEYS[1]
ARGV[2] job JSON         the dead letter's job with attempts reset (written by the caller,
                         which read the same immutable entry)

Returns the new delivery entry's id, or false when the dead letter no longer exists (it was
deleted or redriven meanwhile: nothing is written).

Invariants: the dead letter is deleted in the step that enqueues it again, so a redrive
that is retried after a lost reply enqueues it once.
]]
local rcall = redis.call
local entry = rcall('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #entry == 0 then return false end
local body = ''
local fields = entry[1][2]
for f = 1, #fields, 2 do
  if fields[f] == 'b' then body = fields[f + 1] end
end
rcall('XDEL', KEYS[1], ARGV[1])
return rcall('XADD', KEYS[2], '*', 'j', ARGV[2], 'b', body)
