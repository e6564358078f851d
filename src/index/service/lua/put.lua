-- Applies rows to the index's copy in Redis under the version rule (see shared.rs).
-- KEYS[1] versions hash, KEYS[2] rows hash, KEYS[3] change counter,
-- KEYS[4] the members of a load in progress, or KEYS[3] again when this is not a load
--   (not '': on a Redis Cluster every key a script names must be in the index's slot).
-- ARGV[1] the prefix of the partitions' sorted sets; then 5 per row:
--   id, version, partition, kept ('1' or '0'), member (the sort text, a tab, the id
--   zero-padded to 20 digits: the sets order by bytes); then, after all rows, their bodies
--   in the same order (ARGV[2 + 5n + i]).
-- Returns how many rows changed the copy.
local zset = ARGV[1]
local load = KEYS[4] ~= KEYS[3]
local n = (#ARGV - 1) / 6
local changed = 0
for i = 0, n - 1 do
  local a = 2 + 5 * i
  local id, vs, part, kept, m = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local v = tonumber(vs)
  local body = ARGV[2 + 5 * n + i]
  local cur = redis.call('HGET', KEYS[1], id)
  local apply = true
  if cur then
    local cv, cp, _, cm = string.match(cur, '^(%d+)\t([^\t]*)\t(%d+)\t(.*)$')
    cv = tonumber(cv)
    if cv > v then
      apply = false
    elseif cv == v then
      apply = false
      if load and cp == part and kept == '1' then
        redis.call('ZADD', KEYS[4], 0, cm)
      end
    elseif cp ~= '' then
      redis.call('ZREM', zset .. cp, cm)
    end
  end
  if apply then
    local seq = redis.call('INCR', KEYS[3])
    if kept == '1' then
      redis.call('HSET', KEYS[1], id, vs .. '\t' .. part .. '\t' .. seq .. '\t' .. m)
      redis.call('ZADD', zset .. part, 0, m)
      redis.call('HSET', KEYS[2], id, body)
      if load then
        redis.call('ZADD', KEYS[4], 0, m)
      end
    else
      redis.call('HSET', KEYS[1], id, vs .. '\t\t' .. seq .. '\t' .. m)
      redis.call('HDEL', KEYS[2], id)
    end
    changed = changed + 1
  end
end
return changed
