"""Prometheus queue collectors and the JSON queue picture, read from a real Redis."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from preview_worker import queueing
from preview_worker.connections import connect
from preview_worker.observe.figures import queue_picture
from preview_worker.observe.prometheus import QueueCollector
from preview_worker.settings import Settings

from .conftest import payload, service_environment
from .processes import start_worker, stop


def registry_of(connection: redis.Redis, settings: Settings) -> CollectorRegistry:
    """Return a registry holding only the queue collector, as the app registers it."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(QueueCollector(lambda: connection, settings))
    return registry


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    """Return one sample's value from a scrape of the registry."""
    return registry.get_sample_value(name, labels)


def test_outcomes_and_durations_of_real_jobs(
    redis_client: redis.Redis, settings: Settings, redis_url: str, data_dir: Path
) -> None:
    """Given one good and one bad job run by a real worker, the counts and histogram match them."""
    queueing.submit(redis_client, settings, payload())
    queueing.submit(redis_client, settings, payload(tutorialId="Bad Slug"))
    worker = start_worker(service_environment(redis_url, data_dir), "--burst", "--concurrency", "1")
    try:
        assert worker.wait(120) == 0
    finally:
        stop(worker)
    registry = registry_of(redis_client, settings)
    jobs = "preview_jobs_total"
    assert sample(registry, jobs, queue="normal", outcome="enqueued") == 2
    assert sample(registry, jobs, queue="normal", outcome="succeeded") == 1
    assert sample(registry, jobs, queue="normal", outcome="dead_lettered") == 1
    assert sample(registry, jobs, queue="high", outcome="succeeded") == 0
    duration = "preview_job_duration_seconds"
    assert sample(registry, f"{duration}_count", queue="normal") == 2
    assert sample(registry, f"{duration}_bucket", queue="normal", le="+Inf") == 2
    assert (sample(registry, f"{duration}_sum", queue="normal") or 0) > 0
    assert sample(registry, "preview_dlq_size", queue="normal") == 1
    assert sample(registry, "preview_queue_depth", queue="normal") == 0
    assert sample(registry, "preview_redis_up") == 1


def test_depth_and_oldest_age_of_waiting_jobs(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """Given jobs waiting with no worker, depth counts them and the head's age grows; empty is 0."""
    queueing.submit(redis_client, settings, payload(revision=1))
    queueing.submit(redis_client, settings, payload(revision=2))
    queueing.submit(redis_client, settings, payload(revision=3, priority="high"))
    time.sleep(1.0)
    registry = registry_of(redis_client, settings)
    assert sample(registry, "preview_queue_depth", queue="normal") == 2
    assert sample(registry, "preview_queue_depth", queue="high") == 1
    assert 1.0 <= (sample(registry, "preview_queue_oldest_age_seconds", queue="normal") or 0) < 30
    assert sample(registry, "preview_queue_oldest_age_seconds", queue="low") == 0
    assert sample(registry, "preview_workers", state="idle") == 0


def test_json_picture_gives_the_same_figures(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """Given two submissions of one payload, the JSON picture shows one job, one duplicate."""
    queueing.submit(redis_client, settings, payload())
    queueing.submit(redis_client, settings, payload())
    normal = queue_picture(redis_client, settings)["queues"]["normal"]
    assert normal["depth"] == 1 and normal["dlqSize"] == 0
    assert normal["outcomes"]["enqueued"] == 1 and normal["outcomes"]["duplicate"] == 1
    assert set(normal["outcomes"]) == {
        "enqueued", "duplicate", "rejected", "succeeded", "retried", "deadLettered", "canceled"
    }
    assert normal["oldestAgeSeconds"] >= 0 and normal["durations"]["count"] == 0


def test_registering_does_not_read_redis(settings: Settings) -> None:
    """Given a collector whose connection factory fails, registering it never calls it."""
    def refuse() -> redis.Redis:
        raise AssertionError("registration must not read Redis")

    registry = CollectorRegistry(auto_describe=True)
    registry.register(QueueCollector(refuse, settings))


def test_unreachable_redis_does_not_fail_the_scrape(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Given Redis unreachable, a scrape succeeds with preview_redis_up 0 and logs why."""
    registry = registry_of(connect("redis://127.0.0.1:1/0"), settings)
    text = generate_latest(registry).decode()
    assert "preview_redis_up 0.0" in text
    assert "preview_queue_depth{" not in text
    assert "queue metrics unavailable" in caplog.text
