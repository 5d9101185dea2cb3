"""The dead-letter queue: jobs that failed for good, kept in RQ's failed-job registries."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry

from preview_worker import keys, queueing
from preview_worker.retries import backoff_delays
from preview_worker.settings import Settings

# requeue and purge: (connection, settings, one job id or None for all) -> ids done.
Operation = Callable[[redis.Redis, Settings, str | None], list[str]]


class NotDeadLettered(LookupError):
    """The job is not in the dead-letter queue."""


def _registries(connection: redis.Redis, settings: Settings) -> list[FailedJobRegistry]:
    """Return the failed-job registry of every queue."""
    return [FailedJobRegistry(queue=queue) for queue in queueing.queues(connection, settings)]


def list_dead_letters(connection: redis.Redis, settings: Settings) -> list[dict[str, Any]]:
    """Return every dead-lettered job with why it failed, newest first."""
    letters = []
    for registry in _registries(connection, settings):
        for job_id in registry.get_job_ids(cleanup=False):
            try:
                status = queueing.job_status(connection, job_id)
            except queueing.JobNotFound:
                continue  # expired between the two reads
            letters.append(
                {key: status[key] for key in ("jobId", "queue", "attempts", "endedAt", "error")}
            )
    return sorted(letters, key=lambda letter: letter["endedAt"] or "", reverse=True)


def _find(connection: redis.Redis, settings: Settings, job_id: str) -> FailedJobRegistry:
    """Return the registry that holds a dead-lettered job, or raise NotDeadLettered."""
    for registry in _registries(connection, settings):
        if connection.zscore(registry.key, job_id) is not None:
            return registry
    raise NotDeadLettered(f"job {job_id} is not dead-lettered")


def _ids(connection: redis.Redis, settings: Settings, job_id: str | None) -> list[str]:
    """Return the one id asked for, or every dead-lettered id when none is."""
    if job_id is not None:
        _find(connection, settings, job_id)
        return [job_id]
    return [
        job for registry in _registries(connection, settings)
        for job in registry.get_job_ids(cleanup=False)
    ]


def requeue(connection: redis.Redis, settings: Settings, job_id: str | None = None) -> list[str]:
    """Put one dead-lettered job (or all) back on its queue with a fresh set of retries."""
    requeued = []
    for each in _ids(connection, settings, job_id):
        # The lock a resubmission takes too: one of the two replaces the dead letter.
        with connection.lock(keys.resubmit_lock_key(each), timeout=keys.RESUBMIT_LOCK_TTL):
            try:
                _requeue_one(connection, settings, each)
            except (NotDeadLettered, NoSuchJobError, InvalidJobOperation):
                if job_id is not None:
                    raise NotDeadLettered(f"job {each} is not dead-lettered") from None
                continue  # another operator or a resubmission got there first
        requeued.append(each)
    return requeued


def _requeue_one(connection: redis.Redis, settings: Settings, job_id: str) -> None:
    """Requeue one dead letter with fresh retries, or raise if it is no longer one."""
    registry = _find(connection, settings, job_id)
    job = Job.fetch(job_id, connection=connection)
    job.retries_left = settings.retry_max
    job.retry_intervals = backoff_delays(settings)
    job.meta.pop("failure", None)
    job.save()
    connection.zadd(keys.ACCEPTED, {job_id: time.time() + settings.queued_ttl})
    registry.requeue(job_id)


def purge(connection: redis.Redis, settings: Settings, job_id: str | None = None) -> list[str]:
    """Delete one dead-lettered job (or all) for good."""
    purged = []
    for each in _ids(connection, settings, job_id):
        registry = _find(connection, settings, each)
        try:
            registry.remove(each, delete_job=True)
        except NoSuchJobError:
            connection.zrem(registry.key, each)
        connection.zrem(keys.ACCEPTED, each)
        purged.append(each)
    return purged


