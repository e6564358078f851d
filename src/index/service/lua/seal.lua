-- Ends a load of one partition (see shared.rs): members the load did not list and that no
-- change since its start (ARGV[1]) placed there are dropped; the partition is marked
-- complete for this Redis server (ARGV[3], its run id).
-- KEYS[1] versions hash, KEYS[2] rows hash, KEYS[3] the partition's sorted set,
-- KEYS[4] the load's members, KEYS[5] the readiness hash. ARGV[2] the partition.
local since, part = tonumber(ARGV[1]), ARGV[2]
local dropped = 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  if not redis.call('ZSCORE', KEYS[4], m) then
    local id = string.match(m, '\t0*(%d+)$')
    local cur = redis.call('HGET', KEYS[1], id)
    local cv, cp, cs, cm
    if cur then
      cv, cp, cs, cm = string.match(cur, '^(%d+)\t([^\t]*)\t(%d+)\t(.*)$')
    end
    if not cur or cp ~= part or tonumber(cs) <= since then
      redis.call('ZREM', KEYS[3], m)
      dropped = dropped + 1
      if cur and cp == part then
        redis.call('HSET', KEYS[1], id, cv .. '\t\t' .. cs .. '\t' .. cm)
        redis.call('HDEL', KEYS[2], id)
      end
    end
  end
end
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[5], part, ARGV[3])
return dropped
