--[[
shared/usage.lua: the tenant's stored-bytes account (the `stored_bytes` quota), joined in
front of every script that stores or removes tenant data. Not a script of its own.

The account is one HASH per tenant and partition, `usage:<tenant>` (u.key), charged in
the script that writes an item and released in the script that removes it:
  field "L"        bytes of items that leave only by a script (waiters; dead letters kept
                   until deleted)
  field "<end>"    bytes of items that are gone by <end> (unix seconds) at the latest: they
                   expire by TTL, or a script released them earlier. Past fields count for
                   nothing and are dropped (usage_prune), so an item that leaves by TTL,
                   where no script runs, stops counting without any write: no drift.
  field "p"        when the next prune is due (unix seconds)
The tenant's usage in the partition is L + the fields whose <end> is in the future
(`src/store/usage.rs` sums them over the partitions). An item is counted until the end of
its bucket: buckets are 1 s wide for lifetimes under a minute, 60 s under an hour and an
hour beyond, so a TTL item is counted at most that much longer than it lives.

Bytes charged for an item: its value bytes (and member or field name) plus ITEM, a
fixed overhead standing for Redis's own per-item cost.

u = {key = usage key, now_ms = Redis TIME in ms}; a nil u.key charges nothing.

usage_end(now_ms, ttl_ms) -> the bucket (unix seconds) an item living ttl_ms ends in
usage_add(u, field, bytes)  add (or, negative, release) bytes in a bucket; nothing in a
                            past bucket; a field at zero or below is deleted; a new
                            field prunes the past ones (usage_prune, at most once a minute)
usage_keep(u, key, ttl_ms, delta, held) -> end
  For keys whose items all share the key's TTL, renewed by each write (history lists,
  saved lists, run sets), that cannot note where they are charged: the whole key is
  charged to the bucket of its expiry, and the key expires at the bucket's end (so it
  lives up to one bucket longer than ttl_ms; a saved item still expires by its own time).
  Items that can note it are charged where their expiry falls and expire exactly
  (dead letters: field z; workflow runs: fields z, zb; idempotency records and cancel
  tombstones are written once and charged once).
  Call it before writing: it charges `delta` bytes to that bucket, moving the key's
  bytes already charged (held(): computed only when the bucket moves) when the key must
  now live longer. The caller then sets the expiry: PEXPIREAT key end * 1000
  (never earlier than the key's current one).
]]
local ITEM = 48

local function usage_end(now_ms, ttl_ms)
  local g = 3600
  if ttl_ms < 60000 then g = 1 elseif ttl_ms < 3600000 then g = 60 end
  return math.ceil((now_ms + ttl_ms) / 1000 / g) * g
end

local function usage_prune(u)
  local now_s = math.floor(u.now_ms / 1000)
  local due = tonumber(redis.call('HGET', u.key, 'p') or '0')
  if due > now_s then return end
  local all = redis.call('HGETALL', u.key)
  local dead, live = {}, 0
  for i = 1, #all, 2 do
    local f = all[i]
    if f ~= 'L' and f ~= 'p' and tonumber(f) <= now_s then
      dead[#dead + 1] = f
    elseif f ~= 'p' then
      live = live + 1
    end
  end
  if live == 0 then
    redis.call('DEL', u.key)
    return
  end
  if #dead > 0 then redis.call('HDEL', u.key, unpack(dead)) end
  redis.call('HSET', u.key, 'p', now_s + 60)
end

local function usage_add(u, field, bytes)
  if u.key == nil or bytes == 0 then return end
  field = tostring(field)
  if field ~= 'L' and tonumber(field) * 1000 <= u.now_ms then return end
  local now = redis.call('HINCRBY', u.key, field, bytes)
  if now <= 0 then
    redis.call('HDEL', u.key, field)
  elseif now == bytes then
    -- A new bucket: the time to drop the past ones (at most once a minute).
    usage_prune(u)
  end
end

local function usage_keep(u, key, ttl_ms, delta, held)
  local target = usage_end(u.now_ms, ttl_ms)
  local current = redis.call('PEXPIRETIME', key)
  if current > 0 then
    local cur = math.floor(current / 1000)
    if cur >= target then
      usage_add(u, cur, delta)
      return cur
    end
    local before = held()
    usage_add(u, cur, -before)
    usage_add(u, target, before + delta)
  else
    usage_add(u, target, delta)
  end
  return target
end
