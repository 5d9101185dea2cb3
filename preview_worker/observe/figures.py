"""The figures of the queues, read from Redis when asked: shared by health, JSON and Prometheus.

Everything here only reads: counts come from LLEN, ZCOUNT and HMGET in a few pipelined
round trips, never from RQ calls that clean registries up or prune worker sets. Nothing is
counted in the process that reads: outcomes and durations come from the hashes every
worker and API process writes (see outcomes.py).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
from rq.defaults import DEFAULT_WORKER_TTL
from rq.utils import utcparse
from rq.worker import WorkerStatus

from preview_worker import keys, queueing
from preview_worker.observe.outcomes import (
    DURATION_BUCKETS,
    OUTCOMES,
    WEBHOOK_OUTCOMES,
    bound_name,
)
from preview_worker.settings import Settings

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
    names = queueing.queue_names(settings)
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.llen(keys.queue_key(name))
            # The score is the expiry: ZCOUNT sees what cleanup would keep, and cleans nothing.
            pipe.zcount(keys.failed_key(name), f"({now}", "+inf")
            pipe.lindex(keys.queue_key(name), 0)
            pipe.exists(keys.scheduler_lock_key(name))
        replies = pipe.execute()
    rows = [replies[at:at + 4] for at in range(0, len(replies), 4)]
    ages = _head_ages(connection, [row[2] for row in rows], now)
    return [
        QueueFigures(name, int(depth), int(dead), age, bool(locked))
        for name, (depth, dead, _, locked), age in zip(names, rows, ages, strict=True)
    ]


def _head_ages(connection: redis.Redis, heads: list[Any], now: float) -> list[float]:
    """Return how long each head job has waited since it was enqueued (0 for none)."""
    with connection.pipeline(transaction=False) as pipe:
        for head in heads:
            pipe.hget(keys.job_key(keys.text(head or "")), "enqueued_at")
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
            pipe.hmget(keys.worker_key(name), "state", "last_heartbeat")
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
            pipe.smembers(keys.workers_of_queue_key(name))
        members = pipe.execute()
    prefix = keys.RQ_WORKER_PREFIX
    return sorted({keys.text(key)[len(prefix):] for group in members for key in group})


def _is_live(name: str, heartbeat: Any, alive: bool, window: float) -> bool:
    """Tell whether a worker RQ lists is alive, not just a record that has yet to expire."""
    if name.startswith(keys.OUR_WORKER_PREFIX):
        return alive  # our workers refresh this key from a thread every few seconds
    if heartbeat is None:
        return False
    return time.time() - utcparse(keys.text(heartbeat)).timestamp() < window


@dataclass(frozen=True)
class WebhookFigures:
    """The webhook deliveries: attempts counted by outcome, waiting ones, dead letters."""

    outcomes: dict[str, int] = field(default_factory=dict)
    depth: int = 0  # deliveries waiting on the webhooks queue (retries wait scheduled)
    dlq_size: int = 0  # deliveries that failed their last attempt, not yet expired

    def as_dict(self) -> dict[str, Any]:
        """Return the figures as clients see them."""
        return {
            "depth": self.depth,
            "dlqSize": self.dlq_size,
            "deliveries": {name: self.outcomes.get(name, 0) for name in WEBHOOK_OUTCOMES},
        }


def read_webhooks(connection: redis.Redis, settings: Settings) -> WebhookFigures:
    """Read the webhook figures in one round trip."""
    name = queueing.queue_name(settings, queueing.WEBHOOKS)
    with connection.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.WEBHOOK_OUTCOMES)
        pipe.llen(keys.queue_key(name))
        pipe.zcount(keys.failed_key(name), f"({time.time()}", "+inf")
        counts, depth, dead = pipe.execute()
    outcomes = {keys.text(outcome): int(count) for outcome, count in counts.items()}
    return WebhookFigures(outcomes, int(depth), int(dead))


@dataclass
class DurationHistogram:
    """A queue's recorded job durations: cumulative bucket counts (as Prometheus), sum, count."""

    buckets: list[tuple[float, int]] = field(default_factory=list)
    total: float = 0.0
    count: int = 0


def read_outcomes(connection: redis.Redis) -> dict[tuple[str, str], int]:
    """Return the recorded count of every (queue, outcome)."""
    raw = connection.hgetall(keys.OUTCOMES)
    counts: dict[tuple[str, str], int] = {}
    for name, value in raw.items():
        queue, _, outcome = keys.text(name).partition("|")
        counts[(queue, outcome)] = int(value)
    return counts


def read_durations(connection: redis.Redis, queues: Iterable[str]) -> dict[str, DurationHistogram]:
    """Return the recorded duration histogram of each queue."""
    histograms = {}
    for queue in queues:
        recorded = connection.hgetall(keys.durations_key(queue))
        raw = {keys.text(name): value for name, value in recorded.items()}
        counts = [int(raw.get(f"le:{bound_name(bound)}", 0)) for bound in DURATION_BUCKETS]
        histograms[queue] = DurationHistogram(
            buckets=list(zip(DURATION_BUCKETS, itertools.accumulate(counts), strict=True)),
            total=float(raw.get("sum", 0.0)),
            count=int(raw.get("count", 0)),
        )
    return histograms


def json_name(outcome: str) -> str:
    """Return an outcome's name in JSON answers: camelCase ("deadLettered").

    Prometheus keeps the label value "dead_lettered" that alerts and dashboards read; the
    JSON answer does not repeat the old name, since a client summing the counts would
    count those jobs twice.
    """
    head, *rest = outcome.split("_")
    return head + "".join(part.capitalize() for part in rest)


@dataclass(frozen=True)
class QueuePicture:
    """Every queue figure the service exports, read at one moment."""

    queues: list[QueueFigures] = field(default_factory=list)
    workers: WorkerFigures = field(default_factory=lambda: WorkerFigures(0, 0, 0))
    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)
    durations: dict[str, DurationHistogram] = field(default_factory=dict)
    webhooks: WebhookFigures = field(default_factory=WebhookFigures)

    def as_dict(self) -> dict[str, Any]:
        """Return the picture as the JSON metrics answer gives it."""
        return {
            "queues": {queue.name: self._queue_dict(queue) for queue in self.queues},
            "workers": self.workers.as_dict(),
            "webhooks": self.webhooks.as_dict(),
        }

    def _queue_dict(self, queue: QueueFigures) -> dict[str, Any]:
        """Return one queue's figures, outcomes and durations."""
        histogram = self.durations.get(queue.name, DurationHistogram())
        mean = histogram.total / histogram.count if histogram.count else None
        return {
            **queue.as_dict(),
            "outcomes": {
                json_name(outcome): self.outcomes.get((queue.name, outcome), 0)
                for outcome in OUTCOMES
            },
            "durations": {
                "count": histogram.count,
                "sumSeconds": round(histogram.total, 6),
                "meanSeconds": round(mean, 6) if mean is not None else None,
            },
        }


def read_picture(connection: redis.Redis, settings: Settings) -> QueuePicture:
    """Read every figure from Redis (a few round trips); raise redis.RedisError when down."""
    names = queueing.queue_names(settings)
    return QueuePicture(
        queues=read_queues(connection, settings),
        workers=read_workers(connection, settings),
        outcomes=read_outcomes(connection),
        durations=read_durations(connection, names),
        webhooks=read_webhooks(connection, settings),
    )


def queue_picture(connection: redis.Redis, settings: Settings) -> dict[str, Any]:
    """Return the queues' figures as JSON-able data, for GET /api/preview/metrics."""
    return read_picture(connection, settings).as_dict()
