--[[
rate_limit: check (and take from) one of a tenant's rate limits, on its own.

Used where the check cannot be folded into the operation's script: reads and key
management (no script of their own), and every route on Redis Cluster, where the bucket
lives in the tenant's home partition, another slot than the event's. wait, notify and
notify_run fold the same check into their own script on standalone Redis.

KEYS[1] bucket         (STRING) the limit's GCRA state (TAT, µs); see shared/quota.lua

ARGV[1] rate           requests per second (> 0)
ARGV[2] burst          requests allowed at once (>= 1)

Returns {admitted, remaining, resetMs, retryAfterMs}: admitted 1 or 0; requests still
allowed at once; when the bucket is full again (unix ms); how long until a request is
admitted (ms, 0 when admitted).

Invariants: at most burst + rate × T admitted in any T seconds, across any number of api
replicas; a refused request writes nothing.
]]
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ok, remaining, reset_us, retry_us = gcra(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), now_us)
return {ok and 1 or 0, remaining, math.ceil(reset_us / 1000), math.ceil(retry_us / 1000)}
