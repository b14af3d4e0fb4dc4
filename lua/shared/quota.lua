--[[
shared/quota.lua: functions prepended to the scripts that check a tenant's rate limit or
count its waiters (rate_limit, wait, notify, notify_run, cancel, expire_due). Not a script
of its own: src/store/scripts.rs joins this text and the script's into one source.

gcra(bucket, rate, burst, now_us) -> allowed, remaining, reset_us, retry_after_us
  bucket  STRING key: the bucket's theoretical arrival time (TAT), µs since the epoch
  rate    requests per second (> 0)
  burst   requests allowed at once from a full bucket (>= 1)
  now_us  Redis TIME in µs
  The generic cell rate algorithm: admits at most burst + rate × T requests in any window
  of T seconds, however many api replicas share the bucket (it is one key, changed in one
  script). Writes only when it admits; the key expires when the bucket is full again.
  remaining: requests still allowed at once; reset_us: when the bucket is full again;
  retry_after_us: how long until a request is admitted (0 when admitted).

rate_refusal(bucket, rate, burst, t) -> nil, or {"limited", remaining, resetMs, retryAfterMs}
  gcra folded into an operation script: t is the reply of TIME; rate 0 checks nothing.

count_waiters(count, delta)
  count   STRING key: a tenant's waiters registered in the partition
  Adds delta (may be negative); deletes the key at zero or below.
]]
local function gcra(bucket, rate, burst, now_us)
  local interval = 1000000 / rate
  local tat = tonumber(redis.call('GET', bucket) or '0') or 0
  if tat < now_us then tat = now_us end
  local allow_at = tat + interval - burst * interval
  if now_us < allow_at then
    return false, 0, tat, allow_at - now_us
  end
  -- Rounded up, so rounding never admits more than the rate.
  local new_tat = math.ceil(tat + interval)
  redis.call('SET', bucket, string.format('%.0f', new_tat),
    'PX', math.ceil((new_tat - now_us) / 1000) + 1)
  return true, math.floor((now_us - allow_at) / interval + 1e-6), new_tat, 0
end

local function rate_refusal(bucket, rate, burst, t)
  if rate <= 0 then return nil end
  local ok, remaining, reset_us, retry_us =
    gcra(bucket, rate, burst, tonumber(t[1]) * 1000000 + tonumber(t[2]))
  if ok then return nil end
  return {'limited', remaining, math.ceil(reset_us / 1000), math.ceil(retry_us / 1000)}
end

local function count_waiters(count, delta)
  if delta == 0 then return end
  if redis.call('INCRBY', count, delta) <= 0 then
    redis.call('DEL', count)
  end
end
