"""One health report of the service: Redis, live workers, the scheduler and the queues.

Everything here only reads: counts come from LLEN, ZCOUNT and HMGET in a few pipelined
round trips, never from RQ calls that clean registries up or prune worker sets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from rq.defaults import DEFAULT_WORKER_TTL
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.scheduler import RQScheduler
from rq.utils import utcparse
from rq.worker import BaseWorker, WorkerStatus
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from preview_worker import keys, queueing
from preview_worker.settings import Settings, redact_url

# Seconds past the longest silence a live foreign worker keeps (an idle one beats every
# DEFAULT_WORKER_TTL - 15 s; a stock SimpleWorker is silent for a whole job) before it is dead.
HEARTBEAT_GRACE = 60


@dataclass(frozen=True)
class QueueFigures:
    """What one queue holds right now."""

    name: str
    depth: int  # jobs waiting on the queue
    dlq_size: int  # dead letters not yet past their failure TTL
    oldest_age: float  # seconds the job at the head has waited; 0 when the queue is empty
    scheduler: bool  # whether some worker's scheduler holds this queue's lock

    def as_dict(self) -> dict[str, Any]:
        """Return the figures as clients see them."""
        return {
            "depth": self.depth,
            "dlqSize": self.dlq_size,
            "oldestAgeSeconds": round(self.oldest_age, 3),
            "scheduler": self.scheduler,
        }


@dataclass(frozen=True)
class WorkerFigures:
    """How many workers serve the queues, by state, and how many RQ still lists."""

    busy: int
    idle: int
    registered: int  # as RQ's Worker.count sees them, dead ones included until they expire

    @property
    def live(self) -> int:
        """Return how many workers are alive."""
        return self.busy + self.idle

    def as_dict(self) -> dict[str, int]:
        """Return the figures as clients see them."""
        return {"live": self.live, "busy": self.busy, "idle": self.idle,
                "registered": self.registered}


def read_queues(connection: redis.Redis, settings: Settings) -> list[QueueFigures]:
    """Read depth, dead letters, head age and scheduler of every queue in two round trips."""
    now = time.time()
    queues = queueing.queues(connection, settings)
    with connection.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.llen(queue.key)
            # The score is the expiry: ZCOUNT sees what cleanup would keep, and cleans nothing.
            pipe.zcount(FailedJobRegistry(queue=queue).key, f"({now}", "+inf")
            pipe.lindex(queue.key, 0)
            pipe.exists(RQScheduler.get_locking_key(queue.name))
        replies = pipe.execute()
    rows = [replies[at:at + 4] for at in range(0, len(replies), 4)]
    ages = _head_ages(connection, [row[2] for row in rows], now)
    return [
        QueueFigures(queue.name, int(depth), int(dead), age, bool(locked))
        for queue, (depth, dead, _, locked), age in zip(queues, rows, ages, strict=True)
    ]


def _head_ages(connection: redis.Redis, heads: list[Any], now: float) -> list[float]:
    """Return how long each head job has waited since it was enqueued (0 for none)."""
    with connection.pipeline(transaction=False) as pipe:
        for head in heads:
            pipe.hget(Job.key_for(keys.text(head or "")), "enqueued_at")
        stamps = pipe.execute()
    return [
        max(now - utcparse(keys.text(stamp)).timestamp(), 0.0) if head and stamp else 0.0
        for head, stamp in zip(heads, stamps, strict=True)
    ]


def read_workers(connection: redis.Redis, settings: Settings) -> WorkerFigures:
    """Count the live workers on our queues by state, in two round trips."""
    names = _worker_names(connection, settings)
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hmget(BaseWorker.redis_worker_namespace_prefix + name, "state", "last_heartbeat")
            pipe.exists(keys.worker_alive_key(name))
        replies = pipe.execute()
    window = max(DEFAULT_WORKER_TTL, settings.job_timeout) + HEARTBEAT_GRACE
    busy = idle = 0
    for name, (state, beat), alive in zip(names, replies[::2], replies[1::2], strict=True):
        if _is_live(name, beat, bool(alive), window):
            busy += keys.text(state) == WorkerStatus.BUSY.value
            idle += keys.text(state) != WorkerStatus.BUSY.value
    return WorkerFigures(busy=busy, idle=idle, registered=len(names))


def _worker_names(connection: redis.Redis, settings: Settings) -> list[str]:
    """Return the names of the workers RQ lists on any of our queues."""
    with connection.pipeline(transaction=False) as pipe:
        for name in queueing.queue_names(settings):
            pipe.smembers(WORKERS_BY_QUEUE_KEY % name)
        members = pipe.execute()
    prefix = BaseWorker.redis_worker_namespace_prefix
    return sorted({keys.text(key)[len(prefix):] for group in members for key in group})


def _is_live(name: str, heartbeat: Any, alive: bool, window: float) -> bool:
    """Tell whether a worker RQ lists is alive, not just a record that has yet to expire."""
    if name.startswith(keys.OUR_WORKER_PREFIX):
        return alive  # our workers refresh this key from a thread every few seconds
    if heartbeat is None:
        return False
    return time.time() - utcparse(keys.text(heartbeat)).timestamp() < window


@dataclass(frozen=True)
class HealthReport:
    """Whether the queues can make progress, and the figures that say why or why not."""

    ok: bool
    redis_url: str  # with any password replaced
    latency_ms: float | None  # of one PING; None when Redis did not answer
    error: str | None  # why Redis could not be read
    workers: WorkerFigures | None
    queues: tuple[QueueFigures, ...]
    problems: tuple[str, ...]

    @property
    def scheduler(self) -> bool | None:
        """Tell whether every queue has a scheduler (None when Redis is unknown)."""
        if self.error is not None:
            return None
        return all(queue.scheduler for queue in self.queues)

    def as_dict(self) -> dict[str, Any]:
        """Return the report as the API and the CLI print it."""
        return {
            "ok": self.ok,
            "problems": list(self.problems),
            "redis": {"ok": self.error is None, "latencyMs": self.latency_ms,
                      "url": self.redis_url, "error": self.error},
            "workers": self.workers.as_dict() if self.workers else None,
            "scheduler": self.scheduler,
            "queues": None if self.error else {q.name: q.as_dict() for q in self.queues},
        }


def health_report(connection: redis.Redis, settings: Settings) -> HealthReport:
    """Check Redis, workers, scheduler and queues; never raise, even when Redis is down."""
    where = _where(connection, settings)
    try:
        started = time.perf_counter()
        connection.ping()
        latency = round((time.perf_counter() - started) * 1000, 3)
        queues = read_queues(connection, settings)
        workers = read_workers(connection, settings)
    except redis.RedisError as error:
        message = _scrub(f"{type(error).__name__}: {error}", settings)
        problem = f"Redis at {where} does not answer"
        return HealthReport(False, where, None, message, None, (), (problem,))
    problems = _problems(workers, queues)
    return HealthReport(not problems, where, latency, None, workers, tuple(queues), problems)


def _problems(workers: WorkerFigures, queues: list[QueueFigures]) -> tuple[str, ...]:
    """Say what keeps the queues from making progress, if anything."""
    problems = []
    if workers.live == 0:
        problems.append("no live worker serves the queues")
    unscheduled = [queue.name for queue in queues if not queue.scheduler]
    if unscheduled:
        problems.append(
            f"no worker runs the scheduler for {', '.join(unscheduled)}: retries would wait "
            "forever (start a worker with --with-scheduler)"
        )
    return tuple(problems)


def _where(connection: redis.Redis, settings: Settings) -> str:
    """Name the Redis the report is about, never with its password."""
    if settings.redis_url:
        return redact_url(settings.redis_url)
    options = connection.connection_pool.connection_kwargs
    if options.get("path"):
        return f"unix://{options['path']}"
    return f"redis://{options.get('host')}:{options.get('port')}/{options.get('db', 0)}"


def _scrub(message: str, settings: Settings) -> str:
    """Remove the Redis password from an error message, should a client library echo it."""
    secret = urlsplit(settings.redis_url or "").password
    for form in {secret, unquote(secret)} if secret else set():
        message = message.replace(form, "***")
    return message
