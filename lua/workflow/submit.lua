--[[
workflow/submit: accept one message of a workflow run: create the run (mode "init") or
append one entry to its history (mode "step"), and schedule the delivery of that entry.
One script per accepted message (I1: the entry and its delivery exist together or not at
all).

KEYS[1] run         (HASH)   the run record (src/workflow/run.rs `RunRecord`) and its
                             dedupe fields "d:<key>" -> entry index
KEYS[2] steps       (LIST)   the history: RawStep JSON per entry, in acceptance order
KEYS[3] deliveries  (STREAM) delivery jobs of the run's partition
KEYS[4] retries     (ZSET)   scheduled jobs by due time (ms)
KEYS[5] retry jobs  (HASH)   "<messageId>" -> job JSON, "<messageId>#b" -> body
KEYS[6] usage       (HASH)   the tenant's stored bytes in the run's partition
                             (shared/usage.lua): the record and the history are charged
                             together to the bucket of their expiry, which the record
                             notes in "zb" with the bytes in "z" (history alone: "zs")

ARGV[1] mode        "init" | "step" | "plain" (a message without a run: only its job is
                    enqueued; KEYS[1] and KEYS[2] are placeholders of the partition)
ARGV[2] entry       the RawStep JSON appended to the history; "" for a message that is not
                    an entry (a third-party call: only its job and dedupe key are written)
ARGV[3] dedupe key  step: "s:<stepId>", "p:<targetStep>", "c:<stepId>" ("" none)
ARGV[4] job         the entry's delivery job (src/waiter.rs `Job`, kind workflow); this
                    script sets r.i (the entry's index) and, when the job has none, w.retries
                    from the run's `retries` field
ARGV[5] delay       ms from now (Redis TIME) before the delivery (0: at once)
ARGV[6] run fields  init: JSON object of the record's fields (string values); "created"
                    is set here from Redis TIME
ARGV[7] ttl         ms a run keeps its keys without activity (renewed by every message)
ARGV[8] message id  the entry's, which names the scheduled job when delayed
ARGV[9] body        the job's stream body ("" for a step delivery: built from the history)

Returns {status, index}:
  {"created", 0}      init: the run is created with entry 0
  {"enqueued", -1}    plain: the job is enqueued
  {"exists", -1}      init: a run with this id exists (running or ended): nothing written
  {"appended", i}     step: appended as entry i (or, without an entry, recorded)
  {"duplicate", i}    step: an entry with this dedupe key exists (i, -1 for a call)
  {"unknown", -1}     step: no such run
  {"<state>", -1}     step: the run ended (success, failed, canceled): nothing written

Invariant: entries are numbered in acceptance order and the delivery of entry i carries
entries 0..i (built from KEYS[2] when it is sent), so a retry resends the same prefix.
]]
local rcall = redis.call
local mode, entry, dedupe = ARGV[1], ARGV[2], ARGV[3]
local delay, ttl = tonumber(ARGV[5]), tonumber(ARGV[7])
local t = rcall('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local u = {key = KEYS[6], now_ms = now_ms}
local created = 0 -- the new record's bytes

if mode == 'init' then
  if rcall('EXISTS', KEYS[1]) == 1 then return {'exists', -1} end
  local fields = cjson.decode(ARGV[6])
  local flat = {'state', 'running', 'created', tostring(now_ms)}
  for k, v in pairs(fields) do
    flat[#flat + 1] = k
    flat[#flat + 1] = v
  end
  rcall('HSET', KEYS[1], unpack(flat))
  rcall('DEL', KEYS[2])
  for i = 1, #flat do created = created + #flat[i] + ITEM / 2 end
elseif mode == 'step' then
  local state = rcall('HGET', KEYS[1], 'state')
  if not state then return {'unknown', -1} end
  if state ~= 'running' then return {state, -1} end
  if dedupe ~= '' then
    local seen = rcall('HGET', KEYS[1], 'd:' .. dedupe)
    if seen then return {'duplicate', tonumber(seen)} end
  end
end

local index = -1
if entry ~= '' then
  index = rcall('RPUSH', KEYS[2], entry) - 1
end
if mode ~= 'plain' then
  local added = created
  if dedupe ~= '' then
    rcall('HSET', KEYS[1], 'd:' .. dedupe, index)
    added = added + #dedupe + 12 + ITEM
  end
  if entry ~= '' then
    added = added + #entry + ITEM
    rcall('HINCRBY', KEYS[1], 'zs', #entry + ITEM)
  end
  -- The record and the history live as long as the run is active: their bytes move to
  -- the bucket the renewed expiry falls in (the record notes which: zb).
  local ends = usage_end(now_ms, ttl)
  local z = rcall('HMGET', KEYS[1], 'z', 'zb')
  local held, bucket = tonumber(z[1]) or 0, z[2]
  if bucket and bucket ~= tostring(ends) then usage_add(u, bucket, -held) end
  usage_add(u, ends, (bucket ~= tostring(ends) and held or 0) + added)
  rcall('HSET', KEYS[1], 'z', held + added, 'zb', ends)
  rcall('PEXPIRE', KEYS[1], ttl)
  if entry ~= '' then rcall('PEXPIRE', KEYS[2], ttl) end
end

if ARGV[4] ~= '' then
  local job = cjson.decode(ARGV[4])
  if index >= 0 then job.r.i = index end
  if job.w.retries == nil then
    local retries = rcall('HGET', KEYS[1], 'retries')
    if retries then job.w.retries = tonumber(retries) end
  end
  local json = cjson.encode(job)
  if delay > 0 then
    rcall('HSET', KEYS[5], ARGV[8], json, ARGV[8] .. '#b', ARGV[9])
    rcall('ZADD', KEYS[4], now_ms + delay, ARGV[8])
  else
    rcall('XADD', KEYS[3], '*', 'j', json, 'b', ARGV[9])
  end
end
if mode == 'init' then return {'created', 0} end
if mode == 'plain' then return {'enqueued', -1} end
return {'appended', index}
