"""A job admitted in one Redis round trip: duplicate check, backpressure, record, push, count.

The job is built by RQ in process (Queue.create_job, as Queue.enqueue builds it) and its
hash written by one Lua script with the same fields RQ's unique enqueue writes, so a stock
`rq worker`, rq-dashboard, retries, callbacks, cancel and recovery see an ordinary RQ job.
One field is ours: the content digest, which the script compares for idempotency keys.
A batch sends one script call per job in one pipeline: one round trip for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.utils import now

from preview_worker import keys

DIGEST_FIELD = "preview_content_digest"  # ours, beside RQ's fields; RQ reads none it does not know

# KEYS: 1 job hash, 2 its queue, 3 RQ's set of queues, 4 accepted jobs (recovery's watch),
#       5 outcome counts, 6.. every queue (their lengths are the backpressure).
# ARGV: 1 job id, 2 queue name, 3 most jobs queued, 4 the watch's deadline, 5 content digest,
#       6 "1" when the job id is an idempotency key, 7 the job's TTL or -1, 8 the digest's
#       field name, 9.. the job's hash fields.
# The first write comes after every check: a Redis out of memory refuses it, and nothing
# of the job is left half written.
SUBMIT = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'failed' or status == 'stopped' or status == 'canceled' then
  return {'resubmit', status}
end
if status then
  local origin = redis.call('HGET', KEYS[1], 'origin') or ARGV[2]
  local digest = redis.call('HGET', KEYS[1], ARGV[8])
  if ARGV[6] == '1' and digest and digest ~= ARGV[5] then
    redis.call('HINCRBY', KEYS[5], origin .. '|rejected', 1)
    return {'conflict', status}
  end
  redis.call('HINCRBY', KEYS[5], origin .. '|duplicate', 1)
  return {'duplicate', status, origin}
end
local queued = 0
for index = 6, #KEYS do
  queued = queued + redis.call('LLEN', KEYS[index])
end
if queued >= tonumber(ARGV[3]) then
  redis.call('HINCRBY', KEYS[5], ARGV[2] .. '|rejected', 1)
  return {'full', tostring(queued)}
end
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
local ttl = tonumber(ARGV[7])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], KEYS[2])
redis.call('HINCRBY', KEYS[5], ARGV[2] .. '|enqueued', 1)
return {'enqueued', 'queued', ARGV[2]}
"""


@dataclass(frozen=True)
class Admission:
    """What the script did with one job: enqueued, duplicate, conflict, full or resubmit."""

    verdict: str
    status: str  # the job's status (for full: how many jobs were queued)
    queue: str


@dataclass(frozen=True)
class Candidate:
    """A job built in process and ready for the script: its record and what it is checked by."""

    job: Job
    queue: str
    digest: str
    keyed: bool  # its id is an idempotency key
    watch_until: float  # when recovery gives up waiting for it to start


def build_job(queue: Queue, function: str, payload: dict[str, Any], **options: Any) -> Job:
    """Build a job as Queue.enqueue does, queued now, without a word to Redis."""
    job = queue.create_job(function, args=(payload,), **options)
    # What Queue._prepare_for_queue sets before RQ's own unique enqueue script runs.
    job.origin = queue.name
    job.enqueued_at = now()
    job._status = JobStatus.QUEUED
    return job


def hash_fields(job: Job) -> list[Any]:
    """Return a job's hash as field, value pairs, as RQ's unique enqueue writes it."""
    fields: list[Any] = []
    for name, value in job.to_dict().items():
        if value is not None:
            fields += [name, value if isinstance(value, bytes | str) else str(value)]
    return fields


def _arguments(candidate: Candidate, queue_max: int, every_queue: list[str]) -> dict[str, Any]:
    """Return the script's keys and arguments for one candidate."""
    job = candidate.job
    return {
        "keys": [
            keys.job_key(job.id),
            keys.queue_key(candidate.queue),
            keys.RQ_QUEUES,
            keys.ACCEPTED,
            keys.OUTCOMES,
            *[keys.queue_key(name) for name in every_queue],
        ],
        "args": [
            job.id,
            candidate.queue,
            queue_max,
            candidate.watch_until,
            candidate.digest,
            "1" if candidate.keyed else "0",
            job.ttl if job.ttl is not None else -1,
            DIGEST_FIELD,
            *hash_fields(job),
            DIGEST_FIELD,
            candidate.digest,
        ],
    }


def _script(connection: redis.Redis) -> Any:
    """Return the submit script bound to a connection (loaded into Redis on first use)."""
    return connection.register_script(SUBMIT)


def _admission(reply: list[Any]) -> Admission:
    """Read the script's reply."""
    words = [part.decode() if isinstance(part, bytes) else str(part) for part in reply]
    return Admission(words[0], words[1], words[2] if len(words) > 2 else "")


def admit(
    connection: redis.Redis, candidate: Candidate, queue_max: int, every_queue: list[str]
) -> Admission:
    """Run the script for one job: one round trip."""
    return _admission(_script(connection)(**_arguments(candidate, queue_max, every_queue)))


def admit_all(
    connection: redis.Redis, candidates: list[Candidate], queue_max: int, every_queue: list[str]
) -> list[Admission]:
    """Run the script for many jobs in one pipeline: one round trip, each job atomic alone."""
    if not candidates:
        return []
    script = _script(connection)
    with connection.pipeline(transaction=False) as pipe:
        for candidate in candidates:
            script(**_arguments(candidate, queue_max, every_queue), client=pipe)
        return [_admission(reply) for reply in pipe.execute()]
