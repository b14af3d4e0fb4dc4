--[[
shared/delivery.lua: functions joined (after shared/quota.lua) in front of the scripts
that enqueue deliveries, write event history or dead letters (wait, notify, notify_run,
expire_due, dead_letter, reclaim). Not a script of its own.

enqueue_delivery(stream, job, waiter, body)
  XADDs one delivery job to the partition's stream: field j (the job JSON) and b (the body,
  "" for a timeout). `job` names its parts:
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

deliver_waiters(found, out, d) -> taken
  found    flat list field, waiter JSON, field, waiter JSON… (HGETALL/HSCAN of the event)
  d        {ev, runs, deadlines, stream, count, msg_base, tenant, event, now_ms, trace, ct,
            body, history}
  For each waiter: enqueue its event delivery (message id msg_base .. n, n = 1, 2…), remove
  it, its run index entry (d.runs, for a run waiter) and its deadline, append field,
  waiter JSON and message id to `out`; then lower the
  tenant's waiter count by the number taken, and add each waiter's registered record and
  a "notified" entry to the event's history.

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
  h = {key, ttl_ms, max}: LPUSH the entries (oldest first; only the newest max can stay),
  LTRIM to max, PEXPIRE ttl_ms. Nothing when ttl_ms or max is 0 (history disabled).
  Written in the script that changed the state: no round trip of its own.

add_dead_letter(key, retention_ms, now_ms, fields) -> dead letter id
  XADDs the fields (flat list) to a tenant's dead letters in the partition. With a
  retention (ms, > 0) it also drops the letters older than that (XTRIM MINID: stream ids
  are Redis times) and lets the key expire that long after its newest letter, so every
  dead letter is kept at least `retention_ms` and gone before twice that.
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

local function add_history(h, entries)
  if h.ttl_ms <= 0 or h.max <= 0 or #entries == 0 then return end
  redis.call('LPUSH', h.key, unpack(entries, math.max(1, #entries - h.max + 1)))
  redis.call('LTRIM', h.key, 0, h.max - 1)
  redis.call('PEXPIRE', h.key, h.ttl_ms)
end

local function add_dead_letter(key, retention_ms, now_ms, fields)
  local id = redis.call('XADD', key, '*', unpack(fields))
  if retention_ms > 0 then
    redis.call('XTRIM', key, 'MINID', now_ms - retention_ms)
    redis.call('PEXPIRE', key, retention_ms)
  end
  return id
end

local function enqueue_delivery(stream, job, waiter, body)
  if string.sub(waiter, 1, 6) ~= '{"id":' then
    local id = string.sub(job.field, string.find(job.field, '|', 1, true) + 1)
    waiter = '{"id":"' .. id .. '",' .. string.sub(waiter, 2)
  end
  local json = '{"m":"' .. job.msg .. '","k":"' .. job.kind .. '","t":"' .. job.tenant
    .. '","e":"' .. job.event .. '","n":' .. job.at_ms .. ',"q":' .. job.now_ms
    .. ',"a":0,"p":"' .. job.trace .. '","c":' .. job.ct .. ',"w":' .. waiter .. '}'
  redis.call('XADD', stream, '*', 'j', json, 'b', body)
end

local function deliver_waiters(found, out, d)
  local taken = 0
  local entries = {}
  local run_fields = {}
  for i = 1, #found, 2 do
    local field, waiter = found[i], found[i + 1]
    taken = taken + 1
    local msg = d.msg_base .. taken
    enqueue_delivery(d.stream, {
      field = field, msg = msg, kind = 'event', tenant = d.tenant, event = d.event,
      at_ms = d.now_ms, now_ms = d.now_ms, trace = d.trace, ct = d.ct,
    }, waiter, d.body)
    redis.call('HDEL', d.ev, field)
    if string.sub(field, 1, 1) ~= '|' then run_fields[#run_fields + 1] = field end
    redis.call('ZREM', d.deadlines, d.tenant .. '|' .. field .. '|' .. d.event)
    out[#out + 1] = field
    out[#out + 1] = waiter
    out[#out + 1] = msg
    entries[#entries + 1] = registered_entry(field, waiter)
    local fields = waiter_fields(field, waiter)
    fields[#fields + 1] = 'messageId'
    fields[#fields + 1] = msg
    entries[#entries + 1] = history_entry(d.now_ms, 'notified', fields)
  end
  if #run_fields > 0 then redis.call('ZREM', d.runs, unpack(run_fields)) end
  count_waiters(d.count, -taken)
  add_history(d.history, entries)
  return taken
end
