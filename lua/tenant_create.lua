--[[
tenant_create: write a new tenant's record, all fields at once, unless the tenant exists.
A record is never half written: creation either wrote every field or nothing.

KEYS[1] tenant (HASH) name, created_at, token_sha256, signing_current, signing_next

ARGV    field, value pairs of the new record

Returns 1 when created, 0 when the tenant existed (nothing written).
]]
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
