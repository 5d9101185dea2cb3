"""Prometheus export of the queue figures, read from Redis at every scrape."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator

import redis
from prometheus_client import Gauge
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from preview_worker.observe.figures import QueueFigures, QueuePicture, read_picture
from preview_worker.observe.outcomes import OUTCOMES, WEBHOOK_OUTCOMES, bound_name
from preview_worker.settings import Settings

log = logging.getLogger(__name__)


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
        _webhook_deliveries(picture),
    ]


def _jobs(picture: QueuePicture) -> CounterMetricFamily:
    """Count jobs by queue and outcome, every outcome present from zero."""
    family = CounterMetricFamily(
        "preview_jobs", "Jobs by queue and outcome, from every worker and API process.",
        labels=["queue", "outcome"],
    )
    for queue in picture.queues:
        for outcome in OUTCOMES:
            family.add_metric([queue.name, outcome], picture.outcomes.get((queue.name, outcome), 0))
    return family


def _webhook_deliveries(picture: QueuePicture) -> CounterMetricFamily:
    """Count webhook delivery attempts by outcome, every outcome present from zero."""
    family = CounterMetricFamily(
        "preview_webhook_deliveries",
        "Webhook delivery attempts by outcome: delivered, retried, failed (the last attempt), "
        "refused (a host it may not call).",
        labels=["outcome"],
    )
    for outcome in WEBHOOK_OUTCOMES:
        family.add_metric([outcome], picture.webhooks.outcomes.get(outcome, 0))
    return family


def _durations(picture: QueuePicture) -> HistogramMetricFamily:
    """Give each queue's job duration histogram: cumulative buckets up to +Inf, and sum."""
    family = HistogramMetricFamily(
        "preview_job_duration_seconds", "How long job attempts ran, by queue.", labels=["queue"]
    )
    for queue in picture.queues:
        histogram = picture.durations[queue.name]
        buckets = [(bound_name(bound), float(count)) for bound, count in histogram.buckets]
        family.add_metric([queue.name], buckets, sum_value=histogram.total)
    return family


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


@functools.cache
def open_event_streams() -> Gauge:
    """Return the gauge of event streams open now, summed over the server's live processes."""
    # Made on first use, in the process that serves: prometheus_client reads its
    # multiprocess folder then.
    return Gauge("preview_event_streams_open", "Job event streams open now.",
                 multiprocess_mode="livesum")
