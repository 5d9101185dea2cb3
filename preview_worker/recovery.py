"""Bring back jobs that dead workers left behind, long before RQ's own cleanup would.

Three ways a job goes astray. A worker on several queues pops with BLPOP; killed before it
records the job, it leaves a job queued in name but on no queue. A worker killed mid-job
leaves a started job that RQ reaps only after its heartbeat and maintenance interval. A
write refused half-way (Redis out of memory) can leave a job scheduled or deferred in name
but in no registry, where no scheduler will ever find it. Recovery walks the accepted jobs
that have not ended and puts all three kinds back.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import redis
from redis.exceptions import WatchError
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.utils import now, utcformat

from preview_worker import events, keys
from preview_worker.observe.outcomes import (
    EndSeen,
    end_key,
    record_end,
    record_outcome,
    settle_ends,
)
from preview_worker.webhooks import notices

log = logging.getLogger(__name__)

MISSING_GRACE = 5.0  # seconds a queued job may be off its queue before it counts as lost
WORKER_DIED = "WorkerDied"
QUEUED_TOO_LONG = ("QueuedTooLong", "waited longer than PREVIEW_QUEUED_TTL to start")
STOPPED_WHILE_DEAD = ("PreviewStopped", "stopped on request; its worker had died")
FOREIGN_JOB_TIMEOUT = 3600  # seconds an attempt without a timeout of its own may run
HORSE_GRACE = 60  # seconds past a job's timeout by which its worker has surely killed it


@dataclass
class RecoveryReport:
    """What one recovery pass did."""

    requeued: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    dead_lettered: list[str] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        """Return the report as plain data."""
        return {
            "requeued": self.requeued,
            "retried": self.retried,
            "deadLettered": self.dead_lettered,
            "forgotten": self.forgotten,
        }


def attempt_may_run(connection: redis.Redis, job: Job) -> bool:
    """Tell whether the worker that started a job may still be running it."""
    name = job.worker_name or ""
    if name.startswith(keys.OUR_WORKER_PREFIX):
        # Our in-process workers refresh this key from a thread, job or no job.
        return bool(connection.exists(keys.worker_alive_key(name)))
    # Any other worker (a forking one, whose horse outlives its parent; a stock one): the
    # attempt cannot outlast its own timeout, so wait that long past its last sign of life.
    last = job.last_heartbeat or job.started_at
    if last is None:
        return True
    timeout = job.timeout if job.timeout and job.timeout > 0 else FOREIGN_JOB_TIMEOUT
    silent = (datetime.now(timezone.utc) - last.replace(tzinfo=timezone.utc)).total_seconds()
    return silent < timeout + HORSE_GRACE


@dataclass(frozen=True)
class Sighting:
    """The few fields of an accepted job that one recovery pass reads in bulk."""

    job_id: str
    status: str | None  # None when the job's record is gone
    origin: str
    started: bool  # whether any attempt ever started
    start_by: float  # epoch seconds by which it had to start
    enqueued_at: str  # as RQ recorded it: with the id, it names this end of the job


# Where a job of each waiting status belongs, by its queue's name: on the queue itself, or in
# the registry a scheduler reads.
REGISTRIES = {
    JobStatus.SCHEDULED.value: keys.scheduled_key,
    JobStatus.DEFERRED.value: keys.deferred_key,
}
PLACES = {JobStatus.QUEUED.value: keys.queue_key, **REGISTRIES}

# What an ended job counts as, if its hook did not count it (it died with its worker).
ENDED_OUTCOMES = {
    JobStatus.FINISHED.value: "succeeded",
    JobStatus.FAILED.value: "dead_lettered",
    JobStatus.STOPPED.value: "canceled",
    JobStatus.CANCELED.value: "canceled",
}


def recover(connection: redis.Redis) -> RecoveryReport:
    """Run one recovery pass over every accepted job that has not ended."""
    report = RecoveryReport()
    lock = connection.lock(keys.RECOVERY_LOCK, timeout=keys.RECOVERY_LOCK_TTL, blocking=False)
    if not lock.acquire():
        return report  # another process is recovering right now
    try:
        accepted: list[tuple[bytes, float]] = connection.zrange(
            keys.ACCEPTED, 0, -1, withscores=True
        )  # type: ignore[assignment]
        sightings = _sight(connection, accepted)
        waiting = _queued_ids(connection, {s.origin for s in sightings if s.status == "queued"})
        waiting |= _registered_ids(connection, sightings)
        ended = [
            EndSeen(s.job_id, s.origin, ENDED_OUTCOMES[s.status], end_key(s.job_id, s.enqueued_at))
            for s in sightings if s.status in ENDED_OUTCOMES
        ]
        # Counted by their hooks already, unless a hook died with its worker: count them then.
        settle_ends(connection, ended)
        for sighting in sightings:
            if sighting.status not in ENDED_OUTCOMES:
                _recover_one(connection, sighting, sighting.job_id in waiting, report)
        # Forget first sightings of jobs that are back where they wait, running or ended.
        lost = {
            s.job_id for s in sightings if s.status in PLACES and s.job_id not in waiting
        }
        missing = {keys.text(raw) for raw in connection.hkeys(keys.MISSING)} - lost
        if missing:
            connection.hdel(keys.MISSING, *missing)
    finally:
        lock.release()
    return report


def _sight(connection: redis.Redis, accepted: list[tuple[bytes, float]]) -> list[Sighting]:
    """Read status, queue and start of many jobs in one round trip."""
    with connection.pipeline(transaction=False) as pipe:
        for raw_id, _ in accepted:
            pipe.hmget(
                keys.job_key(keys.text(raw_id)), "status", "origin", "started_at", "enqueued_at"
            )
        rows = pipe.execute()
    return [
        Sighting(
            keys.text(raw_id),
            keys.text(status) if status is not None else None,
            keys.text(origin or b""),
            bool(started),
            start_by,
            keys.text(enqueued or b""),
        )
        for (raw_id, start_by), (status, origin, started, enqueued) in zip(
            accepted, rows, strict=True
        )
    ]


def _registered_ids(connection: redis.Redis, sightings: list[Sighting]) -> set[str]:
    """Return the ids of scheduled and deferred jobs found in their registries."""
    looked = [s for s in sightings if s.status in REGISTRIES]
    with connection.pipeline(transaction=False) as pipe:
        for sighting in looked:
            pipe.zscore(PLACES[str(sighting.status)](sighting.origin), sighting.job_id)
        scores = pipe.execute()
    return {s.job_id for s, score in zip(looked, scores, strict=True) if score is not None}


def _queued_ids(connection: redis.Redis, origins: set[str]) -> set[str]:
    """Return the ids waiting on the given queues, one LRANGE per queue."""
    waiting: set[str] = set()
    for origin in origins:
        queue = Queue(origin, connection=connection)
        waiting.update(keys.text(raw) for raw in connection.lrange(queue.key, 0, -1))
    return waiting


def recover_safely(connection: redis.Redis) -> RecoveryReport | None:
    """Run a recovery pass; log rather than raise when Redis is unreachable."""
    try:
        report = recover(connection)
    except redis.RedisError as error:
        log.warning("recovery skipped: %s", error)
        return None
    if any(report.as_dict().values()):
        log.info("recovery: %s", report.as_dict())
    return report


def _recover_one(
    connection: redis.Redis, sighting: Sighting, on_queue: bool, report: RecoveryReport
) -> None:
    """Look at one accepted job and bring it back if a dead worker lost it."""
    job_id, status = sighting.job_id, sighting.status
    if status is None:  # deleted, or expired: nothing left to recover
        connection.zrem(keys.ACCEPTED, job_id)
        report.forgotten.append(job_id)
    elif status == JobStatus.QUEUED.value:
        if on_queue and not sighting.started and sighting.start_by < time.time():
            _expire(connection, Job.fetch(job_id, connection=connection), report)
        elif not on_queue:
            _recover_if_lost(connection, job_id, status, report)
    elif status in REGISTRIES and not on_queue:
        _recover_if_lost(connection, job_id, status, report)
    elif status == JobStatus.STARTED.value:
        job = Job.fetch(job_id, connection=connection)
        if not attempt_may_run(connection, job):
            _fail_abandoned(connection, job, report)


def _recover_if_lost(
    connection: redis.Redis, job_id: str, status: str, report: RecoveryReport
) -> None:
    """Put a job back on its queue once it has been out of its place for the grace period."""
    now = time.time()
    # Seen out of place twice, MISSING_GRACE apart: a live worker would have recorded it.
    connection.hsetnx(keys.MISSING, job_id, now)
    first_seen = float(connection.hget(keys.MISSING, job_id) or now)
    if now - first_seen < MISSING_GRACE:
        return
    job = Job.fetch(job_id, connection=connection)
    queue = Queue(job.origin, connection=connection)
    place = PLACES[status](queue.name)
    with connection.pipeline() as pipe:
        try:
            # Look again under WATCH: push it back only if it is still where it was, and lost.
            pipe.watch(job.key, queue.key, place)  # type: ignore[no-untyped-call]
            if job.get_status().value != status or _is_in(pipe, status, place, job.id):
                return
            stale = _executions_of(connection, job, queue)
            pipe.multi()
            pipe.hset(job.key, "status", JobStatus.QUEUED.value)
            if stale:
                pipe.zrem(keys.started_key(queue.name), *stale)
            pipe.lrem(keys.intermediate_key(queue.name), 0, job.id)  # a single-queue worker's pop
            pipe.lpush(queue.key, job.id)  # at the front: it has waited long enough
            pipe.hdel(keys.MISSING, job.id)
            pipe.execute()
        except WatchError:
            return  # it moved meanwhile: the next pass looks again
    report.requeued.append(job.id)


def _is_in(
    connection: redis.Redis | redis.client.Pipeline, status: str, place: str, job_id: str
) -> bool:
    """Tell whether a job id is in its status's place: a queue (a list) or a registry (a set)."""
    if status == JobStatus.QUEUED.value:
        return connection.lpos(place, job_id) is not None
    return connection.zscore(place, job_id) is not None


