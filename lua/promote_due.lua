--[[
promote_due: move due retries back into the delivery stream.

KEYS[1] deliveries  (STREAM) delivery jobs of the partition
KEYS[2] retries     (ZSET)   member message id, score due time (ms)
KEYS[3] retry jobs  (HASH)   "<messageId>" -> job JSON, "<messageId>#b" -> body, or
                             "<messageId>#r" -> body id (a body stored once)

ARGV[1] limit   most jobs moved by this call

Returns the number of jobs moved. Each move is ZREM + HDEL + XADD in one script: a job is
either still scheduled or in the stream, never both, never neither. A job referencing a
body key moves its reference with it (field br of the entry): no count changes.
]]
local rcall = redis.call
local t = rcall('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = rcall('ZRANGE', KEYS[2], '-inf', now_ms, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[1]))
for i = 1, #due do
  local msg = due[i]
  local got = rcall('HMGET', KEYS[3], msg, msg .. '#b', msg .. '#r')
  local job, body, ref = got[1], got[2], got[3]
  if job then
    if ref then
      rcall('XADD', KEYS[1], '*', 'j', job, 'br', ref)
    else
      rcall('XADD', KEYS[1], '*', 'j', job, 'b', body or '')
    end
    rcall('HDEL', KEYS[3], msg, msg .. '#b', msg .. '#r')
  end
  rcall('ZREM', KEYS[2], msg)
end
return #due
