"""Bring back jobs that dead workers left behind, long before RQ's own cleanup would.

Two ways a job goes astray. A worker on several queues pops with BLPOP; killed before it
records the job, it leaves a job queued in name but on no queue. A worker killed mid-job
leaves a started job that RQ reaps only after its heartbeat and maintenance interval.
Recovery walks the accepted jobs that have not ended and puts both kinds back.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timezone

import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.utils import utcparse

from preview_worker import keys, metrics

log = logging.getLogger(__name__)

MISSING_GRACE = 5.0  # seconds a queued job may be off its queue before it counts as lost
STOCK_WORKER_SILENCE = 120.0  # seconds without heartbeat after which a stock worker is dead
OUR_WORKER_PREFIX = "preview-"


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
            "dead_lettered": self.dead_lettered,
            "forgotten": self.forgotten,
        }


def worker_is_alive(connection: redis.Redis, name: str) -> bool:
    """Tell whether the worker of this name still runs."""
    if not name:
        return False
    if name.startswith(OUR_WORKER_PREFIX):
        return bool(connection.exists(keys.worker_alive_key(name)))
    # A stock worker: its key expires some time after death; its heartbeat says sooner.
    beat = connection.hget(f"rq:worker:{name}", "last_heartbeat")
    if beat is None:
        return False
    try:
        last = utcparse(keys.text(beat)).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return True  # an unreadable heartbeat: do not risk running its job twice
    return time.time() - last < STOCK_WORKER_SILENCE


@dataclass(frozen=True)
class Sighting:
    """The few fields of an accepted job that one recovery pass reads in bulk."""

    job_id: str
    status: str | None  # None when the job's record is gone
    origin: str
    worker_name: str


def recover(connection: redis.Redis) -> RecoveryReport:
    """Run one recovery pass over every accepted job that has not ended."""
    report = RecoveryReport()
    lock = connection.lock(keys.RECOVERY_LOCK, timeout=keys.RECOVERY_LOCK_TTL, blocking=False)
    if not lock.acquire():
        return report  # another process is recovering right now
    try:
        accepted = [keys.text(raw) for raw in connection.zrange(keys.ACCEPTED, 0, -1)]
        sightings = _sight(connection, accepted)
        waiting = _queued_ids(connection, {s.origin for s in sightings if s.status == "queued"})
        missing = {keys.text(raw) for raw in connection.hkeys(keys.MISSING)}
        for sighting in sightings:
            _recover_one(connection, sighting, sighting.job_id in waiting, report)
        # Forget first sightings of jobs that are back on a queue, running or ended.
        lost = {s.job_id for s in sightings if s.status == "queued" and s.job_id not in waiting}
        if missing - lost:
            connection.hdel(keys.MISSING, *(missing - lost))
    finally:
        lock.release()
    return report


def _sight(connection: redis.Redis, job_ids: list[str]) -> list[Sighting]:
    """Read status, queue and worker of many jobs in one round trip."""
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hmget(f"rq:job:{job_id}", "status", "origin", "worker_name")
        rows = pipe.execute()
    return [
        Sighting(
            job_id,
            keys.text(status) if status is not None else None,
            keys.text(origin or b""),
            keys.text(worker or b""),
        )
        for job_id, (status, origin, worker) in zip(job_ids, rows, strict=True)
    ]


def _queued_ids(connection: redis.Redis, origins: set[str]) -> set[str]:
    """Return the ids waiting on the given queues, one LRANGE per queue."""
    waiting: set[str] = set()
    for origin in origins:
        waiting.update(keys.text(raw) for raw in connection.lrange(f"rq:queue:{origin}", 0, -1))
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
    if sighting.status is None:  # expired or deleted: nothing left to recover
        connection.zrem(keys.ACCEPTED, sighting.job_id)
        report.forgotten.append(sighting.job_id)
    elif sighting.status == JobStatus.QUEUED.value and not on_queue:
        _recover_if_lost(connection, sighting.job_id, report)
    elif sighting.status == JobStatus.STARTED.value:
        if not worker_is_alive(connection, sighting.worker_name):
            _fail_abandoned(connection, Job.fetch(sighting.job_id, connection=connection), report)


def _recover_if_lost(connection: redis.Redis, job_id: str, report: RecoveryReport) -> None:
    """Put a job that is queued but on no queue back, once it has been so for the grace period."""
    now = time.time()
    # Seen off its queue twice, MISSING_GRACE apart: a live worker would have recorded it.
    connection.hsetnx(keys.MISSING, job_id, now)
    first_seen = float(connection.hget(keys.MISSING, job_id) or now)
    if now - first_seen < MISSING_GRACE:
        return
    job = Job.fetch(job_id, connection=connection)
    queue = Queue(job.origin, connection=connection)
    with connection.pipeline() as pipe:
        _forget_executions(connection, job, queue, pipe)
        pipe.lpush(queue.key, job.id)  # at the front: it has waited long enough
        pipe.hdel(keys.MISSING, job.id)
        pipe.execute()
    report.requeued.append(job.id)


def _forget_executions(
    connection: redis.Redis, job: Job, queue: Queue, pipe: redis.client.Pipeline
) -> None:
    """Drop the started-registry entries that a dead worker left for this job."""
    registry = StartedJobRegistry(queue=queue)
    prefix = f"{job.id}:"
    for member in connection.zrange(registry.key, 0, -1):
        if keys.text(member).startswith(prefix):
            pipe.zrem(registry.key, keys.text(member))


def _fail_abandoned(connection: redis.Redis, job: Job, report: RecoveryReport) -> None:
    """Treat the attempt of a dead worker as a transient failure: retry or dead-letter."""
    queue = Queue(job.origin, connection=connection)
    reason = f"worker {job.worker_name} died while running the job"
    job.meta["failure"] = {"type": "WorkerDied", "message": reason}
    job.save_meta()
    with connection.pipeline() as pipe:
        _forget_executions(connection, job, queue, pipe)
        pipe.execute()
    if job.retries_left:
        # At once and at the front: the attempt was lost to a crash, and the retry
        # scheduler may itself have died with the worker.
        job.retries_left -= 1
        queue.enqueue_job(job, at_front=True)
        outcome = "retried"
    else:
        with connection.pipeline() as pipe:
            job.set_status(JobStatus.FAILED, pipeline=pipe)
            FailedJobRegistry(queue=queue).add(
                job, ttl=job.failure_ttl, exc_string=f"WorkerDied: {reason}", pipeline=pipe
            )
            pipe.zrem(keys.ACCEPTED, job.id)
            pipe.execute()
        outcome = "dead_lettered"
    metrics.record_outcome(connection, job.origin, outcome)
    (report.retried if outcome == "retried" else report.dead_lettered).append(job.id)
