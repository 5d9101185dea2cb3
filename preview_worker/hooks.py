"""RQ callbacks attached at enqueue time: classify failures, then record outcomes and events.

They run in any worker, ours or a stock `rq worker`, so policy travels with the job.
A hook observes: whatever goes wrong inside it is logged and never fails the job.
Each hook's writes (the job's meta, its event, its count, at a final end its webhook's
delivery) go to Redis in one round trip.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any

import redis
from rq.job import Job, JobStatus

from preview_worker import events
from preview_worker.errors import PreviewStopped, is_permanent
from preview_worker.observe.outcomes import duration_of, record_end, record_outcome
from preview_worker.status import status_answer
from preview_worker.webhooks import notices

log = logging.getLogger(__name__)


def _with_event(
    job: Job, kind: str, data: dict[str, Any], end: JobStatus | None = None, result: Any = None
) -> Callable[[Any], None]:
    """Return the writes that go with a count: the job's meta, its event, and at a final end
    (the status it ends in) the delivery of its webhook."""
    def writes(pipe: Any) -> None:
        events.tell(pipe, job, kind, data)
        if end is not None:
            notices.schedule(pipe, job, end, result)
    return writes


def on_success(job: Job, connection: redis.Redis, result: Any) -> None:
    """Mark a finished job's progress done, tell its followers, count it and its duration."""
    try:
        job.meta["progress"] = {"stage": "done", "percent": 100}
        answer = status_answer(job, JobStatus.FINISHED, result)
        record_end(connection, job, "succeeded", duration_of(job),
                   also=_with_event(job, "finished", {"status": answer},
                                    JobStatus.FINISHED, result))
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
        reason = {
            "type": exc_type.__name__ if exc_type else "Error",
            "message": str(exc_value)[:1000] if exc_value else "",
        }
        job.meta["failure"] = reason
        duration = duration_of(job)
        if exc_type is not None and issubclass(exc_type, PreviewStopped):
            record_end(connection, job, "canceled", duration,
                       also=_with_event(job, "canceled", {"reason": reason}, JobStatus.STOPPED))
        elif job.retries_left:
            retry = {"reason": reason, "delay": job.get_retry_interval(),
                     "attempt": len(job.meta.get("attempts", []))}
            record_outcome(connection, job.origin, "retried", duration,
                           also=_with_event(job, "retrying", retry))
        else:
            record_end(connection, job, "dead_lettered", duration,
                       also=_with_event(job, "dead-lettered", {"reason": reason},
                                        JobStatus.FAILED))
    except Exception:
        log.exception("failure hook of job %s failed", job.id)


def on_stopped(job: Job, connection: redis.Redis) -> None:
    """Count a job that a forking worker stopped on request."""
    try:
        reason = {"type": "PreviewStopped", "message": "stopped on request"}
        job.meta["failure"] = reason
        record_end(connection, job, "canceled", also=_with_event(
            job, "canceled", {"reason": reason}, JobStatus.STOPPED
        ))
    except Exception:
        log.exception("stop hook of job %s failed", job.id)
