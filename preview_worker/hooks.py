"""RQ callbacks attached at enqueue time: classify failures, then record outcomes.

They run in any worker, ours or a stock `rq worker`, so policy travels with the job.
A hook observes: whatever goes wrong inside it is logged and never fails the job.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

import redis
from rq.job import Job

from preview_worker.errors import PreviewStopped, is_permanent
from preview_worker.observe.outcomes import duration_of, record_end, record_outcome

log = logging.getLogger(__name__)


def on_success(job: Job, connection: redis.Redis, result: Any) -> None:
    """Mark a finished job's progress done, count it and its duration: one round trip."""
    try:
        job.meta["progress"] = {"stage": "done", "percent": 100}
        record_end(connection, job, "succeeded", duration_of(job), with_meta=True)
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
        if is_permanent(exc_type):
            # RQ decides to retry after this hook, from this very job object.
            job.retries_left = 0
        job.meta["failure"] = {
            "type": exc_type.__name__ if exc_type else "Error",
            "message": str(exc_value)[:1000] if exc_value else "",
        }
        # The meta goes with the count, in one round trip.
        if exc_type is not None and issubclass(exc_type, PreviewStopped):
            record_end(connection, job, "canceled", duration_of(job), with_meta=True)
        elif job.retries_left:
            record_outcome(connection, job.origin, "retried", duration_of(job), meta_of=job)
        else:
            record_end(connection, job, "dead_lettered", duration_of(job), with_meta=True)
    except Exception:
        log.exception("failure hook of job %s failed", job.id)


def on_stopped(job: Job, connection: redis.Redis) -> None:
    """Count a job that a forking worker stopped on request."""
    try:
        job.meta["failure"] = {"type": "PreviewStopped", "message": "stopped on request"}
        record_end(connection, job, "canceled", with_meta=True)
    except Exception:
        log.exception("stop hook of job %s failed", job.id)
