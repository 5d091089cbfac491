"""Fair turns on the render queue: one teacher's batch of 20 does not starve another's one.

RQ's queue is a Redis list that workers pop from the head. `FairQueue` keeps RQ's workers
and only changes where a new job goes into the list, with start-time fair queueing: each
job gets a tag, one more than the larger of the teacher's previous tag and the tag of the
job now at the head of the line, and the list stays ordered by tag (first come first on a
tie). Teachers' jobs therefore interleave, and a teacher who arrives after another's
batch waits for at most one of that batch's jobs per job of their own ahead.

The insert runs as one Lua script, so two bots enqueueing at once cannot interleave a
read and a write. Jobs pushed by plain RQ (a job requeued by RQ's own registries) carry
no tag and keep their place.
"""

from __future__ import annotations

from rq import Queue

PREFIX = "lessonreel:fair:"
OWNER_TTL_SECONDS = 7 * 86_400

# KEYS: queue list, tags hash (job -> tag), last tag per owner hash, clock, owner of this job
# ARGV: job id, at_front ("1" or "0")
_INSERT = """
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
local waiting, head = {}, nil
for _, id in ipairs(ids) do
  local tag = tonumber(redis.call('HGET', KEYS[2], id))
  waiting[id] = tag or false
  if tag and (head == nil or tag < head) then head = tag end
end
-- Forget the tags of jobs that left the line (a worker took them, or they were cancelled).
for _, id in ipairs(redis.call('HKEYS', KEYS[2])) do
  if waiting[id] == nil then redis.call('HDEL', KEYS[2], id) end
end
if ARGV[2] == '1' then
  redis.call('LPUSH', KEYS[1], ARGV[1])
  return 0
end
local owner = redis.call('GET', KEYS[5]) or ''
local now = head and (head - 1) or tonumber(redis.call('GET', KEYS[4]) or '0')
local tag = math.max(now, tonumber(redis.call('HGET', KEYS[3], owner) or '0')) + 1
redis.call('HSET', KEYS[2], ARGV[1], tag)
redis.call('HSET', KEYS[3], owner, tag)
if tag > tonumber(redis.call('GET', KEYS[4]) or '0') then redis.call('SET', KEYS[4], tag) end
for _, id in ipairs(ids) do
  local other = waiting[id]
  if other and other > tag then
    redis.call('LINSERT', KEYS[1], 'BEFORE', id, ARGV[1])
    return tag
  end
end
redis.call('RPUSH', KEYS[1], ARGV[1])
return tag
"""


class FairQueue(Queue):
    """An RQ queue whose new jobs take fair turns between their owners (see the module)."""

    def set_owner(self, job_id: str, owner: str) -> None:
        """Name the teacher a job belongs to; call before enqueueing it."""
        self.connection.set(_owner_key(job_id), owner, ex=OWNER_TTL_SECONDS)

    def push_job_id(self, job_id: str, pipeline=None, at_front: bool = False) -> None:
        script = self.connection.register_script(_INSERT)
        keys = [self.key, f"{PREFIX}{self.name}:tags", f"{PREFIX}{self.name}:last",
                f"{PREFIX}{self.name}:clock", _owner_key(job_id)]
        script(keys=keys, args=[job_id, "1" if at_front else "0"], client=pipeline)


def _owner_key(job_id: str) -> str:
    return f"{PREFIX}owner:{job_id}"
