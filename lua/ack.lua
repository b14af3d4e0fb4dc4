--[[
ack: delivery attempts succeeded (2xx): acknowledge and delete their stream entries.

KEYS[1] deliveries (STREAM) delivery jobs of the partition
ARGV[1] consumer group
ARGV[2..] entry ids, one or more (a worker acknowledges what gathered while its previous
          call was in flight)

Returns how many of the entries were pending and are now gone; an entry already
acknowledged (a retried call, or another consumer finished it after reclaiming it) is
not counted.
]]
local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
return acked
