"""Jobs admitted in one Redis round trip: duplicate check, backpressure, record, push, count.

Each job's record is the hash RQ's own unique enqueue writes, built from a template that RQ
makes (Queue.create_job, as Queue.enqueue does) once per queue and settings, so a stock
`rq worker`, rq-dashboard, retries, callbacks, cancel and recovery see an ordinary RQ job.
One field is ours: the content digest, which the script compares for idempotency keys.
A batch goes to Redis as one script call per chunk of jobs, all chunks in one pipeline.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue
from rq.job import JobStatus
from rq.utils import now, utcformat

from preview_worker import events, keys
from preview_worker.connections import pipelined

DIGEST_FIELD = "preview_content_digest"  # ours, beside RQ's fields; RQ reads none it does not know
# Fields that differ from job to job; every other field of a job is its template's.
OWN_FIELDS = ("data", "meta", "description", "retry_intervals")
MOMENTS = ("created_at", "enqueued_at")
# Jobs per script call: each call holds Redis alone while it runs (about 20 us a job).
CHUNK = 200

# KEYS: 1 RQ's set of queues, 2 accepted jobs (recovery's watch), 3 outcome counts,
#       4 the event news, 5..4+Q every queue (their lengths are the backpressure), then per
#       job: its hash, its queue, its event stream.
# ARGV: 1 Q, 2 most jobs queued, 3 the digest's field name, 4 the events' lifetime,
#       5 how many shared values (S), 6..5+S the shared field, value pairs, then per job:
#       id, queue name, the watch's deadline, content digest, "1" when the id is an
#       idempotency key, TTL or -1, how many own values (O), O own field, value pairs.
# Replies three words per job: verdict, status, queue. Every write of a job comes after its
# checks and the counts come last; a Redis out of memory refuses a script only at its first
# write, so a refused call has written nothing.
SUBMIT = """
local MAX_EVENTS, MAX_NEWS = $MAX_EVENTS, $MAX_NEWS
local queues = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local digest_field = ARGV[3]
local events_ttl = ARGV[4]
local shared_count = tonumber(ARGV[5])
local shared = {}
for index = 6, 5 + shared_count do
  shared[#shared + 1] = ARGV[index]
end
local queued = 0
for index = 5, 4 + queues do
  queued = queued + redis.call('LLEN', KEYS[index])
end
local counts, pushed, replies = {}, {}, {}
local function count(name)
  counts[name] = (counts[name] or 0) + 1
end
local function reply(verdict, status, queue)
  table.insert(replies, verdict)
  table.insert(replies, status)
  table.insert(replies, queue)
end
local key, cursor = 5 + queues, 6 + shared_count
while cursor <= #ARGV do
  local job_key, queue_key, events_key = KEYS[key], KEYS[key + 1], KEYS[key + 2]
  local id, queue, deadline = ARGV[cursor], ARGV[cursor + 1], ARGV[cursor + 2]
  local digest, keyed = ARGV[cursor + 3], ARGV[cursor + 4]
  local ttl, own = tonumber(ARGV[cursor + 5]), tonumber(ARGV[cursor + 6])
  local first = cursor + 7
  key, cursor = key + 3, first + own
  local status = redis.call('HGET', job_key, 'status')
  if status == 'failed' or status == 'stopped' or status == 'canceled' then
    reply('resubmit', status, queue)
  elseif status then
    local origin = redis.call('HGET', job_key, 'origin') or queue
    local stored = redis.call('HGET', job_key, digest_field)
    if keyed == '1' and stored and stored ~= digest then
      count(origin .. '|rejected')
      reply('conflict', status, origin)
    else
      count(origin .. '|duplicate')
      reply('duplicate', status, origin)
    end
  elseif queued >= limit then
    count(queue .. '|rejected')
    reply('full', tostring(queued), queue)
  else
    redis.call('ZADD', KEYS[2], deadline, id)
    redis.call('HSET', job_key, digest_field, digest, unpack(shared))
    if own > 0 then
      redis.call('HSET', job_key, unpack(ARGV, first, first + own - 1))
    end
    if ttl > 0 then
      redis.call('EXPIRE', job_key, ttl)
    end
    redis.call('RPUSH', queue_key, id)
    redis.call('XADD', events_key, 'MAXLEN', '~', MAX_EVENTS, '*',
               'type', 'queued', 'data', cjson.encode({queue = queue}))
    redis.call('EXPIRE', events_key, events_ttl)
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', MAX_NEWS, '*', 'job', id)
    pushed[queue_key] = true
    queued = queued + 1
    count(queue .. '|enqueued')
    reply('enqueued', 'queued', queue)
  end
end
for queue_key in pairs(pushed) do
  redis.call('SADD', KEYS[1], queue_key)
end
for name, amount in pairs(counts) do
  redis.call('HINCRBY', KEYS[3], name, amount)
end
return replies
"""


# One cap for every writer of the events.
SUBMIT = SUBMIT.replace("$MAX_EVENTS", str(events.MAX_EVENTS)).replace(
    "$MAX_NEWS", str(events.MAX_NEWS)
)
SUBMIT_SHA = hashlib.sha1(SUBMIT.encode()).hexdigest()


@dataclass(frozen=True)
class Admission:
    """What the script did with one job: enqueued, duplicate, conflict, full or resubmit."""

    verdict: str
    status: str  # the job's status (for full: how many jobs were queued)
    queue: str


class JobTemplate:
    """What every job of one queue, function and set of options shares, as RQ records it."""

    def __init__(self, queue: Queue, function: str, **options: Any) -> None:
        job = queue.create_job(function, args=(None,), **options)
        # What Queue._prepare_for_queue sets before RQ's own unique enqueue script runs.
        job.origin = queue.name
        job._status = JobStatus.QUEUED
        self.queue = queue.name
        self.function = job.func_name
        self.ttl: int | None = job.ttl
        self.events_ttl = events.lifetime(job.result_ttl, job.failure_ttl)
        self.dumps = job.serializer.dumps
        recorded = job.to_dict()
        self.shared = {
            name: value if isinstance(value, bytes | str) else str(value)
            for name, value in recorded.items()
            if value is not None and name not in OWN_FIELDS + MOMENTS
        }

    def own_fields(
        self, payload: dict[str, Any], description: str, meta: dict[str, Any],
        retry_intervals: list[int] | None,
    ) -> list[Any]:
        """Return one job's own hash fields, as Job.to_dict writes them."""
        call: tuple[Any, ...] = (self.function, None, (payload,), {})
        fields = ["data", zlib.compress(self.dumps(call)), "meta", self.dumps(meta),
                  "description", description]
        if retry_intervals is not None:
            fields += ["retry_intervals", json.dumps(retry_intervals)]
        return fields


@dataclass(frozen=True)
class Candidate:
    """One job ready for the script: its id, record and what it is checked by."""

    job_id: str
    queue: str
    fields: list[Any]  # its own hash fields
    shared: dict[str, Any]  # the fields its template gives every job
    ttl: int | None
    events_ttl: int  # seconds its events are kept after the latest
    digest: str
    keyed: bool  # its id is an idempotency key
    watch_until: float  # when recovery gives up waiting for it to start


def _calls(candidates: list[Candidate], queue_max: int, every_queue: list[str]) -> list[Any]:
    """Group candidates into script calls of at most CHUNK jobs with the same shared fields."""
    moment = utcformat(now())  # created and enqueued in this one call
    calls = []
    for start in range(0, len(candidates), CHUNK):
        chunk = candidates[start:start + CHUNK]
        groups: dict[int, list[Candidate]] = {}
        for candidate in chunk:
            groups.setdefault(id(candidate.shared), []).append(candidate)
        for group in groups.values():
            shared = [item for pair in group[0].shared.items() for item in pair]
            events_ttl = group[0].events_ttl
            shared += [item for name in MOMENTS for item in (name, moment)]
            job_keys: list[str] = []
            job_args: list[Any] = []
            for candidate in group:
                job_keys += [keys.job_key(candidate.job_id), keys.queue_key(candidate.queue),
                             keys.events_key(candidate.job_id)]
                job_args += [
                    candidate.job_id, candidate.queue, candidate.watch_until, candidate.digest,
                    "1" if candidate.keyed else "0",
                    candidate.ttl if candidate.ttl is not None else -1,
                    len(candidate.fields), *candidate.fields,
                ]
            calls.append((
                group,
                [keys.RQ_QUEUES, keys.ACCEPTED, keys.OUTCOMES, keys.NEWS,
                 *[keys.queue_key(name) for name in every_queue], *job_keys],
                [len(every_queue), queue_max, DIGEST_FIELD, events_ttl, len(shared), *shared,
                 *job_args],
            ))
    return calls


def _admissions(reply: list[Any]) -> list[Admission]:
    """Read a script's reply: three words per job."""
    words = [part.decode() if isinstance(part, bytes) else str(part) for part in reply]
    return [Admission(*words[index:index + 3]) for index in range(0, len(words), 3)]


def admit_all(
    connection: redis.Redis, candidates: list[Candidate], queue_max: int, every_queue: list[str],
    wait_for: tuple[int, int] = (0, 0),
) -> list[Admission]:
    """Admit jobs in one round trip, in order, each job atomic; return each one's verdict.

    wait_for (replicas, ms), from Settings.replica_wait, waits in that same round trip until
    so many replicas hold the jobs, or raises connections.ReplicasBehind.
    """
    if not candidates:
        return []
    calls = _calls(candidates, queue_max, every_queue)

    def fill(pipe: Any) -> None:
        for _, call_keys, call_args in calls:
            pipe.evalsha(SUBMIT_SHA, len(call_keys), *call_keys, *call_args)

    # Sent twice only when Redis lacked the script, and then nothing ran the first time.
    replies = pipelined(connection, fill, [SUBMIT], wait_for)
    verdicts: dict[int, Admission] = {}
    for (group, _, _), reply in zip(calls, replies, strict=True):
        for candidate, verdict in zip(group, _admissions(reply), strict=True):
            verdicts[id(candidate)] = verdict
    return [verdicts[id(candidate)] for candidate in candidates]


def admit(
    connection: redis.Redis, candidate: Candidate, queue_max: int, every_queue: list[str],
    wait_for: tuple[int, int] = (0, 0),
) -> Admission:
    """Admit one job: one round trip."""
    return admit_all(connection, [candidate], queue_max, every_queue, wait_for)[0]
