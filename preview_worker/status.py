"""The status answer of a job: where it is, how far, and how it ended."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rq.job import Job, JobStatus

RESUBMITTABLE = (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)


def _iso(moment: datetime | None) -> str | None:
    """Format a moment as ISO 8601 in UTC."""
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def status_answer(job: Job, status: JobStatus, result: Any) -> dict[str, Any]:
    """Return the status answer of a job in a status, with its result when it finished.

    Hooks build it before RQ has saved the job's end, so the status and result are given.
    """
    return {
        "jobId": job.id,
        "status": status.value,
        "queue": job.origin,
        "priority": job.meta.get("priority"),
        "requestId": job.meta.get("requestId"),
        "progress": job.meta.get("progress"),
        "attempts": len(job.meta.get("attempts", [])),
        "retriesLeft": job.retries_left or 0,
        "enqueuedAt": _iso(job.enqueued_at),
        "startedAt": _iso(job.started_at),
        "endedAt": _iso(job.ended_at),
        "result": result,
        "error": _error_of(job, status),
        "deadLettered": status in (JobStatus.FAILED, JobStatus.STOPPED),
    }


def _error_of(job: Job, status: JobStatus) -> dict[str, str] | None:
    """Say why a job ended without finishing, or None for any other job."""
    if status not in RESUBMITTABLE:
        return None
    if status == JobStatus.CANCELED:
        return {"type": "Canceled", "message": "canceled on request"}
    recorded: dict[str, str] | None = job.meta.get("failure")
    return recorded or _failure_from_result(job)


def _failure_from_result(job: Job) -> dict[str, str]:
    """Read type and message from the last line of the recorded failure, never the traceback."""
    latest = job.latest_result()
    text = (latest.exc_string or "").strip() if latest else ""
    last = text.splitlines()[-1] if text else "Error: unknown failure"
    kind, _, message = last.partition(": ")
    return {"type": kind.rsplit(".", 1)[-1], "message": message[:1000]}
