"""Queues by priority and the life of a job on them: submit, look up, cancel."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from redis.exceptions import WatchError
from rq import Callback, Queue
from rq.command import send_stop_job_command
from rq.exceptions import DuplicateJobError, InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

from preview_worker import hooks, keys
from preview_worker.canonical import canonical_json
from preview_worker.connections import is_refusal
from preview_worker.observe.outcomes import end_key_of, forget, record_end, record_outcome
from preview_worker.retries import retry_policy
from preview_worker.schema import default_of
from preview_worker.settings import Settings

PRIORITIES = ("high", "normal", "low")  # workers listen in this order: strict priority
DEFAULT_PRIORITY: str = default_of("priority")
RENDER_FUNCTION = "preview_worker.jobs.render_preview"
# Payload fields that say how to deliver a job, not what to render: not part of its identity.
DELIVERY_FIELDS = ("priority", "requestId", "idempotencyKey")
ENDED = (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)
RESUBMITTABLE = (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)


class QueueFull(Exception):
    """The queues hold PREVIEW_QUEUE_MAX jobs already; nothing was enqueued."""

    def __init__(self, queued: int, limit: int) -> None:
        super().__init__(f"{queued} jobs are queued, the limit is {limit}; try again later")
        self.queued = queued
        self.limit = limit


class IdempotencyConflict(Exception):
    """An idempotency key came back with other content than its job's: nothing was enqueued."""

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(
            f"idempotency key of job {job_id} was used for other content; "
            "send new content under a new key"
        )
        self.job_id = job_id
        self.status = status


class JobNotFound(LookupError):
    """No job has this id (it never existed or its record expired)."""


class JobAlreadyEnded(Exception):
    """The job already ended, so it cannot be canceled."""

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"job {job_id} already ended: {status}")
        self.status = status


@dataclass(frozen=True)
class Submission:
    """What became of one submitted payload: its job, and whether it existed already."""

    job_id: str
    status: str
    queue: str
    duplicate: bool

    def as_dict(self) -> dict[str, Any]:
        """Return the submission as clients see it."""
        return {
            "jobId": self.job_id,
            "status": self.status,
            "queue": self.queue,
            "duplicate": self.duplicate,
        }


def queue_name(settings: Settings, priority: str) -> str:
    """Return the Redis queue name of a priority, prefixed by PREVIEW_QUEUE_NAME when set."""
    return f"{settings.queue_name}-{priority}" if settings.queue_name else priority


def queue_names(settings: Settings) -> list[str]:
    """Return the queue names in the order workers serve them."""
    return [queue_name(settings, priority) for priority in PRIORITIES]


def queues(connection: redis.Redis, settings: Settings) -> list[Queue]:
    """Return the queues, highest priority first."""
    return [Queue(name, connection=connection) for name in queue_names(settings)]


def register_queues(connection: redis.Redis, settings: Settings) -> None:
    """List our three queues where RQ lists queues, before any job: the dashboard shows them."""
    connection.sadd(keys.RQ_QUEUES, *[keys.queue_key(name) for name in queue_names(settings)])


def job_id_for(payload: dict[str, Any], namespace: str = "") -> str:
    """Return the job id: the idempotency key, else a digest of what the payload renders.

    namespace (PREVIEW_QUEUE_NAME) keeps the jobs of apps that share one Redis apart.
    """
    if payload.get("idempotencyKey"):
        key = str(payload["idempotencyKey"])
    else:
        key = "preview-" + content_digest(payload)[:40]
    return f"{namespace}-{key}" if namespace else key


def content_digest(payload: dict[str, Any]) -> str:
    """Return the SHA-256 of what a payload asks for, leaving out how it is delivered."""
    content = {key: value for key, value in payload.items() if key not in DELIVERY_FIELDS}
    return hashlib.sha256(canonical_json(content)).hexdigest()


def _count_queued(pipe: redis.client.Pipeline, settings: Settings) -> None:
    """Ask a pipeline for the length of every queue (LLEN: cheap and read-only)."""
    for name in queue_names(settings):
        pipe.llen(keys.queue_key(name))


