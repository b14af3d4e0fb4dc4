--[[
dead_letter: a delivery ran out of attempts (or was refused for good): move it to the
tenant's dead letters and release the stream entry.

KEYS[1] deliveries   (STREAM) delivery jobs of the partition
KEYS[2] dead letters (STREAM) the tenant's dead letters in this partition
KEYS[3] body         (HASH)   the body key the entry references (any key of the partition,
                              untouched, when its body is inline)
KEYS[4] usage        (HASH)   the tenant's stored bytes in this partition (shared/usage.lua)

ARGV[1] consumer group
ARGV[2] entry id
ARGV[3] job JSON      final state (attempts made)
ARGV[4] body          ("" when ARGV[8] names a body key)
ARGV[5] last status   HTTP status of the last attempt, or 0 when it never got one
ARGV[6] last error    short description / response excerpt
ARGV[7] retention     milliseconds dead letters are kept (0 = until deleted or sent again)
ARGV[8] body id       the body key KEYS[3] the entry references ("" for a body inline)

Returns the dead letter's stream id, or false when the entry was no longer pending.

Invariants: a dead letter of a referenced body references it too (field br), and the body
key is kept at least as long as the dead letter can exist (shared/delivery.lua
dead_letter_body), in the script that writes the letter.
]]
local rcall = redis.call
local ref = ARGV[8]
if ref ~= '' and not names_body(KEYS[3], ref) then
  return redis.error_reply('dead_letter: KEYS[3] is not the body key of ' .. ref)
end
if rcall('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return false end
rcall('XDEL', KEYS[1], ARGV[2])
local t = rcall('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local retention_ms = tonumber(ARGV[7])
local u = {key = KEYS[4], now_ms = now_ms}
if ref ~= '' then
  dead_letter_body(KEYS[3], now_ms, retention_ms)
  return add_dead_letter(KEYS[2], retention_ms, now_ms,
    {'j', ARGV[3], 'br', ref, 's', ARGV[5], 'r', ARGV[6], 'at', now_ms}, u, KEYS[3])
end
return add_dead_letter(KEYS[2], retention_ms, now_ms,
  {'j', ARGV[3], 'b', ARGV[4], 's', ARGV[5], 'r', ARGV[6], 'at', now_ms}, u)
