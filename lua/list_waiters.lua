--[[
list_waiters: one page of an event's waiters, bounded in count and in bytes, so a read
never loads more into Redis' reply (or an api process) than the caller allows, however
large the waiters are.

KEYS[1] event waiters (HASH) field "<run>|<waiterId>" -> waiter JSON

ARGV[1] cursor      "<hscan cursor>.<skip>": where the previous page ended ("0.0": start);
                    skip counts the waiters of that HSCAN batch already returned
ARGV[2] max count   most waiters returned
ARGV[3] max bytes   most bytes of waiter JSON returned (the first waiter of a page is
                    returned whatever its size, so a page always makes progress, unless
                    ARGV[4] says otherwise)
ARGV[4] strict      "1": even the first waiter must fit in ARGV[3] (a later call filling
                    the rest of one response page); "0" otherwise

Returns {next cursor ("" when the listing is complete), field, json, field, json, ...}.
The caller keeps ARGV[2] small enough for the call to stay well under 1 ms (the api asks
100 at a time: src/api/waiters.rs) and makes several calls for a larger page.
Like HSCAN: a waiter present for the whole listing is returned at least once; one added
or removed meanwhile may or may not be.
]]
local rcall = redis.call
local scan, skip = string.match(ARGV[1], '^(%d+)%.(%d+)$')
if not scan then scan, skip = '0', '0' end
skip = tonumber(skip)
local max_count, max_bytes = tonumber(ARGV[2]), tonumber(ARGV[3])
local strict = ARGV[4] == '1'
local out = {''}
local count, bytes = 0, 0
for _ = 1, 10000 do
  local reply = rcall('HSCAN', KEYS[1], scan, 'COUNT', 50)
  local items = reply[2]
  for i = 1, #items, 2 do
    local pos = (i + 1) / 2
    if pos > skip then
      local size = #items[i + 1]
      if count >= max_count or ((count > 0 or strict) and bytes + size > max_bytes) then
        out[1] = scan .. '.' .. (pos - 1)
        return out
      end
      out[#out + 1] = items[i]
      out[#out + 1] = items[i + 1]
      count = count + 1
      bytes = bytes + size
    end
  end
  skip = 0
  scan = reply[1]
  if scan == '0' then return out end
  if count >= max_count or bytes >= max_bytes then
    out[1] = scan .. '.0'
    return out
  end
end
out[1] = scan .. '.0'
return out
