--[[
promote_due: move due retries back into the delivery stream.

KEYS[1] deliveries  (STREAM) delivery jobs of the partition
KEYS[2] retries     (ZSET)   member message id, score due time (ms)
KEYS[3] retry jobs  (HASH)   "<messageId>" -> job JSON, "<messageId>#b" -> body, or
                             "<messageId>#r" -> body id (a body stored once)

ARGV[1] limit        most jobs moved by this call
ARGV[2] time budget  microseconds after which the call moves no further job
                     (`redis.script_budget_us`; 0 = none; shared/delivery.lua budget_ends)

Returns {moved, more}: the due jobs handled, and 1 when more may be due (the limit was
reached or the time budget spent: the caller goes again at once), else 0. Each move is ZREM + HDEL + XADD in one script: a job is
either still scheduled or in the stream, never both, never neither. A job referencing a
body key moves its reference with it (field br of the entry): no count changes.
]]
local rcall = redis.call
local t = rcall('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local ends = budget_ends(t, tonumber(ARGV[2]))
local due = rcall('ZRANGE', KEYS[2], '-inf', now_ms, 'BYSCORE', 'LIMIT', 0, limit)
local moved = 0
for i = 1, #due do
  if i > 1 and budget_spent(ends) then return {moved, 1} end
  moved = i
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
return {moved, #due >= limit and 1 or 0}
