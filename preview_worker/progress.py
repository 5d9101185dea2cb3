"""Progress of the running job in its meta, and the cooperative stop that workers request."""

from __future__ import annotations

import time

from rq.job import Job

from preview_worker.errors import PreviewStopped

# Job id that this process's worker was asked to stop. A worker that runs jobs in its own
# process cannot kill them, so the job checks this at every stage instead.
_stop_requested_for: str | None = None


def request_stop(job_id: str | None) -> None:
    """Ask the job with this id, if it runs in this process, to stop at its next stage."""
    global _stop_requested_for
    _stop_requested_for = job_id


def check_stop(job: Job | None, stage: str = "rendering") -> None:
    """Raise PreviewStopped if the job was asked to stop; cheap enough to call very often."""
    if job is not None and _stop_requested_for == job.id:
        raise PreviewStopped(f"stopped on request during {stage}")


def report(job: Job | None, stage: str, percent: int) -> None:
    """Record the job's stage and percent done, or raise PreviewStopped if asked to stop."""
    if job is None:
        return  # called outside a worker, e.g. by a one-shot render
    check_stop(job, stage)
    job.meta["progress"] = {"stage": stage, "percent": percent}
    job.save_meta()


def begin_attempt(job: Job | None) -> None:
    """Record the start time of this attempt in the job's meta."""
    if job is None:
        return
    job.meta.setdefault("attempts", []).append(round(time.time(), 3))
    job.meta.pop("failure", None)  # the reason of an earlier attempt no longer holds
    report(job, "started", 0)
