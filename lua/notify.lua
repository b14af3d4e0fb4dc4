--[[
notify: broadcast an event to the waiters present now (take them, enqueue one delivery each).

KEYS[1] event waiters  (HASH)   field "<runId>|<waiterId>" -> waiter JSON
KEYS[2] deadlines      (ZSET)   member "<tenant>|<field>|<eventId>"
KEYS[3] deliveries     (STREAM) delivery jobs of the partition
KEYS[4] waiter count   (STRING) the tenant's waiters registered in this partition
KEYS[5] rate bucket    (STRING) the tenant's notify rate limit (GCRA); only read when ARGV[8] > 0
KEYS[6] history        (LIST)   the event's history (see shared/delivery.lua add_history)
KEYS[7] event runs     (ZSET)   the event's run waiters (each taken run waiter leaves it)
KEYS[8] body           (HASH)   the notify's body key (see shared/delivery.lua hold_body)
KEYS[9] usage          (HASH)   the tenant's stored bytes in this partition (shared/usage.lua):
                                history charged, the waiters taken released

ARGV[1] tenant
ARGV[2] event id
ARGV[3] body             raw bytes of the notify request
ARGV[4] content type     as a JSON string literal (e.g. "\"text/plain\"" or null)
ARGV[5] message id base  unique per call; the i-th delivery gets "<base><i>"
ARGV[6] limit            most waiters taken by this call
ARGV[7] trace context    W3C traceparent of the request ("" for none), kept with each delivery
ARGV[8] rate             the tenant's notify requests per second (0 = not checked here; a
                         broadcast checks it in its first call only)
ARGV[9] burst            notify requests allowed at once
ARGV[10] history ttl     milliseconds the event's history is kept (0 = no history)
ARGV[11] history max     entries the event's history keeps
ARGV[12] first call      "1" on a request's first call: it records "nobody_waiting" when it
                         finds nobody (a later call finding nobody records nothing)
ARGV[13] body id         the id KEYS[8] ends with: the same for every call of one request
ARGV[14] inline max      bodies of at most this many bytes are kept in each job (as is the
                         body of a notify of an event with one waiter); longer ones are
                         stored once in KEYS[8] and referenced by the jobs
ARGV[15] stored full     "1" when the tenant is at its stored_bytes quota: a first call that
                         finds nobody waiting writes nothing and returns {"stored_full"}
ARGV[16] reply budget   bytes of waiter records the reply may carry; past them a taken
                         waiter's record is "" (shared/delivery.lua deliver_waiters)
ARGV[17] time budget    microseconds of Redis time after which the call takes no further
                         waiter (`redis.script_budget_us`; 0 = none): it takes at least one
                         and leaves the rest to the next call (shared/delivery.lua budget_ends)
ARGV[18] cursor         where this broadcast's previous call stopped ("0" on the first call):
                         the event's HSCAN cursor, so a broadcast scans the hash once in
                         all (from "0" each time, every call would walk again over the
                         buckets emptied by the calls before it)

Returns {next, field1, waiterJSON1, messageId1, field2, ...}: the waiters taken, and the
cursor of a further call ("" when the broadcast is done). Large fan-outs are taken in
bounded batches: at most `limit` waiters per call, and no more once the time budget is
spent. When the event's waiters fit in one call (at most `limit`), the call takes them
all (HGETALL), whatever the cursor: so a broadcast ends with every waiter present for its
whole duration taken (HSCAN's guarantee), and may take some registered meanwhile. The
history gets the entries of the waiters taken last (shared/delivery.lua finish_taking):
a call that leaves at least history.max / 2 waiters to later calls writes none (theirs
would push these out); an event whose waiters registered behind the cursor during a
broadcast number that many keeps none of the broadcast's "notified" entries (their
deliveries write theirs).
Or {"limited", remaining, resetMs, retryAfterMs}: over the notify rate limit, nothing taken.
Or {"stored_full"}: nobody waits and the tenant is at its stored_bytes quota; nothing written.

Invariants: each waiter taken is removed from the hash, the run index and the deadline set in the same
script that enqueues its delivery, so it can never also time out (I1), and leaves the
tenant's count (KEYS[4]). A body stored in KEYS[8] gains one reference per job enqueued,
in the same script. Running the script again after a lost reply finds the taken
waiters gone and enqueues nothing twice.
]]
local rcall = redis.call
-- Fields HSCAN is asked for at a time: small, so a call stopped by its budget leaves few
-- read and not taken.
local SCAN_COUNT = 16
local ev_key, deadlines_key, stream_key = KEYS[1], KEYS[2], KEYS[3]
local tenant, event, body, ct = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local msg_base, limit, trace = ARGV[5], tonumber(ARGV[6]), ARGV[7]
local count_key, bucket_key = KEYS[4], KEYS[5]
local rate, burst = tonumber(ARGV[8]), tonumber(ARGV[9])
local body_key, body_id, inline_max = KEYS[8], ARGV[13], tonumber(ARGV[14])

local t = rcall('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local history = {key = KEYS[6], ttl_ms = tonumber(ARGV[10]), max = tonumber(ARGV[11]),
  u = {key = KEYS[9], now_ms = now_ms}}
local refused = rate_refusal(bucket_key, rate, burst, t)
if refused then return refused end

local count = rcall('HLEN', ev_key)
if count == 0 then
  if ARGV[12] == '1' and ARGV[15] == '1' then return {'stored_full'} end
  if ARGV[12] == '1' then add_history(history, {history_entry(now_ms, 'nobody_waiting', {})}) end
  return {''}
end

local body_ref = nil
if count > 1 and #body > inline_max then body_ref = body_id end
local out = {0}
local d = {
  ev = ev_key, runs = KEYS[7], deadlines = deadlines_key, stream = stream_key, count = count_key,
  msg_base = msg_base, tenant = tenant, event = event, now_ms = now_ms, trace = trace,
  ct = ct, body = body, body_ref = body_ref, history = history, budget = tonumber(ARGV[16]),
  ends = budget_ends(t, tonumber(ARGV[17])),
}
local taken, cursor
if count <= limit then
  -- They fit in one call: all of them, whatever the cursor (the time budget may leave
  -- some: the next call takes those, from the start).
  local stopped
  taken, stopped = deliver_waiters(rcall('HGETALL', ev_key), out, d)
  cursor = stopped and '0' or ''
else
  -- HSCAN batches from ARGV[18]'s cursor, each taken as it is read, until `limit` are
  -- taken or the time budget is spent. A batch left part-way is scanned again by the
  -- next call (from the cursor it started at: its waiters taken are gone by then).
  local st = start_taking(out, d)
  local stopped_at, seen = nil, {}
  cursor = ARGV[18]
  repeat
    local from = cursor
    local res = rcall('HSCAN', ev_key, from, 'COUNT', SCAN_COUNT)
    cursor = res[1]
    local items = res[2]
    for i = 1, #items, 2 do
      if st.taken > 0 and (st.taken >= limit or budget_spent(d.ends)) then
        stopped_at = from
        break
      end
      -- (HSCAN may return a field twice; one call never takes it twice.)
      if not seen[items[i]] then
        seen[items[i]] = true
        take_waiter(st, items[i], items[i + 1])
      end
    end
  until stopped_at or cursor == '0' or st.taken >= limit or budget_spent(d.ends)
  taken = finish_taking(st, count - st.taken)
  if stopped_at then
    cursor = stopped_at
  elseif cursor == '0' then
    cursor = ''
  end
end
-- One reference per job enqueued (the time budget may have taken fewer than were found).
if body_ref and taken > 0 then hold_body(body_key, body, taken) end
out[1] = cursor
return out