def queued_count(connection: redis.Redis, settings: Settings) -> int:
    """Return how many jobs wait on all the queues."""
    with connection.pipeline(transaction=False) as pipe:
        _count_queued(pipe, settings)
        return sum(pipe.execute())


def _look(connection: redis.Redis, settings: Settings, job_id: str) -> tuple[str, int]:
    """Read a job's status (empty when there is none) and the queued count in one trip."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.hget(keys.job_key(job_id), "status")
        _count_queued(pipe, settings)
        status, *lengths = pipe.execute()
    return (status.decode() if status else ""), sum(lengths)


def submit(
    connection: redis.Redis,
    settings: Settings,
    payload: dict[str, Any],
    request_id: str | None = None,
    function: str = RENDER_FUNCTION,
) -> Submission:
    """Enqueue a valid payload once: a duplicate returns the job that exists already.

    function names what workers run; only benchmarks and tests pass another than the render.
    """
    job_id = job_id_for(payload, settings.queue_name)
    status, queued = _look(connection, settings, job_id)
    existing = _fetch(connection, job_id) if status else None
    if existing is not None and existing.get_status() not in RESUBMITTABLE:
        return _duplicate(connection, existing, payload)
    if queued >= settings.queue_max:
        record_outcome(connection, queue_name(settings, _priority(payload)), "rejected")
        raise QueueFull(queued, settings.queue_max)
    if existing is not None:
        return _resubmit(connection, settings, payload, request_id, existing, function)
    return _enqueue(connection, settings, payload, request_id, job_id, function)


def _priority(payload: dict[str, Any]) -> str:
    """Return the payload's priority, defaulting as the schema says."""
    return str(payload.get("priority", DEFAULT_PRIORITY))


def _fetch(connection: redis.Redis, job_id: str) -> Job | None:
    """Return a job by id, or None when there is none."""
    try:
        return Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return None


def _duplicate(connection: redis.Redis, job: Job, payload: dict[str, Any]) -> Submission:
    """Answer a duplicate submission with the job that exists, or refuse other content."""
    recorded = job.meta.get("contentDigest")  # None for jobs of an older release
    if payload.get("idempotencyKey") and recorded not in (None, content_digest(payload)):
        record_outcome(connection, job.origin, "rejected")
        raise IdempotencyConflict(job.id, job.get_status().value)
    record_outcome(connection, job.origin, "duplicate")
    return Submission(job.id, job.get_status().value, job.origin, duplicate=True)


def _enqueue(
    connection: redis.Redis,
    settings: Settings,
    payload: dict[str, Any],
    request_id: str | None,
    job_id: str,
    function: str,
) -> Submission:
    """Put a new job on its priority's queue, with every policy attached."""
    priority = _priority(payload)
    queue = Queue(queue_name(settings, priority), connection=connection)
    # Tracked before it exists, so no moment passes when recovery could not see it. The
    # score is the time by which it must have started (see recovery: QueuedTooLong).
    connection.zadd(keys.ACCEPTED, {job_id: time.time() + settings.queued_ttl})
    try:
        job = _put_on_queue(queue, payload, request_id, job_id, function, settings)
    except DuplicateJobError:
        existing = _fetch(connection, job_id)
        if existing is None:  # the other submission's job expired in between
            return _enqueue(connection, settings, payload, request_id, job_id, function)
        return _duplicate(connection, existing, payload)
    except redis.ResponseError as error:
        if is_refusal(error):
            # Redis refused the job's writes: nothing was accepted, so nothing is tracked.
            connection.zrem(keys.ACCEPTED, job_id)
        raise
    record_outcome(connection, queue.name, "enqueued")
    return Submission(job.id, job.get_status(refresh=False).value, queue.name, duplicate=False)


