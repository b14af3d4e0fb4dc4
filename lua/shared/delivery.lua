--[[
shared/delivery.lua: functions joined (after shared/quota.lua) in front of the scripts
that enqueue deliveries, write event history or dead letters (wait, notify, notify_run,
expire_due, promote_due, dead_letter, reclaim). Not a script of its own.

enqueue_delivery(stream, job, waiter, body, body_ref)
  XADDs one delivery job to the partition's stream: field j (the job JSON) and either b (the
  body, "" for a timeout) or, with a body_ref, br (the id of the notify's body key, which the
  caller holds a reference of for this job: see hold_body). `job` names its parts:
    field    the waiter's hash field "<runId>|<waiterId>": a waiter stored without its id
             (src/waiter.rs) gets it back in the job
    msg      message id (the Upstash-Message-Id of every attempt)
    kind     "event" or "timeout"
    tenant, event
    at_ms    when it happened: the notify, the saved notification, or the deadline (ms)
    now_ms   when it was enqueued (Redis TIME, ms)
    trace    W3C traceparent of the request, "" for none
    ct       content type as a JSON string, or "null"
  `waiter` is the waiter's JSON, embedded as it is (with its id put first when it has
  none). Ids and tenant names were validated by the api ([A-Za-z0-9._:-]), so they need no
  JSON escaping.

deliver_waiters(found, out, d) -> taken, stopped
  found    flat list field, waiter JSON, field, waiter JSON… (HGETALL of the event, or the
           run's waiters)
  d        {ev, runs, deadlines, stream, count, msg_base, tenant, event, now_ms, trace, ct,
            body, body_ref, history, budget, ends} (body_ref: nil for the body inline in
            each job; budget: bytes of waiter records the reply may carry, "" for each past
            it; ends: the script's time budget, see budget_ends, nil for none)
  Takes the waiters in order until the time budget is spent (one waiter at least), with
  take_waiter, then finish_taking(st, 0). `stopped`: the budget ended the loop before
  the end of `found`.
start_taking(out, d) -> st; take_waiter(st, field, waiter); finish_taking(st, left) -> taken
  The same in steps, for a caller that reads the waiters as it goes (notify's HSCAN):
  take_waiter enqueues the waiter's event delivery (message id msg_base .. n, n = 1, 2…)
  and appends field, waiter JSON and message id to `out`; finish_taking removes the
  waiters taken from the event hash, the run index (d.runs, run waiters) and the deadline
  set, lowers the tenant's waiter count by the number taken, releases their bytes
  (d.history.u), and adds the registered record and a "notified" entry of the last
  waiters to the event's history: the history keeps the newest history.max entries, so
  with `left` waiters still to be taken by the request's later calls (whose entries come
  after), only the entries of the last ceil(max / 2) - left waiters can stay, and only
  those are built (none when left >= max / 2).

budget_ends(t, budget_us) -> the Redis TIME (µs) at which a script that started at TIME
  `t` stops taking more work, or nil for budget_us 0 (no time budget: the batch alone
  bounds the call). Each loop of a batch script (notify, expire_due, promote_due) checks
  budget_spent(ends) before each item after its first, so a call stays near the budget
  whatever the items cost; what it leaves is taken by the caller's next call.
call_chunked(command, key, items) runs `command key item…` in chunks of 1,000 items (Lua's
  unpack has a bound).

waiter_bytes(tenant, event, field, waiter) -> the bytes a registered waiter is charged
  (shared/usage.lua), in field "L": charged by wait, released by whatever removes it.
keep_run_event(u, run_key, event, ttl_ms)
  add the event to the run's set (for cancel) and keep the set at least ttl_ms; each
  member is charged RUN_MEMBER bytes (usage_keep).

history_entry(at_ms, outcome, fields) -> one entry of an event's history as JSON (the
  shape of src/history.rs `Entry`). fields: flat list name, value…; a nil or "" value is
  left out, a number is written bare, a string as it is (ids, and URLs as the waiter JSON
  holds them: already JSON-escaped).
json_string(json, key) -> the value of the first string member "key" of a JSON text, as
  it stands (still escaped), or nil. Used on waiter JSON, where the first `"url":"` and
  `"timeoutUrl":"` are the waiter's own: they come first (after the id of a waiter stored
  with one: validated characters), header values are arrays, and every other string is
  escaped. (`traceparent` comes after `step`, client JSON: its value is checked by the
  caller.)
