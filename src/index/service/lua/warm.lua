-- One chunk of a partition read back (see shared.rs), oldest first from after a member:
-- nil when the partition is not complete for this Redis server (ARGV[2], its run id).
-- KEYS[1] the readiness hash, KEYS[2] the partition's sorted set, KEYS[3] rows hash.
-- ARGV[1] the partition, ARGV[3] where to start ('-' or '(' .. the last member read),
-- ARGV[4] how many members at most. Returns {members, rows}.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return nil
end
local ms = redis.call('ZRANGEBYLEX', KEYS[2], ARGV[3], '+', 'LIMIT', 0, tonumber(ARGV[4]))
if #ms == 0 then
  return {{}, {}}
end
local ids = {}
for i, m in ipairs(ms) do
  ids[i] = string.match(m, '\t0*(%d+)$')
end
return {ms, redis.call('HMGET', KEYS[3], unpack(ids))}
