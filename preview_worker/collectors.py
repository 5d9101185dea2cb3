"""Prometheus collectors and a JSON picture of the queues, both read from Redis when asked.

Nothing is counted in the process that serves the scrape: outcomes and durations come from
the hash that every worker and API process writes (see metrics.py), queue figures from the
queues themselves, so any number of gunicorn processes and worker hosts give one answer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from preview_worker import metrics, queueing
from preview_worker.health import QueueFigures, WorkerFigures, read_queues, read_workers
from preview_worker.metrics import DurationHistogram
from preview_worker.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueuePicture:
    """Every queue figure the service exports, read at one moment."""

    queues: list[QueueFigures] = field(default_factory=list)
    workers: WorkerFigures = field(default_factory=lambda: WorkerFigures(0, 0, 0))
    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)
    durations: dict[str, DurationHistogram] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Return the picture as the JSON metrics answer gives it."""
        return {
            "queues": {queue.name: self._queue_dict(queue) for queue in self.queues},
            "workers": self.workers.as_dict(),
        }

    def _queue_dict(self, queue: QueueFigures) -> dict[str, Any]:
        """Return one queue's figures, outcomes and durations."""
        histogram = self.durations.get(queue.name, DurationHistogram())
        mean = histogram.total / histogram.count if histogram.count else None
        return {
            **queue.as_dict(),
            "outcomes": {o: self.outcomes.get((queue.name, o), 0) for o in metrics.OUTCOMES},
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
        outcomes=metrics.read_outcomes(connection),
        durations=metrics.read_durations(connection, names),
    )


def queue_picture(connection: redis.Redis, settings: Settings) -> dict[str, Any]:
    """Return the queues' figures as JSON-able data, for GET /api/preview/metrics."""
    return read_picture(connection, settings).as_dict()


class QueueCollector:
    """A Prometheus collector that reads the queue figures from Redis at every scrape."""

    def __init__(self, connect: Callable[[], redis.Redis], settings: Settings) -> None:
        """Keep how to reach Redis (called at each scrape) and the settings naming the queues."""
        self.connect = connect
        self.settings = settings

    def describe(self) -> list[Metric]:
        """Name the families without touching Redis, so registering one is free."""
        return [*_families(QueuePicture()), _redis_up(1)]

    def collect(self) -> Iterator[Metric]:
        """Yield every family; when Redis fails, only preview_redis_up 0, and log why."""
        try:
            picture = read_picture(self.connect(), self.settings)
        except redis.RedisError as error:
            log.warning("queue metrics unavailable, Redis did not answer: %s", error)
            yield _redis_up(0)
            return
        yield _redis_up(1)
        yield from _families(picture)


def _redis_up(value: int) -> GaugeMetricFamily:
    """Say whether the last scrape could read Redis."""
    return GaugeMetricFamily(
        "preview_redis_up", "Whether this scrape could read the queues from Redis.", value=value
    )


def _families(picture: QueuePicture) -> list[Metric]:
    """Build every queue family from a picture."""
    return [
        _jobs(picture),
        _durations(picture),
        _per_queue(picture, "preview_queue_depth", "Jobs waiting on a queue.",
                   lambda queue: queue.depth),
        _per_queue(picture, "preview_dlq_size", "Dead-lettered jobs of a queue.",
                   lambda queue: queue.dlq_size),
        _per_queue(picture, "preview_queue_oldest_age_seconds",
                   "Seconds the job at the head of a queue has waited; 0 when empty.",
                   lambda queue: queue.oldest_age),
        _workers(picture),
    ]


def _jobs(picture: QueuePicture) -> CounterMetricFamily:
    """Count jobs by queue and outcome, every outcome present from zero."""
    family = CounterMetricFamily(
        "preview_jobs", "Jobs by queue and outcome, from every worker and API process.",
        labels=["queue", "outcome"],
    )
    for queue in picture.queues:
        for outcome in metrics.OUTCOMES:
            family.add_metric([queue.name, outcome], picture.outcomes.get((queue.name, outcome), 0))
    return family


def _durations(picture: QueuePicture) -> HistogramMetricFamily:
    """Give each queue's job duration histogram: cumulative buckets up to +Inf, and sum."""
    family = HistogramMetricFamily(
        "preview_job_duration_seconds", "How long job attempts ran, by queue.", labels=["queue"]
    )
    for queue in picture.queues:
        histogram = picture.durations[queue.name]
        buckets = [(_le(bound), float(count)) for bound, count in histogram.buckets]
        family.add_metric([queue.name], buckets, sum_value=histogram.total)
    return family


def _le(bound: float) -> str:
    """Write a bucket's upper bound as Prometheus does."""
    return "+Inf" if math.isinf(bound) else repr(bound)


def _per_queue(
    picture: QueuePicture, name: str, documentation: str, value: Callable[[QueueFigures], float]
) -> GaugeMetricFamily:
    """Give one gauge per queue."""
    family = GaugeMetricFamily(name, documentation, labels=["queue"])
    for queue in picture.queues:
        family.add_metric([queue.name], value(queue))
    return family


def _workers(picture: QueuePicture) -> GaugeMetricFamily:
    """Give the live workers by state."""
    family = GaugeMetricFamily("preview_workers", "Live workers by state.", labels=["state"])
    family.add_metric(["busy"], picture.workers.busy)
    family.add_metric(["idle"], picture.workers.idle)
    return family
