-- celgate token buckets: check and take from every bucket of one call, atomically.
--
-- KEYS[i]      bucket key (already prefixed)
-- ARGV[1]      cost (tokens to take from each bucket)
-- ARGV[2]      "take" or "peek" (peek reads and writes nothing)
-- ARGV[2i+1]   max of bucket i (burst)
-- ARGV[2i+2]   window of bucket i, in milliseconds (refill rate = max / window)
--
-- Stored value: "<tokens> <stamp_ms> <max> <window_ms>" as a string, written with a PX equal
-- to the time until the bucket is full again, so a full bucket simply does not exist.
-- Time is the server's (TIME), so every gateway replica shares one clock.
--
-- Returns {admitted (0|1), level_1, ..., level_n}; levels are strings because Valkey would
-- truncate Lua numbers to integers. When admitted, level_i is what is left after the take;
-- otherwise it is the current level, from which the caller computes retry_after.

local EPSILON = 1e-9
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local cost = tonumber(ARGV[1])
local take = ARGV[2] == 'take'

local function fmt(x)
  return string.format('%.17g', x)
end

local function level(key, max, window)
  local raw = redis.call('GET', key)
  if not raw then
    return max
  end
  local tokens, stamp = string.match(raw, '^(%S+) (%S+)')
  tokens, stamp = tonumber(tokens), tonumber(stamp)
  if not tokens or not stamp then
    return max  -- not ours or corrupt: treat as full rather than fail every call
  end
  local elapsed = now - stamp
  if elapsed <= 0 then
    return tokens
  end
  return math.min(max, tokens + elapsed * max / window)
end

local n = #KEYS
local levels = {}
local admitted = take
for i = 1, n do
  local max, window = tonumber(ARGV[2 * i + 1]), tonumber(ARGV[2 * i + 2])
  levels[i] = level(KEYS[i], max, window)
  if levels[i] + EPSILON < cost then
    admitted = false
  end
end

local out = {admitted and 1 or 0}
for i = 1, n do
  local max, window = tonumber(ARGV[2 * i + 1]), tonumber(ARGV[2 * i + 2])
  local value = levels[i]
  if admitted then
    value = math.max(0, value - cost)
    local ttl = math.max(1, math.ceil((max - value) * window / max))
    redis.call('SET', KEYS[i], fmt(value) .. ' ' .. fmt(now) .. ' ' .. max .. ' ' .. fmt(window),
      'PX', ttl)
  end
  out[i + 1] = fmt(value)
end
return out
