--[[
rotate_signing_keys: promote the tenant's next signing key to current and install a new
next key, in one step: two rotations at the same time apply one after the other, so no
key handed out by either is lost (a read-then-write rotation could overwrite the other's
new key after it was returned).

KEYS[1] tenant (HASH) signing_current, signing_next

ARGV[1] the new next key

Returns {current, next} after the rotation, or {} when the tenant does not exist.
]]
local next_key = redis.call('HGET', KEYS[1], 'signing_next')
if not next_key then return {} end
redis.call('HSET', KEYS[1], 'signing_current', next_key, 'signing_next', ARGV[1])
return {next_key, ARGV[1]}
