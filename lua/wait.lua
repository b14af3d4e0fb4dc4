--[[
wait: register a waiter, or consume a saved lookback notification instead (wait-or-consume).

KEYS[1] event waiters  (HASH)   field "<runId>|<waiterId>" -> waiter JSON
KEYS[2] saved          (LIST)   lookback notifications of (tenant, run, event), FIFO
KEYS[3] deadlines      (ZSET)   member "<tenant>|<field>|<eventId>", score deadline (ms)
KEYS[4] deliveries     (STREAM) delivery jobs of the partition
KEYS[5] op             (STRING) idempotency record of this registration (unused when ARGV[7] is 0)
KEYS[6] run events     (SET)    event ids the run has state for in this partition
KEYS[7] cancelled      (STRING) the run's tombstone (exists = cancelled), in its home partition
                                (src/store/tombstones.rs); on a cluster, when that is another
                                slot, a key that never exists (the caller checks)
KEYS[8] waiter count   (STRING) the tenant's waiters registered in this partition
KEYS[9] rate bucket    (STRING) the tenant's wait rate limit (GCRA); only read when ARGV[11] > 0
KEYS[10] history       (LIST)   the event's history (see shared/delivery.lua add_history);
                                written when a saved notification is consumed
KEYS[11] event runs    (ZSET)   the event's run waiters: member = field, score 0 (a run
                                waiter is added; unused for a plain waiter)
KEYS[12] usage          (HASH)   the tenant's stored bytes in this partition (shared/usage.lua):
                                the waiter, the idempotency record, the run set and history
                                are charged, a consumed saved notification released
KEYS[13..] waiter counts (STRING) the tenant's in the other partitions, summed for its quota
                                (standalone Redis; on a cluster the caller counts them: ARGV[14])

ARGV[1] field            "<runId>|<waiterId>" (runId empty for plain waiters)
ARGV[2] waiter JSON      object without "deadline"/"createdAt" (appended here, from TIME) and
                         without its id (ARGV[1] ends with it; see src/waiter.rs)
ARGV[3] timeout          milliseconds until the deadline
ARGV[4] tenant
ARGV[5] event id
ARGV[6] run id           "" for none
ARGV[7] op ttl           seconds the idempotency record is kept; 0 = keep none (the waiter id
                         is random, so no client retry can name this registration again)
ARGV[8] run ttl          milliseconds the run-events set is kept at least
ARGV[9] max waiters      per event id (0 = unlimited)
ARGV[10] trace context   W3C traceparent of the request ("" for none), kept with the delivery
ARGV[11] rate            the tenant's wait requests per second (0 = not checked here)
ARGV[12] burst           wait requests allowed at once
ARGV[13] max active      waiters per tenant in all partitions (0 = unlimited)
ARGV[14] active elsewhere waiters the caller counted in other partitions (cluster), else 0
ARGV[15] history ttl     milliseconds the event's history is kept (0 = no history)
ARGV[16] history max     entries the event's history keeps
ARGV[17] stored full     "1" when the tenant is at its stored_bytes quota: a registration is
                         refused (a saved notification can still be consumed)

Returns one of
  {"waiting",  waiterJSON}                  registered (or already registered: same reply)
  {"consumed", messageId, waiterJSON}       a saved notification was taken and a delivery enqueued
  {"cancelled"}                             the run was cancelled; nothing written
  {"full", count}                           the event already has max waiters; nothing written
  {"tenant_full", count}                    the tenant already has max active waiters; nothing written
  {"stored_full"}                           the tenant is at its stored_bytes quota; nothing written
  {"limited", remaining, resetMs, retryAfterMs}  over the wait rate limit; nothing written

Invariants: a saved notification is taken by at most one wait (LPOP, I3); a registration,
its deadline, its run index entry (KEYS[11]), its count in KEYS[8] and its bytes in KEYS[12]
are written together; a retried call (same op key)
changes nothing and returns the first reply; a refused call writes nothing but the rate
bucket of an admitted request.
]]
local rcall = redis.call
local ev_key, saved_key, deadlines_key, stream_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op_key, run_key, cancelled_key = KEYS[5], KEYS[6], KEYS[7]
local field, waiter, timeout_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local tenant, event, run = ARGV[4], ARGV[5], ARGV[6]
local op_ttl, run_ttl, max_waiters = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local trace = ARGV[10]
local count_key, bucket_key = KEYS[8], KEYS[9]
local rate, burst = tonumber(ARGV[11]), tonumber(ARGV[12])
local max_active, active_elsewhere = tonumber(ARGV[13]), tonumber(ARGV[14])
local t = rcall('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local u = {key = KEYS[12], now_ms = now_ms}
local history = {key = KEYS[10], ttl_ms = tonumber(ARGV[15]), max = tonumber(ARGV[16]), u = u}
local refused = rate_refusal(bucket_key, rate, burst, t)
if refused then return refused end

if op_ttl > 0 then
  local prev = rcall('GET', op_key)
  if prev then return cjson.decode(prev) end
end
if run ~= '' and rcall('EXISTS', cancelled_key) == 1 then return {'cancelled'} end
local deadline_ms = now_ms + timeout_ms
local full = string.sub(waiter, 1, -2) .. ',"deadline":' .. math.floor(deadline_ms / 1000)
  .. ',"createdAt":' .. now_ms .. '}'

local function remember(reply)
  if op_ttl > 0 then
    local json = cjson.encode(reply)
    usage_add(u, usage_end(now_ms, op_ttl * 1000), #op_key + #json + ITEM)
    rcall('SET', op_key, json, 'EX', op_ttl)
  end
  return reply
end

if run ~= '' then
  -- Saved items: "<expiresMs>\n<messageId>\n<contentTypeJSON>\n<savedAtMs>\n<body>".
  -- Expired items are dropped; the loop is bounded by a fixed cap. The list is charged
  -- to the bucket of its expiry (usage_keep in notify_run): each item taken leaves it.
  local saved_end = math.floor(rcall('PEXPIRETIME', saved_key) / 1000)
  for _ = 1, 1000 do
    local item = rcall('LPOP', saved_key)
    if not item then break end
    if saved_end > 0 then usage_add(u, saved_end, -(#item + ITEM)) end
    local p1 = string.find(item, '\n', 1, true)
    local p2 = string.find(item, '\n', p1 + 1, true)
    local p3 = string.find(item, '\n', p2 + 1, true)
    local p4 = string.find(item, '\n', p3 + 1, true)
    local expires = tonumber(string.sub(item, 1, p1 - 1))
    if expires > now_ms then
      local msg = string.sub(item, p1 + 1, p2 - 1)
      local ct = string.sub(item, p2 + 1, p3 - 1)
      local saved_at = string.sub(item, p3 + 1, p4 - 1)
      enqueue_delivery(stream_key, {
        field = field, msg = msg, kind = 'event', tenant = tenant, event = event,
        at_ms = saved_at, now_ms = now_ms, trace = trace, ct = ct,
      }, full, string.sub(item, p4 + 1))
      local entry = waiter_fields(field, full)
      entry[#entry + 1] = 'messageId'
      entry[#entry + 1] = msg
      add_history(history, {history_entry(now_ms, 'consumed', entry)})
      return remember({'consumed', msg, full})
    end
  end
end

local previous = rcall('HGET', ev_key, field)
if not previous then
  if ARGV[17] == '1' then return {'stored_full'} end
  if max_waiters > 0 then
    local count = rcall('HLEN', ev_key)
    if count >= max_waiters then return {'full', count} end
  end
  if max_active > 0 then
    local total = active_elsewhere
    for _, n in ipairs(rcall('MGET', count_key, unpack(KEYS, 13))) do
      total = total + (tonumber(n) or 0)
    end
    if total >= max_active then return {'tenant_full', total} end
  end
end

count_waiters(count_key, rcall('HSET', ev_key, field, full))
usage_add(u, 'L', waiter_bytes(tenant, event, field, full)
  - (previous and waiter_bytes(tenant, event, field, previous) or 0))
rcall('ZADD', deadlines_key, deadline_ms, tenant .. '|' .. field .. '|' .. event)
if run ~= '' then
  rcall('ZADD', KEYS[11], 0, field)
  keep_run_event(u, run_key, event, math.max(run_ttl, timeout_ms + 60000))
end
-- No history entry here: while it waits, the waiter in the event hash is its own record
-- (history reads show it as "registered"); the entry is written when it stops waiting.
return remember({'waiting', full})
