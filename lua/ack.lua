--[[
ack: a delivery attempt succeeded (2xx): acknowledge and delete its stream entry.

KEYS[1] deliveries (STREAM) delivery jobs of the partition
ARGV[1] consumer group
ARGV[2] entry id

Returns 1 if the entry was pending and is now gone, 0 if it had already been acknowledged
(a retried call, or another consumer finished it after reclaiming it).
]]
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return acked