waiter_fields(field, waiter, url_key) -> {"waiterId", id, "workflowRunId", run, "url", url}
  from a waiter's hash field "<run>|<waiterId>" and its JSON; url_key "url" (default) or
  "timeoutUrl" names the URL recorded (an empty timeoutUrl is the url).
registered_entry(field, waiter) -> the waiter's "registered" record: "<field>\n<waiter JSON>",
  the waiter as its event hash held it. Written when the waiter stops waiting (notified,
  timed out), not by the wait: while it waits, the waiter in its event hash is the record.
  History reads (src/history.rs) show either as the same "registered" entry (at its
  createdAt, with its deadline). Kept raw, not as an entry JSON: building one here cost the
  timeout burst about a tenth more Redis time per waiter.
add_history(h, entries)
  h = {key, ttl_ms, max, u}: LPUSH the entries (oldest first; only the newest max can stay),
  LTRIM to max, and keep the list at least ttl_ms (PEXPIREAT the end of its usage bucket:
  see shared/usage.lua usage_keep; the entries pushed are charged to the tenant's account
  u, those trimmed released). Nothing when ttl_ms or max is 0 (history disabled).
list_bytes(items) -> the bytes charged for list items (each its length + ITEM)
  Written in the script that changed the state: no round trip of its own.

add_dead_letter(key, retention_ms, now_ms, fields, u, body_key) -> dead letter id
  XADDs the fields (flat list) to a tenant's dead letters in the partition, charged to
  the tenant's account u (with the referenced body's length when body_key is given),
  recorded in its field z "<bucket>:<bytes>".
release_dead_letter(u, fields) releases what field z of a letter's fields says. With a
  retention (ms, > 0) it also drops the letters older than that (XTRIM MINID: stream ids
  are Redis times) and lets the key expire that long after its newest letter, so every
  dead letter is kept at least `retention_ms` and gone before twice that.

Bodies stored once (lua/README.md, "Bodies"): a body key is a HASH `b` body bytes, `n` live
jobs referencing it (stream entries and scheduled retries), `d` dead letters written
referencing it and not yet deleted or sent again, `x` until when (ms) dead letters may
still hold it (-1: until deleted, retention 0). Jobs and dead letters name it by its id
(field br, retry-job field "<messageId>#r"); the caller passes the key itself in KEYS.
hold_body(key, body, refs)       store the body (once) and add `refs` live references
release_body(key, now_ms)        a live job ended (acknowledged): one reference less
dead_letter_body(key, now_ms, retention_ms)
                                 a live job became a dead letter: one live reference less,
                                 one dead letter more, kept at least 2 x retention_ms from
                                 now (a dead letter is gone before twice the retention)
redrive_body(key, now_ms)        a dead letter became a live job again
drop_dead_letter_body(key, now_ms) a dead letter was deleted
settle_body(key, now_ms)         after each of them: no TTL while a live job or a letter
                                 kept until deleted holds it; otherwise it expires when
                                 the last dead letter may be gone, or is deleted at once
                                 when nothing can reference it any more
names_body(key, ref)             whether KEYS entry `key` is the body key of id `ref`
]]
local function history_entry(at_ms, outcome, fields)
  local json = '{"at":' .. at_ms .. ',"outcome":"' .. outcome .. '"'
  for i = 1, #fields, 2 do
    local value = fields[i + 1]
    if type(value) == 'number' then
      json = json .. ',"' .. fields[i] .. '":' .. value
    elseif value and value ~= '' then
      json = json .. ',"' .. fields[i] .. '":"' .. value .. '"'
    end
  end
  return json .. '}'
end

local function json_string(json, key)
  local _, open = string.find(json, '"' .. key .. '":"', 1, true)
  if not open then return nil end
  -- The value ends at the first quote not escaped by a backslash.
  local pos = open + 1
  for _ = 1, 4096 do
    local at = string.find(json, '["\\]', pos)
    if not at then return nil end
    if string.sub(json, at, at) == '"' then return string.sub(json, open + 1, at - 1) end
    pos = at + 2
  end
  return nil
end

local function waiter_fields(field, waiter, url_key)
  local bar = string.find(field, '|', 1, true)
  local url = json_string(waiter, url_key or 'url')
  if url == '' then url = json_string(waiter, 'url') end
  return {'waiterId', string.sub(field, bar + 1), 'workflowRunId', string.sub(field, 1, bar - 1),
    'url', url}
end

local function registered_entry(field, waiter)
  return field .. '\n' .. waiter
end

