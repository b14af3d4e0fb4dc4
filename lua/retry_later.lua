--[[
retry_later: a delivery attempt failed, or was deferred (its tenant was at its concurrency
bound on the worker): schedule the next attempt and release the entry.

The next attempt is a new scheduled job (retry ZSET + job HASH), not a pending entry, so a
long backoff never sits in the consumer group's pending list.

KEYS[1] deliveries  (STREAM) delivery jobs of the partition
KEYS[2] retries     (ZSET)   member message id, score due time (ms)
KEYS[3] retry jobs  (HASH)   "<messageId>" -> job JSON, "<messageId>#b" -> body, or
                             "<messageId>#r" -> body id (a body stored once)

ARGV[1] consumer group
ARGV[2] entry id
ARGV[3] message id
ARGV[4] job JSON       with the attempt (or deferral) count already increased
ARGV[5] body           ("" when ARGV[7] names a body key)
ARGV[6] delay          milliseconds from now (Redis TIME)
ARGV[7] body id        the body key the entry references ("" for a body inline)

Returns 1 when scheduled, 0 when the entry was no longer pending (nothing written).
The scheduled job takes over the entry's reference of its body key (no count changes).
]]
local rcall = redis.call
if rcall('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
rcall('XDEL', KEYS[1], ARGV[2])
local t = rcall('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[7] ~= '' then
  rcall('HSET', KEYS[3], ARGV[3], ARGV[4], ARGV[3] .. '#r', ARGV[7])
else
  rcall('HSET', KEYS[3], ARGV[3], ARGV[4], ARGV[3] .. '#b', ARGV[5])
end
rcall('ZADD', KEYS[2], now_ms + tonumber(ARGV[6]), ARGV[3])
return 1