def _executions_of(connection: redis.Redis, job: Job, queue: Queue) -> list[str]:
    """Return the started-registry entries (job:execution) of a job."""
    prefix = f"{job.id}:"
    members = connection.zrange(keys.started_key(queue.name), 0, -1)
    return [keys.text(m) for m in members if keys.text(m).startswith(prefix)]


def _fail_abandoned(connection: redis.Redis, job: Job, report: RecoveryReport) -> None:
    """Treat the attempt of a dead worker as a transient failure: retry or dead-letter."""
    queue = Queue(job.origin, connection=connection)
    stale = _executions_of(connection, job, queue)
    if stale:
        connection.zrem(keys.started_key(queue.name), *stale)
    if connection.delete(keys.stop_requested_key(job.id)):
        _dead_letter(connection, job, report, STOPPED_WHILE_DEAD)
        return
    if not job.retries_left:
        _dead_letter(connection, job, report, (WORKER_DIED, f"worker {job.worker_name} died"))
        return
    job.meta["failure"] = {"type": WORKER_DIED, "message": f"worker {job.worker_name} died"}
    job.save_meta()
    # At once and at the front: the attempt was lost to a crash, and the retry scheduler
    # may itself have died with the worker.
    job.retries_left -= 1
    queue.enqueue_job(job, at_front=True)
    record_outcome(connection, job.origin, "retried", also=lambda pipe: events.append(
        pipe, job.id, "retrying",
        {"reason": job.meta["failure"], "delay": 0, "attempt": len(job.meta.get("attempts", []))},
        events.lifetime_of(job),
    ))
    report.retried.append(job.id)


