"""RQ callbacks attached at enqueue time: classify failures and record outcomes.

They run in any worker, ours or a stock `rq worker`, so policy travels with the job.
A hook observes: whatever goes wrong inside it is logged and never fails the job.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

import redis
from rq.job import Job
from rq.utils import utcformat

from preview_worker import keys, metrics, retries

log = logging.getLogger(__name__)


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
    connection: redis.Redis, job: Job, outcome: str, duration: float | None = None
) -> None:
    """Count a job's end unless it was counted already.

    Hooks, cancel and recovery may all see the same end; only the first counts it. Hooks run
    before RQ saves the job's new status, so they leave forgetting the job to recovery,
    which sees the saved status; a worker killed in between leaves a job recovery still
    watches.
    """
    metrics.record_outcome(connection, job.origin, outcome, duration, settle=end_key_of(job))


def forget(connection: redis.Redis, job_id: str, key: str) -> None:
    """Stop watching a job whose end is saved, and drop the mark that it was counted."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.zrem(keys.ACCEPTED, job_id)
        pipe.hdel(keys.COUNTED, key)
        pipe.execute()


def on_success(job: Job, connection: redis.Redis, result: Any) -> None:
    """Count a finished job and its duration."""
    try:
        record_end(connection, job, "succeeded", duration_of(job))
    except Exception:
        log.exception("success hook of job %s failed", job.id)


def on_failure(
    job: Job,
    connection: redis.Redis,
    exc_type: type[BaseException] | None,
    exc_value: BaseException | None,
    traceback: TracebackType | None,
) -> None:
    """Class a failed attempt: permanent ones skip their retries; record why and what next."""
    try:
        if retries.is_permanent(exc_type):
            # RQ decides to retry after this hook, from this very job object.
            job.retries_left = 0
        job.meta["failure"] = {
            "type": exc_type.__name__ if exc_type else "Error",
            "message": str(exc_value)[:1000] if exc_value else "",
        }
        job.save_meta()
        if exc_type is not None and issubclass(exc_type, retries.PreviewStopped):
            record_end(connection, job, "canceled", duration_of(job))
        elif job.retries_left:
            metrics.record_outcome(connection, job.origin, "retried", duration_of(job))
        else:
            record_end(connection, job, "dead_lettered", duration_of(job))
    except Exception:
        log.exception("failure hook of job %s failed", job.id)


def on_stopped(job: Job, connection: redis.Redis) -> None:
    """Count a job that a forking worker stopped on request."""
    try:
        job.meta["failure"] = {"type": "PreviewStopped", "message": "stopped on request"}
        job.save_meta()
        record_end(connection, job, "canceled")
    except Exception:
        log.exception("stop hook of job %s failed", job.id)
