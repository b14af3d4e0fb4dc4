--[[
workflow/chain: a delivery's final attempt owes one follow-up message (a third-party
call's answer becomes its callback): acknowledge and delete the entry and enqueue the
follow-up, in one script (the follow-up exists exactly when the entry is gone).

KEYS[1] deliveries  (STREAM) delivery jobs of the partition

ARGV[1] group       consumer group of KEYS[1]
ARGV[2] entry id    the finished delivery
ARGV[3] job         the follow-up's job JSON
ARGV[4] body        the follow-up's body

Returns 1 when enqueued, 0 when the entry was no longer pending (another worker took it
over and owns its outcome): nothing written.
]]
local rcall = redis.call
if rcall('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
rcall('XDEL', KEYS[1], ARGV[2])
rcall('XADD', KEYS[1], '*', 'j', ARGV[3], 'b', ARGV[4])
return 1
