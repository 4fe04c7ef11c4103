-- GCRA rate limit on one bucket, shared by every gateway replica.
--
-- KEYS[1]  the bucket
-- ARGV[1]  emission interval in microseconds (> 0)
-- ARGV[2]  burst (>= 1): calls allowed at once from a full bucket
-- ARGV[3]  cost of this call (1)
--
-- Returns {allowed (1 or 0), retry_after_us (0 when allowed)}.
--
-- The bucket stores its theoretical arrival time (TAT) in microseconds of server time, so
-- the replicas' clocks do not matter. It expires when the bucket is full again: an absent key
-- and a full bucket mean the same thing, so idle buckets cost no memory.

local key = KEYS[1]
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])

local t = redis.call('TIME')
-- Microseconds since the epoch (~1.8e15) are exact in a Lua double (up to 2^53).
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local tat = tonumber(redis.call('GET', key))
if tat == nil or tat < now then
  tat = now
end

local new_tat = tat + interval * cost
local limit = interval * burst

if new_tat - now > limit then
  -- Refused: the bucket is left as it is; the call fits once new_tat - limit is reached.
  return {0, new_tat - limit - now}
end

-- Time until the bucket is full again, in whole milliseconds (at least 1, as PX 0 is an
-- error), capped well below what Redis accepts so an absurd rate cannot fail the script.
local ttl = math.ceil((new_tat - now) / 1000)
if ttl < 1 then ttl = 1 end
if ttl > 1e15 then ttl = 1e15 end
-- '%.0f', not tostring: Lua 5.1 prints numbers with 14 significant digits, which would
-- round a microsecond timestamp.
redis.call('SET', key, string.format('%.0f', new_tat), 'PX', string.format('%.0f', ttl))
return {1, 0}
