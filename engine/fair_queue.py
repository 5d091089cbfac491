"""Fair turns on the render queue: one teacher's batch of 20 does not starve another's one.

RQ's queue is a Redis list that workers pop from the head. `FairQueue` keeps RQ's workers
and only changes where a new job goes into the list, with start-time fair queueing: each
job gets a tag, one more than the larger of the teacher's previous tag and the tag of the
job now at the head of the line, and the list stays ordered by tag (first come first on a
tie). Teachers' jobs therefore interleave, and a teacher who arrives after another's
batch waits for at most one of that batch's jobs per job of their own ahead.

A job may also ask for a priority (`PRIORITIES`), which never buys a turn from another
teacher:

- "high" goes ahead of the teacher's own waiting normal jobs, and of no one else's: it
  takes the place (the tag and the position) of the teacher's earliest waiting normal job,
  and that job and the teacher's normal jobs after it each move on to the teacher's next
  turn; the last of them takes the new turn a normal job would have taken. A teacher's
  high jobs keep their order among themselves. With no normal job of the teacher waiting,
  a high job is a normal one. Nothing goes in front of the job at the head of the line: it
  is next, whatever arrives.
- "low" goes behind every normal and high job, now and later; low jobs take fair turns
  among themselves.

The insert runs as one Lua script, so two bots enqueueing at once cannot interleave a
read and a write. Jobs pushed by plain RQ (a job requeued by RQ's own registries) carry
no tag and keep their place.
"""

from __future__ import annotations

from typing import Literal, get_args

from rq import Queue

PREFIX = "lessonreel:fair:"
OWNER_TTL_SECONDS = 7 * 86_400
Priority = Literal["low", "normal", "high"]
PRIORITIES: tuple[str, ...] = get_args(Priority)
# Low jobs' tags start here, so one ordered list holds both bands (a float keeps integers
# exact to 2**53: this leaves room for a billion years of renders).
LOW_BAND = 10**12

# KEYS: queue list, tags hash (job -> tag), last turn per owner hash for normal and high
#       jobs, for low jobs, clock (the largest tag given) of normal and high jobs, of low
#       jobs, owner of this job, priority of this job
# ARGV: job id, at_front ("1" or "0"), LOW_BAND, PREFIX
# A high job reads the owner and the priority of the jobs waiting (PREFIX .. "owner:" ..
# job id): keys not named in KEYS, which one Redis server allows and a cluster would not.
_INSERT = """
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
local low_band = tonumber(ARGV[3])
local priority = redis.call('GET', KEYS[8]) or 'normal'
local low = priority == 'low'
local waiting, tags, head = {}, {}, nil
for index, id in ipairs(ids) do
  local tag = tonumber(redis.call('HGET', KEYS[2], id))
  waiting[id] = true
  tags[index] = tag or false
  if tag and (tag >= low_band) == low and (head == nil or tag < head) then head = tag end
end
-- Forget the tags of jobs that left the line (a worker took them, or they were cancelled).
for _, id in ipairs(redis.call('HKEYS', KEYS[2])) do
  if not waiting[id] then redis.call('HDEL', KEYS[2], id) end
end
if ARGV[2] == '1' then
  redis.call('LPUSH', KEYS[1], ARGV[1])
  return 0
end
local owner = redis.call('GET', KEYS[7]) or ''
local last = low and KEYS[4] or KEYS[3]
local clock = low and KEYS[6] or KEYS[5]
local base = low and low_band or 0
local now = head and (head - 1) or tonumber(redis.call('GET', clock) or base)
local turn = math.max(now, tonumber(redis.call('HGET', last, owner) or base)) + 1
redis.call('HSET', last, owner, turn)
if turn > tonumber(redis.call('GET', clock) or base) then redis.call('SET', clock, turn) end
local job = ARGV[1]  -- the job that goes in at `turn`
if priority == 'high' then
  -- Into the place of the owner's earliest waiting normal job (never the head's); it and
  -- the owner's jobs after it each move into the place of the next, and the last one is
  -- left to go in at `turn`.
  local found = false
  for index, id in ipairs(ids) do
    local tag = tags[index]
    if index > 1 and tag and tag < low_band
        and redis.call('GET', ARGV[4] .. 'owner:' .. id) == owner
        and (found or redis.call('GET', ARGV[4] .. 'priority:' .. id) ~= 'high') then
      found = true
      redis.call('LSET', KEYS[1], index - 1, job)
      redis.call('HSET', KEYS[2], job, tag)
      ids[index], job = job, id
    end
  end
end
redis.call('HSET', KEYS[2], job, turn)
for index, id in ipairs(ids) do
  local other = tags[index]
  if index > 1 and other and other > turn then  -- never in front of the head of the line
    redis.call('LINSERT', KEYS[1], 'BEFORE', id, job)
    return tostring(turn)
  end
end
redis.call('RPUSH', KEYS[1], job)
return tostring(turn)
"""


class FairQueue(Queue):
    """An RQ queue whose new jobs take fair turns between their owners (see the module)."""

    def set_owner(self, job_id: str, owner: str, priority: Priority = "normal") -> None:
        """Name the teacher a job belongs to, and its priority; call before enqueueing it."""
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, not {priority!r}")
        with self.connection.pipeline() as pipe:
            pipe.set(_owner_key(job_id), owner, ex=OWNER_TTL_SECONDS)
            pipe.set(_priority_key(job_id), priority, ex=OWNER_TTL_SECONDS)
            pipe.execute()

    def push_job_id(self, job_id: str, pipeline=None, at_front: bool = False) -> None:
        script = self.connection.register_script(_INSERT)
        fair = f"{PREFIX}{self.name}"
        keys = [self.key, f"{fair}:tags", f"{fair}:last", f"{fair}:last:low",
                f"{fair}:clock", f"{fair}:clock:low", _owner_key(job_id), _priority_key(job_id)]
        script(keys=keys, args=[job_id, "1" if at_front else "0", LOW_BAND, PREFIX],
               client=pipeline)


def _owner_key(job_id: str) -> str:
    return f"{PREFIX}owner:{job_id}"


def _priority_key(job_id: str) -> str:
    return f"{PREFIX}priority:{job_id}"