def _expire(connection: redis.Redis, job: Job, report: RecoveryReport) -> None:
    """Dead-letter a job that waited too long to start, unless a worker just took it."""
    queue = Queue(job.origin, connection=connection)
    if connection.lrem(queue.key, 0, job.id):  # only one of us and a worker gets it
        _dead_letter(connection, job, report, QUEUED_TOO_LONG)


def _dead_letter(
    connection: redis.Redis, job: Job, report: RecoveryReport, why: tuple[str, str]
) -> None:
    """Move a job to the dead-letter queue for a reason of recovery's own."""
    kind, message = why
    queue = Queue(job.origin, connection=connection)
    job.meta["failure"] = {"type": kind, "message": message}
    job.save_meta()
    job.ended_at = now()  # the end a status answer reports, as for any other dead letter
    with connection.pipeline() as pipe:
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        pipe.hset(job.key, "ended_at", utcformat(job.ended_at))
        FailedJobRegistry(queue=queue).add(
            job, ttl=job.failure_ttl, exc_string=f"{kind}: {message}", pipeline=pipe
        )
        pipe.execute()
    canceled = why == STOPPED_WHILE_DEAD

    def writes(pipe: Any) -> None:
        events.append(
            pipe, job.id, "canceled" if canceled else "dead-lettered",
            {"reason": {"type": kind, "message": message}}, events.lifetime_of(job),
        )
        notices.schedule(pipe, job, JobStatus.FAILED)

    record_end(connection, job, "canceled" if canceled else "dead_lettered", also=writes,
               saved=True)
    report.dead_lettered.append(job.id)
