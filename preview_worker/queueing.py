"""Queues by priority and the life of a job on them: submit, look up, cancel."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis
from redis.exceptions import WatchError
from rq import Callback, Queue
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

from preview_worker import events, hooks, keys
from preview_worker.admission import Admission, Candidate, JobTemplate, admit, admit_all
from preview_worker.canonical import canonical_json
from preview_worker.observe.outcomes import record_end
from preview_worker.retries import backoff_delays, retry_policy
from preview_worker.schema import default_of
from preview_worker.settings import Settings
from preview_worker.status import RESUBMITTABLE, status_answer
from preview_worker.webhooks import notices

PRIORITIES = ("high", "normal", "low")  # workers listen in this order: strict priority
DEFAULT_PRIORITY: str = default_of("priority")
RENDER_FUNCTION = "preview_worker.jobs.render_preview"
# Payload fields that say how to deliver a job, not what to render: not part of its identity.
DELIVERY_FIELDS = ("priority", "requestId", "idempotencyKey", "notify")
# The queue of webhook deliveries: not a priority and never counted for backpressure, but
# our workers serve it first (deliveries are small and must not wait behind renders).
WEBHOOKS = "webhooks"
ENDED = (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)


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


def worker_queue_names(settings: Settings) -> list[str]:
    """Return the queues our workers listen on, in order: webhook deliveries, then priorities."""
    return [queue_name(settings, WEBHOOKS), *queue_names(settings)]


def queues(connection: redis.Redis, settings: Settings) -> list[Queue]:
    """Return the queues, highest priority first."""
    return [Queue(name, connection=connection) for name in queue_names(settings)]


def register_queues(connection: redis.Redis, settings: Settings) -> None:
    """List our three queues where RQ lists queues, before any job: the dashboard shows them."""
    connection.sadd(keys.RQ_QUEUES, *[keys.queue_key(name) for name in queue_names(settings)])


def job_id_for(payload: dict[str, Any], namespace: str = "", digest: str | None = None) -> str:
    """Return the job id: the idempotency key, else a digest of what the payload renders.

    namespace (PREVIEW_QUEUE_NAME) keeps the jobs of apps that share one Redis apart; digest
    is the payload's content_digest when the caller has it already.
    """
    if payload.get("idempotencyKey"):
        key = str(payload["idempotencyKey"])
    else:
        key = "preview-" + (digest or content_digest(payload))[:40]
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


def submit(
    connection: redis.Redis,
    settings: Settings,
    payload: dict[str, Any],
    request_id: str | None = None,
    function: str = RENDER_FUNCTION,
) -> Submission:
    """Enqueue a valid payload once, in one round trip: a duplicate returns the existing job.

    function names what workers run; only benchmarks and tests pass another than the render.
    Raises IdempotencyConflict or QueueFull, having enqueued nothing.
    """
    candidate = _candidate(settings, payload, request_id, function)
    verdict = admit(
        connection, candidate, settings.queue_max, queue_names(settings), settings.replica_wait
    )
    return _settled(connection, settings, candidate, verdict)


def submit_many(
    connection: redis.Redis,
    settings: Settings,
    payloads: list[dict[str, Any]],
    request_id: str | None = None,
) -> list[Submission | Exception]:
    """Enqueue valid payloads in one round trip, each once and on its own.

    Returns, in order, each payload's Submission, or the IdempotencyConflict or QueueFull
    that refused it; a refusal of one never refuses another. Each job's request id is its
    payload's requestId, else the batch's.
    """
    candidates = [
        _candidate(settings, payload, payload.get("requestId") or request_id, RENDER_FUNCTION)
        for payload in payloads
    ]
    verdicts = admit_all(
        connection, candidates, settings.queue_max, queue_names(settings), settings.replica_wait
    )
    outcomes: list[Submission | Exception] = []
    for candidate, verdict in zip(candidates, verdicts, strict=True):
        try:
            outcomes.append(_settled(connection, settings, candidate, verdict))
        except (IdempotencyConflict, QueueFull) as refusal:
            outcomes.append(refusal)
    return outcomes


def _priority(payload: dict[str, Any]) -> str:
    """Return the payload's priority, defaulting as the schema says."""
    return str(payload.get("priority", DEFAULT_PRIORITY))


