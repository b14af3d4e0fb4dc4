--[[
dead_letter: a delivery ran out of attempts (or was refused for good): move it to the
tenant's dead letters and release the stream entry.

KEYS[1] deliveries   (STREAM) delivery jobs of the partition
KEYS[2] dead letters (STREAM) the tenant's dead letters in this partition

ARGV[1] consumer group
ARGV[2] entry id
ARGV[3] job JSON      final state (attempts made)
ARGV[4] body
ARGV[5] last status   HTTP status of the last attempt, or 0 when it never got one
ARGV[6] last error    short description / response excerpt
ARGV[7] retention     milliseconds dead letters are kept (0 = until deleted or sent again)

Returns the dead letter's stream id, or false when the entry was no longer pending.
]]
local rcall = redis.call
if rcall('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return false end
rcall('XDEL', KEYS[1], ARGV[2])
local t = rcall('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return add_dead_letter(KEYS[2], tonumber(ARGV[7]), now_ms,
  {'j', ARGV[3], 'b', ARGV[4], 's', ARGV[5], 'r', ARGV[6], 'at', now_ms})
