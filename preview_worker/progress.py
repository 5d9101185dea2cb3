"""Progress of the running job in its meta, and the cooperative stop that workers request."""

from __future__ import annotations

import time

from rq.job import Job

from preview_worker import events
from preview_worker.errors import PreviewStopped

# A stage is written to Redis once it has lasted this long (seconds), or with the next
# write: a render of a few tens of milliseconds costs no round trip per stage, and a slow
# stage still shows while it runs. The job's end writes its last progress (see hooks).
WRITE_AFTER = 0.5

# Job id that this process's worker was asked to stop. A worker that runs jobs in its own
# process cannot kill them, so the job checks this at every stage instead.
_stop_requested_for: str | None = None
# The running job whose latest stage is not written yet, and when that stage began.
_unwritten: tuple[Job, float] | None = None


def request_stop(job_id: str | None) -> None:
    """Ask the job with this id, if it runs in this process, to stop at its next stage."""
    global _stop_requested_for
    _stop_requested_for = job_id


def check_stop(job: Job | None, stage: str = "rendering") -> None:
    """Raise PreviewStopped if the job was asked to stop; cheap enough to call very often.

    It also writes the job's stage once that stage has lasted WRITE_AFTER seconds.
    """
    if job is None:
        return
    if _stop_requested_for == job.id:
        raise PreviewStopped(f"stopped on request during {stage}")
    if _unwritten is not None and _unwritten[0] is job and time.monotonic() >= _unwritten[1]:
        _write(job)


def _write(job: Job, kind: str = "progress") -> None:
    """Save the job's meta now (its stage and attempts) with the event that tells of it."""
    global _unwritten
    _unwritten = None
    stage = job.meta["progress"]
    data = {"attempt": len(job.meta["attempts"])} if kind == "started" else dict(stage)
    with job.connection.pipeline(transaction=False) as pipe:
        events.tell(pipe, job, kind, data)
        pipe.execute()


def report(job: Job | None, stage: str, percent: int) -> None:
    """Record the job's stage and percent done, or raise PreviewStopped if asked to stop."""
    global _unwritten
    if job is None:
        return  # called outside a worker, e.g. by a one-shot render
    check_stop(job, stage)
    job.meta["progress"] = {"stage": stage, "percent": percent}
    _unwritten = (job, time.monotonic() + WRITE_AFTER)


def begin_attempt(job: Job | None) -> None:
    """Record the start of this attempt in the job's meta, written at once."""
    if job is None:
        return
    job.meta.setdefault("attempts", []).append(round(time.time(), 3))
    job.meta.pop("failure", None)  # the reason of an earlier attempt no longer holds
    report(job, "started", 0)
    _write(job, "started")
