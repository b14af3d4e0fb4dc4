--[[
reclaim: take over delivery entries that another consumer left pending too long (it
crashed, or hangs), or dead-letter the ones already handed out too often (poison entries:
they kill or hang every worker that takes them).

The caller proposes candidates it saw idle (XPENDING IDLE); this script re-checks each one
atomically, so two workers reclaiming at once never both take an entry, and an entry that
was acknowledged meanwhile is left alone.

KEYS[1]     deliveries   (STREAM) delivery jobs of the partition; consumer group ARGV[1]
KEYS[2..n]  dead letters (STREAM) the dead letters of the tenants of the candidates the
                                  caller saw at or over the limit (none when there are none),
            each followed by its tenant's stored bytes (HASH, shared/usage.lua: a poison
            dead letter is charged there), and bodies (HASH) the body keys those
            candidates reference

ARGV[1] consumer group
ARGV[2] consumer         the consumer taking the entries over
ARGV[3] min idle         milliseconds an entry must have been idle to be taken
ARGV[4] max deliveries   an entry handed out this many times is dead-lettered, not taken
ARGV[5] note             last error recorded on a poison dead letter
ARGV[6] retention        milliseconds dead letters are kept (0 = until deleted or sent again)
ARGV[7..] candidates, in threes: entry id, index into KEYS of its tenant's dead letters
          (0 when the caller saw it below the limit: it is never dead-lettered then), index
          into KEYS of the body key its entry references (0 for a body inline)

Returns {claimed, dead, gone}:
  claimed  entries now owned by ARGV[2], as XCLAIM returns them ({id, {field, value, ...}})
  dead     flat {entryId, deadLetterId, ...} of the entries moved to the dead letters
  gone     ids that were pending but whose stream entry no longer exists (dropped from the
           pending list; their payload was lost before this call: an alarm for the caller)

Invariants: an entry leaves the pending list only by XCLAIM to ARGV[2] or by XACK in the
same step that writes its dead letter, so nothing is lost; a dead letter gets field
`d` = the times the entry was handed out without an outcome. A poison entry referencing a
body key is dead-lettered only with that key (else it waits for the next call), and its
dead letter keeps the body (shared/delivery.lua dead_letter_body).
]]
local rcall = redis.call
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local min_idle, max_deliveries, note = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local retention_ms = tonumber(ARGV[6])

-- Validate before the first write: every dead-letter index names a declared key.
for i = 7, #ARGV, 3 do
  local k, kb = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  if k == nil or k < 0 or k == 1 or k > #KEYS then
    return redis.error_reply('reclaim: candidate ' .. ARGV[i] .. ' names no dead-letter key')
  end
  if kb == nil or kb < 0 or kb == 1 or kb > #KEYS then
    return redis.error_reply('reclaim: candidate ' .. ARGV[i] .. ' names no body key')
  end
end

local t = rcall('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local claimed, dead, gone = {}, {}, {}
for i = 7, #ARGV, 3 do
  local id, k, kb = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local pending = rcall('XPENDING', stream, group, 'IDLE', min_idle, id, id, 1)
  if #pending == 1 then
    local deliveries = tonumber(pending[1][4])
    if deliveries >= max_deliveries then
      -- Without its tenant's key (the caller saw it below the limit) it waits for the next call.
      if k > 0 then
        local entry = rcall('XRANGE', stream, id, id)
        local job, body, ref = '', '', nil
        if #entry > 0 then
          local fields = entry[1][2]
          for f = 1, #fields, 2 do
            if fields[f] == 'j' then job = fields[f + 1]
            elseif fields[f] == 'b' then body = fields[f + 1]
            elseif fields[f] == 'br' then ref = fields[f + 1] end
          end
        end
        if #entry == 0 then
          rcall('XACK', stream, group, id)
          gone[#gone + 1] = id
        elseif ref == nil or (kb > 0 and names_body(KEYS[kb], ref)) then
          rcall('XACK', stream, group, id)
          rcall('XDEL', stream, id)
          local fields = {'j', job, 'b', body, 's', 0, 'r', note, 'at', now_ms, 'd', deliveries}
          if ref then
            dead_letter_body(KEYS[kb], now_ms, retention_ms)
            fields[3], fields[4] = 'br', ref
          end
          local dl = add_dead_letter(KEYS[k], retention_ms, now_ms, fields,
            {key = KEYS[k + 1], now_ms = now_ms}, ref and KEYS[kb] or nil)
          dead[#dead + 1] = id
          dead[#dead + 1] = dl
        end
      end
    else
      local taken = rcall('XCLAIM', stream, group, consumer, min_idle, id)
      if #taken == 0 then
        -- Redis 7 drops a pending id whose entry was deleted and returns nothing for it.
        gone[#gone + 1] = id
      else
        claimed[#claimed + 1] = taken[1]
      end
    end
  end
end
return {claimed, dead, gone}
