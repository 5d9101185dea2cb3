"""How jobs end, counted once in Redis, so every worker and API process on every host adds up.

Hooks, cancel and recovery may all see the same end of a job; each end counts once.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from rq.job import Job
from rq.utils import utcformat

from preview_worker import keys
from preview_worker.connections import pipelined

log = logging.getLogger(__name__)

OUTCOMES = (
    "enqueued", "duplicate", "rejected", "succeeded", "retried", "dead_lettered", "canceled"
)
# How one attempt of a webhook delivery ended: a 2xx answer; a failure with retries left;
# the last failure (the delivery is dead-lettered); a host it may not call (no retry).
WEBHOOK_OUTCOMES = ("delivered", "retried", "failed", "refused")
# Upper bounds of the duration histogram's buckets, in seconds.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, math.inf)


def bound_name(bound: float) -> str:
    """Name a bucket bound the way Prometheus does."""
    return "+Inf" if math.isinf(bound) else repr(bound)


# One round trip per job end: claim it (when asked), count it, add its duration. Given the
# job's id too (recovery, once the end is saved), stop watching the job and drop the claim.
RECORD = """
local counted = 0
if ARGV[4] == '' or redis.call('HSETNX', KEYS[3], ARGV[4], 1) == 1 then
  redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
  if ARGV[2] ~= '' then
    redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
    redis.call('HINCRBYFLOAT', KEYS[2], 'sum', ARGV[3])
    redis.call('HINCRBY', KEYS[2], 'count', 1)
  end
  counted = 1
end
if ARGV[5] ~= '' then
  redis.call('ZREM', KEYS[4], ARGV[5])
  redis.call('HDEL', KEYS[3], ARGV[4])
end
return counted
"""
RECORD_SHA = hashlib.sha1(RECORD.encode()).hexdigest()


@dataclass(frozen=True)
class EndSeen:
    """A job whose end recovery found saved: count it unless counted, then stop watching it."""

    job_id: str
    queue: str
    outcome: str
    key: str  # the end's name (end_key)


def _record(
    pipe: Any, queue: str, outcome: str, duration: float | None, settle: str, forget_id: str = ""
) -> None:
    """Queue the counting script on a pipeline."""
    bucket, seconds = "", ""
    if duration is not None:
        seconds = repr(max(duration, 0.0))
        bucket = f"le:{bound_name(next(b for b in DURATION_BUCKETS if float(seconds) <= b))}"
    pipe.evalsha(
        RECORD_SHA, 4, keys.OUTCOMES, keys.durations_key(queue), keys.COUNTED, keys.ACCEPTED,
        f"{queue}|{outcome}", bucket, seconds, settle, forget_id,
    )


def record_outcome(
    connection: redis.Redis,
    queue: str,
    outcome: str,
    duration: float | None = None,
    settle: str | None = None,
    also: Callable[[Any], object] | None = None,
    forget_id: str = "",
) -> bool:
    """Count one outcome of a job on a queue (and its duration); never raise.

    With settle=the key of a job's end, the outcome counts only if nobody counted that
    end before: each end is counted once, whoever sees it (a hook, cancel, recovery).
    also(pipe) queues the writes that go with it (a job's meta, its event) in the same
    round trip, before the count. With forget_id=the job's id (its end is saved), the
    same script stops watching the job and drops the mark of its count.
    """
    def fill(pipe: Any) -> None:
        if also is not None:
            also(pipe)
        _record(pipe, queue, outcome, duration, settle or "", forget_id)

    try:
        return bool(pipelined(connection, fill, [RECORD])[-1])
    except Exception:  # a recorder observes: its failure must never fail a job
        log.exception("could not record outcome %s of a job on %s", outcome, queue)
        return False


def settle_ends(connection: redis.Redis, ends: list[EndSeen]) -> None:
    """Count every end not counted yet and stop watching its job: one round trip for all."""
    if not ends:
        return

    def fill(pipe: Any) -> None:
        for end in ends:
            _record(pipe, end.queue, end.outcome, None, end.key, end.job_id)

    pipelined(connection, fill, [RECORD])


def duration_of(job: Job) -> float | None:
    """Return how long the job's last attempt ran, in seconds, when known."""
    if job.started_at and job.ended_at:
        return (job.ended_at - job.started_at).total_seconds()
    return None


def end_key(job_id: str, enqueued_at: str) -> str:
    """Name one end of a job: a requeued or resubmitted job, enqueued anew, ends anew."""
    return f"{job_id}@{enqueued_at}"


def end_key_of(job: Job) -> str:
    """Name the end of a job's current enqueueing, as RQ records its enqueue time."""
    return end_key(job.id, utcformat(job.enqueued_at) if job.enqueued_at else "")


def record_end(
    connection: redis.Redis,
    job: Job,
    outcome: str,
    duration: float | None = None,
    also: Callable[[Any], object] | None = None,
    saved: bool = False,
) -> None:
    """Count a job's end unless it was counted already, with also()'s writes beside it.

    Hooks, cancel and recovery may all see the same end; only the first counts it. Hooks run
    before RQ saves the job's new status, so they leave forgetting the job to recovery,
    which sees the saved status; a worker killed in between leaves a job recovery still
    watches. Cancel and recovery, which have saved the end (saved=True), forget the job in
    the same step.
    """
    record_outcome(connection, job.origin, outcome, duration, settle=end_key_of(job),
                   also=also, forget_id=job.id if saved else "")