def _put_on_queue(
    queue: Queue,
    payload: dict[str, Any],
    request_id: str | None,
    job_id: str,
    function: str,
    settings: Settings,
) -> Job:
    """Enqueue the job with every policy attached; DuplicateJobError if its id is taken."""
    priority = _priority(payload)
    return queue.enqueue(
        function,
        payload,
        job_id=job_id,
        unique=True,  # concurrent duplicates: exactly one enqueue succeeds
        retry=retry_policy(settings),
        job_timeout=settings.job_timeout,
        result_ttl=settings.result_ttl,
        failure_ttl=settings.failure_ttl,
        description=f"preview of {payload.get('tutorialId')}",
        meta={
            "requestId": request_id or payload.get("requestId"),
            "priority": priority,
            "submittedAt": round(time.time(), 3),
            "contentDigest": content_digest(payload),  # a reused key must bring the same
            "progress": {"stage": "queued", "percent": 0},
        },
        on_success=Callback(hooks.on_success),
        on_failure=Callback(hooks.on_failure),
        on_stopped=Callback(hooks.on_stopped),
    )


def _resubmit(
    connection: redis.Redis,
    settings: Settings,
    payload: dict[str, Any],
    request_id: str | None,
    old: Job,
    function: str,
) -> Submission:
    """Replace a dead-lettered, stopped or canceled job by a new attempt, exactly once."""
    lock = connection.lock(keys.resubmit_lock_key(old.id), timeout=keys.RESUBMIT_LOCK_TTL)
    with lock:
        current = _fetch(connection, old.id)
        if current is not None and current.get_status() not in RESUBMITTABLE:
            return _duplicate(connection, current, payload)  # another won the lock first
        if current is not None:
            current.delete()
        return _enqueue(connection, settings, payload, request_id, old.id, function)


def get_job(connection: redis.Redis, job_id: str) -> Job:
    """Return a job by id, or raise JobNotFound."""
    job = _fetch(connection, job_id)
    if job is None:
        raise JobNotFound(f"no job {job_id}")
    return job


def _iso(moment: datetime | None) -> str | None:
    """Format a moment as ISO 8601 in UTC."""
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def job_status(connection: redis.Redis, job_id: str) -> dict[str, Any]:
    """Return the status answer of a job: where it is, how far, and how it ended."""
    job = get_job(connection, job_id)
    status = job.get_status()
    result = job.return_value() if status == JobStatus.FINISHED else None
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


def has_ended(status: dict[str, Any]) -> bool:
    """Tell whether a status answer is final: finished, dead-lettered or canceled."""
    return bool(status["status"] in ("finished", "canceled") or status["deadLettered"])


def cancel(connection: redis.Redis, job_id: str) -> str:
    """Cancel a waiting job or stop a running one; return the status it now has."""
    job = get_job(connection, job_id)
    with connection.pipeline() as pipe:
        while True:
            try:
                # The job must not move on between our look and our write.
                pipe.watch(job.key)  # type: ignore[no-untyped-call]
                status = _status_or_missing(job)
                if status in ENDED:
                    raise JobAlreadyEnded(job_id, status.value)
                if status == JobStatus.STARTED:
                    pipe.unwatch()
                    _request_stop(connection, job)
                    return "stopping"
                pipe.multi()
                job.cancel(pipeline=pipe)
                pipe.execute()
                break
            except WatchError:
                continue
    record_end(connection, job, "canceled")
    forget(connection, job.id, end_key_of(job))
    return JobStatus.CANCELED.value


def _status_or_missing(job: Job) -> JobStatus:
    """Return a job's current status, or raise JobNotFound when its record is gone."""
    try:
        return job.get_status()
    except InvalidJobOperation:
        raise JobNotFound(f"no job {job.id}") from None


def _request_stop(connection: redis.Redis, job: Job) -> None:
    """Ask the worker running a job to stop it, and leave the request for recovery too."""
    # If the worker is dead, nobody hears the command: recovery reads this key instead of
    # retrying the job. It lasts as long as the attempt could.
    lifetime = (job.timeout if job.timeout and job.timeout > 0 else 3600) + 60
    connection.set(keys.stop_requested_key(job.id), 1, ex=int(lifetime))
    send_stop_job_command(connection, job.id)
