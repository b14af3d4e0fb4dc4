--[[
notify_run: lookback notify (notify-or-save) to one run's waiters on an event.

KEYS[1] event waiters  (HASH)   field "<runId>|<waiterId>" -> waiter JSON
KEYS[2] saved          (LIST)   lookback notifications of (tenant, run, event), FIFO
KEYS[3] deadlines      (ZSET)   member "<tenant>|<field>|<eventId>"
KEYS[4] deliveries     (STREAM) delivery jobs of the partition
KEYS[5] op             (STRING) idempotency record of this notify (unused when ARGV[8] is 0)
KEYS[6] run events     (SET)    event ids the run has state for in this partition
KEYS[7] cancelled      (STRING) the run's tombstone, in its home partition (src/store/tombstones.rs);
                                on a cluster, when that is another slot, a key that never
                                exists (the caller checks)
KEYS[8] waiter count   (STRING) the tenant's waiters registered in this partition
KEYS[9] rate bucket    (STRING) the tenant's notify rate limit (GCRA); only read when ARGV[11] > 0
KEYS[10] history       (LIST)   the event's history (see shared/delivery.lua add_history)
KEYS[11] event runs    (ZSET)   the event's run waiters, member = field "<runId>|<waiterId>"
KEYS[12] usage         (HASH)   the tenant's stored bytes in this partition (shared/usage.lua):
                                the saved item, the idempotency record, the run set and
                                history are charged, the waiters taken released

ARGV[1] tenant
ARGV[2] event id
ARGV[3] run id
ARGV[4] body             raw bytes
ARGV[5] content type     JSON string literal or null
ARGV[6] message id base  the i-th delivery gets "<base><i>"; a saved item gets "<base>1"
ARGV[7] saved ttl        milliseconds a saved notification stays consumable
ARGV[8] op ttl           seconds the idempotency record is kept; 0 = keep none (the call has
                         no Idempotency-Key, so no client retry can name it again)
ARGV[9] max saved        most saved notifications per (run, event) (0 = unlimited)
ARGV[10] trace context   W3C traceparent of the request ("" for none), kept with each delivery
ARGV[11] rate            the tenant's notify requests per second (0 = not checked here)
ARGV[12] burst           notify requests allowed at once
ARGV[13] history ttl     milliseconds the event's history is kept (0 = no history)
ARGV[14] history max     entries the event's history keeps
ARGV[15] limit           most of the run's waiters taken by this call
ARGV[16] more            "1" on a request's later calls: deliver to the run's waiters left
                         (the first call took `limit`), never save; "0" on the first call
ARGV[17] stored full     "1" when the tenant is at its stored_bytes quota: nothing is saved
ARGV[18] reply budget    bytes of waiter records the reply may carry; past them a taken
                         waiter's record is "" (shared/delivery.lua deliver_waiters)
ARGV[19] time budget     microseconds after which the call takes no further waiter
                         (`redis.script_budget_us`; 0 = none; shared/delivery.lua budget_ends)

Returns one of
  {"delivered", remaining, field1, waiterJSON1, messageId1, ...}
                                        the run's waiters were taken (at most `limit`,
                                        fewer once the time budget is spent;
                                        `remaining` of the run's are left for a further
                                        call with ARGV[16] = "1")
  {"saved", messageId}                                  nobody of the run waits: saved FIFO
  {"cancelled"}                                         the run was cancelled; nothing written
  {"full", count}                                       the saved quota is reached; nothing written
  {"stored_full"}                                       nobody of the run waits and the tenant is at
                                                        its stored_bytes quota; nothing written
  {"limited", remaining, resetMs, retryAfterMs}         over the notify rate limit; nothing written

Invariants: delivered xor saved, in one script, so a concurrent wait of the run either sees
the saved item or is notified (no lost event in either order). A retried call (same op
key) returns the first reply and writes nothing. Cost: O(log N + limit) for N waiters of
the event: the run's waiters are a lex range of KEYS[11], never a scan of the event.
A run with more than `limit` waiters on the event is delivered in batches: the first call
decides delivered-or-saved atomically; each further call is atomic for its own batch (a
waiter of the run registered between two calls may be taken by the later one, as with a
broadcast).
]]
local rcall = redis.call
local ev_key, saved_key, deadlines_key, stream_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op_key, run_key, cancelled_key = KEYS[5], KEYS[6], KEYS[7]
local tenant, event, run, body, ct = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local msg_base, saved_ttl = ARGV[6], tonumber(ARGV[7])
local op_ttl, max_saved = tonumber(ARGV[8]), tonumber(ARGV[9])
local trace = ARGV[10]
local count_key, bucket_key = KEYS[8], KEYS[9]
local rate, burst = tonumber(ARGV[11]), tonumber(ARGV[12])
local runs_key, limit, more = KEYS[11], tonumber(ARGV[15]), ARGV[16] == '1'