@lru_cache(maxsize=64)
def job_template(queue: str, function: str, settings: Settings) -> JobTemplate:
    """Return what every job of a queue shares, made by RQ once per process and settings."""
    return JobTemplate(
        # The template never talks to Redis; RQ's Queue only wants a connection to hold.
        Queue(queue, connection=redis.Redis()),
        function,
        retry=retry_policy(settings),
        timeout=settings.job_timeout,
        result_ttl=settings.result_ttl,
        failure_ttl=settings.failure_ttl,
        on_success=Callback(hooks.on_success),
        on_failure=Callback(hooks.on_failure),
        on_stopped=Callback(hooks.on_stopped),
    )


def _candidate(
    settings: Settings,
    payload: dict[str, Any],
    request_id: str | None,
    function: str,
) -> Candidate:
    """Make a payload's job record, with every policy attached, ready for admission."""
    priority = _priority(payload)
    template = job_template(queue_name(settings, priority), function, settings)
    digest = content_digest(payload)
    meta = {
        "requestId": request_id or payload.get("requestId"),
        "priority": priority,
        "submittedAt": round(time.time(), 3),
        "contentDigest": digest,
        "progress": {"stage": "queued", "percent": 0},
    }
    delivery = notices.policy(payload, queue_name(settings, WEBHOOKS), settings)
    if delivery is not None:
        meta[notices.POLICY] = delivery
    # Each job draws its own back-off, so jobs that fail together retry apart.
    intervals = backoff_delays(settings) if settings.retry_max else None
    return Candidate(
        job_id=job_id_for(payload, settings.queue_name, digest),
        queue=template.queue,
        fields=template.own_fields(
            payload, f"preview of {payload.get('tutorialId')}", meta, intervals
        ),
        shared=template.shared,
        ttl=template.ttl,
        events_ttl=template.events_ttl,
        digest=digest,
        keyed=bool(payload.get("idempotencyKey")),
        # The score is the time by which it must have started (see recovery: QueuedTooLong).
        watch_until=time.time() + settings.queued_ttl,
    )


def _settled(
    connection: redis.Redis,
    settings: Settings,
    candidate: Candidate,
    verdict: Admission,
    may_resubmit: bool = True,
) -> Submission:
    """Turn the script's verdict into a Submission, or raise the refusal it means."""
    job_id = candidate.job_id
    if verdict.verdict == "conflict":
        raise IdempotencyConflict(job_id, verdict.status)
    if verdict.verdict == "full":
        raise QueueFull(int(verdict.status), settings.queue_max)
    if verdict.verdict == "resubmit":
        if may_resubmit:
            return _resubmit(connection, settings, candidate)
        # It ended again in the instant since the old one was deleted: leave it be.
        return Submission(job_id, verdict.status, candidate.queue, duplicate=True)
    return Submission(job_id, verdict.status, verdict.queue, verdict.verdict == "duplicate")


def _fetch(connection: redis.Redis, job_id: str) -> Job | None:
    """Return a job by id, or None when there is none."""
    try:
        return Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return None


def _resubmit(connection: redis.Redis, settings: Settings, candidate: Candidate) -> Submission:
    """Replace a dead-lettered, stopped or canceled job by a new attempt, exactly once."""
    job_id = candidate.job_id
    lock = connection.lock(keys.resubmit_lock_key(job_id), timeout=keys.RESUBMIT_LOCK_TTL)
    with lock:
        current = _fetch(connection, job_id)
        if current is not None and current.get_status() in RESUBMITTABLE:
            current.delete()
        verdict = admit(connection, candidate, settings.queue_max, queue_names(settings),
                        settings.replica_wait)
    return _settled(connection, settings, candidate, verdict, may_resubmit=False)


def get_job(connection: redis.Redis, job_id: str) -> Job:
    """Return a job by id, or raise JobNotFound."""
    job = _fetch(connection, job_id)
    if job is None:
        raise JobNotFound(f"no job {job_id}")
    return job


def job_status(connection: redis.Redis, job_id: str) -> dict[str, Any]:
    """Return the status answer of a job: where it is, how far, and how it ended."""
    job = get_job(connection, job_id)
    status = job.get_status()
    result = job.return_value() if status == JobStatus.FINISHED else None
    answer = status_answer(job, status, result)
    answer["deliveries"] = notices.deliveries_of(connection, job)
    return answer


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
    reason = {"type": "Canceled", "message": "canceled on request"}

    def writes(pipe: Any) -> None:
        events.append(pipe, job.id, "canceled", {"reason": reason}, events.lifetime_of(job))
        notices.schedule(pipe, job, JobStatus.CANCELED)

    record_end(connection, job, "canceled", also=writes, saved=True)
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