local function list_bytes(items)
  local n = 0
  for _, item in ipairs(items) do n = n + #item + ITEM end
  return n
end

local function add_history(h, entries)
  if h.ttl_ms <= 0 or h.max <= 0 or #entries == 0 then return end
  local first = math.max(1, #entries - h.max + 1)
  local pushed = list_bytes({unpack(entries, first)})
  local ends = usage_keep(h.u, h.key, h.ttl_ms, pushed,
    function() return list_bytes(redis.call('LRANGE', h.key, 0, -1)) end)
  if redis.call('LPUSH', h.key, unpack(entries, first)) > h.max then
    -- The entries the trim drops leave the account with it.
    usage_add(h.u, ends, -list_bytes(redis.call('LRANGE', h.key, h.max, -1)))
    redis.call('LTRIM', h.key, 0, h.max - 1)
  end
  redis.call('PEXPIREAT', h.key, ends * 1000)
end

local function add_dead_letter(key, retention_ms, now_ms, fields, u, body_key)
  -- Charged with its fields, and the body it references (as if it held a copy), until
  -- it can be gone (twice the retention), or in "L" when kept until deleted; field z
  -- says where, for the script that deletes or sends it again (release_dead_letter).
  local bytes = ITEM
  for i = 1, #fields do bytes = bytes + #tostring(fields[i]) end
  if body_key then bytes = bytes + redis.call('HSTRLEN', body_key, 'b') end
  local bucket = 'L'
  if retention_ms > 0 then bucket = usage_end(now_ms, 2 * retention_ms) end
  usage_add(u, bucket, bytes)
  fields[#fields + 1] = 'z'
  fields[#fields + 1] = bucket .. ':' .. bytes
  local id = redis.call('XADD', key, '*', unpack(fields))
  if retention_ms > 0 then
    redis.call('XTRIM', key, 'MINID', now_ms - retention_ms)
    redis.call('PEXPIRE', key, retention_ms)
  end
  return id
end

local function release_dead_letter(u, fields)
  for f = 1, #fields, 2 do
    if fields[f] == 'z' then
      local bucket, bytes = string.match(fields[f + 1], '^([^:]+):(%d+)$')
      if bucket then usage_add(u, bucket, -tonumber(bytes)) end
    end
  end
end

local function settle_body(key, now_ms)
  local v = redis.call('HMGET', key, 'n', 'd', 'x')
  local n, d, x = tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0
  if n > 0 or (d > 0 and x < 0) then
    redis.call('PERSIST', key)
  elseif d > 0 and x > now_ms then
    redis.call('PEXPIREAT', key, x)
  else
    redis.call('DEL', key)
  end
end

local function hold_body(key, body, refs)
  redis.call('HSETNX', key, 'b', body)
  redis.call('HINCRBY', key, 'n', refs)
  redis.call('PERSIST', key)
end

local function release_body(key, now_ms)
  redis.call('HINCRBY', key, 'n', -1)
  settle_body(key, now_ms)
end

local function dead_letter_body(key, now_ms, retention_ms)
  redis.call('HINCRBY', key, 'n', -1)
  redis.call('HINCRBY', key, 'd', 1)
  local x = tonumber(redis.call('HGET', key, 'x')) or 0
  if retention_ms <= 0 then
    x = -1
  elseif x >= 0 then
    x = math.max(x, now_ms + 2 * retention_ms)
  end
  redis.call('HSET', key, 'x', x)
  settle_body(key, now_ms)
end

local function redrive_body(key, now_ms)
  redis.call('HINCRBY', key, 'n', 1)
  redis.call('HINCRBY', key, 'd', -1)
  settle_body(key, now_ms)
end

local function drop_dead_letter_body(key, now_ms)
  redis.call('HINCRBY', key, 'd', -1)
  settle_body(key, now_ms)
end

local function names_body(key, ref)
  local tail = ':body:' .. ref
  return key ~= nil and string.sub(key, -#tail) == tail
end

local function enqueue_delivery(stream, job, waiter, body, body_ref)
  if string.sub(waiter, 1, 6) ~= '{"id":' then
    local id = string.sub(job.field, string.find(job.field, '|', 1, true) + 1)
    waiter = '{"id":"' .. id .. '",' .. string.sub(waiter, 2)
  end
  local json = '{"m":"' .. job.msg .. '","k":"' .. job.kind .. '","t":"' .. job.tenant
    .. '","e":"' .. job.event .. '","n":' .. job.at_ms .. ',"q":' .. job.now_ms
    .. ',"a":0,"p":"' .. job.trace .. '","c":' .. job.ct .. ',"w":' .. waiter .. '}'
  if body_ref then
    redis.call('XADD', stream, '*', 'j', json, 'br', body_ref)
  else
    redis.call('XADD', stream, '*', 'j', json, 'b', body)
  end
end

local function waiter_bytes(tenant, event, field, waiter)
  -- The event hash field and its value, the deadline member and the run index member.
  return 3 * #field + #waiter + #tenant + #event + 2 + 3 * ITEM
end

local RUN_MEMBER = ITEM + 64

local function keep_run_event(u, run_key, event, ttl_ms)
  local added = redis.call('SISMEMBER', run_key, event) == 0
  local ends = usage_keep(u, run_key, ttl_ms, added and RUN_MEMBER or 0,
    function() return redis.call('SCARD', run_key) * RUN_MEMBER end)
  redis.call('SADD', run_key, event)
  redis.call('PEXPIREAT', run_key, ends * 1000)
end

local function budget_ends(t, budget_us)
  if not budget_us or budget_us <= 0 then return nil end
  return tonumber(t[1]) * 1000000 + tonumber(t[2]) + budget_us
end

local function budget_spent(ends)
  if not ends then return false end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2]) >= ends
end

local function call_chunked(command, key, items)
  for first = 1, #items, 1000 do
    redis.call(command, key, unpack(items, first, math.min(#items, first + 999)))
  end
end

-- A run of takes: take_waiter for each waiter, then finish_taking once (see the header).
local function start_taking(out, d)
  return {out = out, d = d, taken = 0, released = 0, fields = {}, waiters = {}, members = {},
    run_fields = {}}
end

local function take_waiter(st, field, waiter)
  local d, out = st.d, st.out
  st.taken = st.taken + 1
  local msg = d.msg_base .. st.taken
  enqueue_delivery(d.stream, {
    field = field, msg = msg, kind = 'event', tenant = d.tenant, event = d.event,
    at_ms = d.now_ms, now_ms = d.now_ms, trace = d.trace, ct = d.ct,
  }, waiter, d.body, d.body_ref)
  st.fields[st.taken] = field
  st.waiters[st.taken] = waiter
  st.members[st.taken] = d.tenant .. '|' .. field .. '|' .. d.event
  st.released = st.released + waiter_bytes(d.tenant, d.event, field, waiter)
  if string.sub(field, 1, 1) ~= '|' then st.run_fields[#st.run_fields + 1] = field end
  out[#out + 1] = field
  -- The reply carries waiter records up to d.budget bytes, then "" (the caller shows
  -- those waiters by id only), so a large fan-out never loads every record.
  if d.budget >= #waiter then
    d.budget = d.budget - #waiter
    out[#out + 1] = waiter
  else
    d.budget = -1
    out[#out + 1] = ''
  end
  out[#out + 1] = msg
end

local function finish_taking(st, left)
  local d, taken = st.d, st.taken
  if taken == 0 then return 0 end
  call_chunked('HDEL', d.ev, st.fields)
  call_chunked('ZREM', d.deadlines, st.members)
  call_chunked('ZREM', d.runs, st.run_fields)
  count_waiters(d.count, -taken)
  usage_add(d.history.u, 'L', -st.released)
  -- Each waiter adds two entries and the history keeps the newest max: only the entries
  -- of the last waiters can stay, counting the `left` still waiting for the request's
  -- later calls. Only those are built.
  local h = d.history
  if h.ttl_ms > 0 and h.max > 0 then
    local entries = {}
    for n = math.max(1, taken - math.ceil(h.max / 2) + 1 + (left or 0)), taken do
      local field, waiter = st.fields[n], st.waiters[n]
      entries[#entries + 1] = registered_entry(field, waiter)
      local entry = waiter_fields(field, waiter)
      entry[#entry + 1] = 'messageId'
      entry[#entry + 1] = d.msg_base .. n
      entries[#entries + 1] = history_entry(d.now_ms, 'notified', entry)
    end
    add_history(h, entries)
  end
  return taken
end

local function deliver_waiters(found, out, d)
  local st = start_taking(out, d)
  for i = 1, #found, 2 do
    -- One waiter at least per call (progress), then as many as the time budget allows.
    if st.taken > 0 and budget_spent(d.ends) then break end
    take_waiter(st, found[i], found[i + 1])
  end
  local taken = finish_taking(st, 0)
  return taken, taken < #found / 2
end