local t = rcall('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local u = {key = KEYS[12], now_ms = now_ms}
local history = {key = KEYS[10], ttl_ms = tonumber(ARGV[13]), max = tonumber(ARGV[14]), u = u}
local refused = rate_refusal(bucket_key, rate, burst, t)
if refused then return refused end

if op_ttl > 0 then
  local prev = rcall('GET', op_key)
  if prev then return cjson.decode(prev) end
end
if rcall('EXISTS', cancelled_key) == 1 then return {'cancelled'} end

local function remember(reply)
  if op_ttl > 0 then
    local json = cjson.encode(reply)
    usage_add(u, usage_end(now_ms, op_ttl * 1000), #op_key + #json + ITEM)
    rcall('SET', op_key, json, 'EX', op_ttl)
  end
  return reply
end

-- The run's waiters: the lex range of fields "<run>|*" in the run index. `}` sorts right
-- after `|`, and run ids hold neither, so the range is exactly this run's fields.
local fields = rcall('ZRANGEBYLEX', runs_key, '[' .. run .. '|', '(' .. run .. '}', 'LIMIT', 0, limit)
local found = {}
if #fields > 0 then
  local waiters = rcall('HMGET', ev_key, unpack(fields))
  local stale = {}
  for i = 1, #fields do
    if waiters[i] then
      found[#found + 1] = fields[i]
      found[#found + 1] = waiters[i]
    else
      stale[#stale + 1] = fields[i]
    end
  end
  -- Not expected (every script that removes a run waiter leaves the index too); an
  -- entry without its waiter is dropped rather than kept forever.
  if #stale > 0 then rcall('ZREM', runs_key, unpack(stale)) end
end

if #found > 0 or more then
  local out = {'delivered', 0}
  local _, stopped = deliver_waiters(found, out, {
    ev = ev_key, runs = runs_key, deadlines = deadlines_key, stream = stream_key, count = count_key,
    msg_base = msg_base, tenant = tenant, event = event, now_ms = now_ms, trace = trace,
    ct = ct, body = body, history = history, budget = tonumber(ARGV[18]),
    ends = budget_ends(t, tonumber(ARGV[19])),
  })
  if #fields == limit or stopped then
    out[2] = rcall('ZLEXCOUNT', runs_key, '[' .. run .. '|', '(' .. run .. '}')
  end
  return remember(out)
end

if max_saved > 0 then
  -- Expired items no longer count against the quota: they are dropped from the head
  -- (the oldest first: each expires saved ttl after it was saved), as a wait drops them,
  -- each leaving the bucket the list is charged to. Bounded by a fixed cap.
  local saved_end = nil
  for _ = 1, 1000 do
    local head = rcall('LINDEX', saved_key, 0)
    if not head then break end
    local expires = tonumber(string.match(head, '^(%d+)\n'))
    if not expires or expires > now_ms then break end
    saved_end = saved_end or math.floor(rcall('PEXPIRETIME', saved_key) / 1000)
    rcall('LPOP', saved_key)
    if saved_end > 0 then usage_add(u, saved_end, -(#head + ITEM)) end
  end
  local count = rcall('LLEN', saved_key)
  if count >= max_saved then return {'full', count} end
end
if ARGV[17] == '1' then return {'stored_full'} end
local msg = msg_base .. '1'
local item = (now_ms + saved_ttl) .. '\n' .. msg .. '\n' .. ct .. '\n' .. now_ms .. '\n' .. body
-- The list is charged to the bucket of its expiry (it lives as long as its newest item).
local ends = usage_keep(u, saved_key, saved_ttl, #item + ITEM,
  function() return list_bytes(rcall('LRANGE', saved_key, 0, -1)) end)
rcall('RPUSH', saved_key, item)
rcall('PEXPIREAT', saved_key, ends * 1000)
keep_run_event(u, run_key, event, saved_ttl)
add_history(history, {history_entry(now_ms, 'saved', {'messageId', msg, 'workflowRunId', run})})
return remember({'saved', msg})
