"""The health report against a real Redis and real worker processes."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis
from rq import Queue, Worker
from rq.registry import FailedJobRegistry
from rq.utils import utcformat

from preview_worker import keys, queueing
from preview_worker.connections import connect
from preview_worker.health import health_report
from preview_worker.settings import Settings, load_settings

from .conftest import payload, service_environment
from .processes import start_worker, stop, wait_until

UNREACHABLE = "redis://:hunter2-secret@127.0.0.1:1/0"


def register_worker(connection: redis.Redis, name: str, heartbeat_age: float = 0.0) -> None:
    """Write a worker record as RQ does at a worker's birth, its last heartbeat some seconds ago."""
    worker = Worker([Queue("normal", connection=connection)], connection=connection, name=name)
    worker.register_birth()
    beat = datetime.now(timezone.utc) - timedelta(seconds=heartbeat_age)
    connection.hset(worker.key, "last_heartbeat", utcformat(beat))


def test_healthy_with_a_live_worker_process_running_the_scheduler(
    redis_client: redis.Redis, settings: Settings, redis_url: str, data_dir: Path
) -> None:
    """Given a running `preview-worker worker`, health is ok: one live worker, a scheduler."""
    worker = start_worker(service_environment(redis_url, data_dir), "--concurrency", "1")
    try:
        wait_until(lambda: health_report(redis_client, settings).ok, 30, "a healthy report")
        report = health_report(redis_client, settings).as_dict()
    finally:
        stop(worker)
    assert report["problems"] == []
    assert report["redis"]["ok"] is True and report["redis"]["latencyMs"] >= 0
    assert report["workers"]["live"] == 1
    assert report["scheduler"] is True
    assert report["store"]["ok"] is True and report["store"]["latencyMs"] >= 0
    assert {name: queue["depth"] for name, queue in report["queues"].items()} == {
        "high": 0, "normal": 0, "low": 0
    }


def test_not_healthy_without_workers_and_says_why(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """Given a job queued and no worker, health is not ok, names both problems, shows the depth."""
    queueing.submit(redis_client, settings, payload())
    report = health_report(redis_client, settings)
    answer = report.as_dict()
    assert report.ok is False
    assert answer["redis"]["ok"] is True
    assert answer["workers"]["live"] == 0 and answer["scheduler"] is False
    assert answer["queues"]["normal"]["depth"] == 1
    assert any("no live worker" in problem for problem in answer["problems"])
    assert any("scheduler" in problem for problem in answer["problems"])


def test_dead_workers_that_rq_still_lists_are_not_live(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """Given RQ records of a silent stock worker and of ours with no alive key, neither counts."""
    register_worker(redis_client, "stock-fresh")
    register_worker(redis_client, "stock-silent", heartbeat_age=3600)
    register_worker(redis_client, f"{keys.OUR_WORKER_PREFIX}host-1-0")
    register_worker(redis_client, f"{keys.OUR_WORKER_PREFIX}host-2-0")
    redis_client.set(keys.worker_alive_key(f"{keys.OUR_WORKER_PREFIX}host-2-0"), 1, ex=15)
    assert Worker.count(connection=redis_client) == 4
    workers = health_report(redis_client, settings).as_dict()["workers"]
    assert workers == {"live": 2, "busy": 0, "idle": 2, "registered": 4}


def test_scheduler_must_hold_every_queue(redis_client: redis.Redis, settings: Settings) -> None:
    """Given a scheduler lock on normal only, health reports no scheduler for high and low."""
    redis_client.set("rq:scheduler-lock:normal", "some-worker", ex=60)
    answer = health_report(redis_client, settings).as_dict()
    assert answer["scheduler"] is False
    assert [answer["queues"][name]["scheduler"] for name in ("high", "normal", "low")] == [
        False, True, False
    ]
    assert any("high, low" in problem for problem in answer["problems"])


def test_dead_letter_count_skips_expired_entries_and_cleans_nothing(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """Given one live and one expired dead letter, dlqSize is 1 and the registry keeps both."""
    registry_key = FailedJobRegistry("normal", connection=redis_client).key
    redis_client.zadd(registry_key, {"alive": time.time() + 600, "expired": time.time() - 5})
    answer = health_report(redis_client, settings).as_dict()
    assert answer["queues"]["normal"]["dlqSize"] == 1
    assert redis_client.zcard(registry_key) == 2


@pytest.mark.file_store  # about DATA_DIR; tests/test_s3_store.py checks a bucket's health
def test_a_store_that_cannot_be_written_fails_health_and_says_why(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Given DATA_DIR under a file, health is not ok, naming the store and why; Redis is fine."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("DATA_DIR cannot live under a file", "utf-8")
    settings = load_settings(service_environment(redis_url, blocker / "data"))
    report = health_report(redis_client, settings)
    answer = report.as_dict()
    assert report.ok is False and answer["redis"]["ok"] is True
    assert answer["store"] == {"ok": False, "latencyMs": None, "url": f"file://{blocker}/data",
                               "error": answer["store"]["error"]}
    assert "StorageError: cannot write under" in answer["store"]["error"]
    assert any(problem.startswith(f"the artifact store at file://{blocker}/data cannot be used")
               for problem in answer["problems"])


def test_unreachable_redis_answers_fast_without_the_password(settings: Settings) -> None:
    """Given a Redis URL nobody listens on, health fails within seconds, hiding the password."""
    unreachable = load_settings({"REDIS_URL": UNREACHABLE, "DATA_DIR": str(settings.data_dir)})
    started = time.monotonic()
    report = health_report(connect(UNREACHABLE), unreachable)
    elapsed = time.monotonic() - started
    answer = report.as_dict()
    assert report.ok is False and elapsed < 3
    assert answer["redis"]["ok"] is False and "Connection" in answer["redis"]["error"]
    assert answer["redis"]["url"] == "redis://:***@127.0.0.1:1/0"
    assert "hunter2" not in json.dumps(answer)
