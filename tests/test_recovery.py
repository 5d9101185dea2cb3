"""Recovery: jobs a dead worker left popped or started come back; a live worker's stay put."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from preview_worker import keys, queueing, recovery
from preview_worker.observe import figures
from preview_worker.settings import Settings, load_settings

from .conftest import MINIMAL, load_payload, service_environment


@pytest.fixture
def job_id(redis_client: redis.Redis, settings: Settings) -> str:
    """Give the id of a freshly submitted job on the normal queue."""
    return queueing.submit(redis_client, settings, load_payload(MINIMAL)).job_id


def pop_and_die(connection: redis.Redis, job_id: str) -> None:
    """Leave a job as a worker killed right after BLPOP does: queued, on no queue."""
    assert connection.lrem("rq:queue:normal", 0, job_id) == 1


def start_and_die(connection: redis.Redis, job_id: str, worker_name: str) -> None:
    """Leave a job as a worker killed mid-run does: started, in the started registry."""
    pop_and_die(connection, job_id)
    job = Job.fetch(job_id, connection=connection)
    job.worker_name = worker_name
    job.set_status(JobStatus.STARTED)
    job.save()
    registry = StartedJobRegistry("normal", connection)
    connection.zadd(registry.key, {f"{job_id}:exec": time.time() + 600})


def test_popped_job_is_requeued_after_the_grace_period(
    redis_client: redis.Redis, job_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a popped job its worker lost, recovery requeues it once, after the grace period."""
    monkeypatch.setattr(recovery, "MISSING_GRACE", 0.3)
    pop_and_die(redis_client, job_id)
    assert recovery.recover(redis_client).requeued == []  # first sight: a worker may be mid-pop
    time.sleep(0.4)
    assert recovery.recover(redis_client).requeued == [job_id]
    assert redis_client.lrange("rq:queue:normal", 0, -1) == [job_id.encode()]
    assert recovery.recover(redis_client).requeued == []


def test_started_job_of_a_dead_worker_is_retried_at_once(
    redis_client: redis.Redis, job_id: str, settings: Settings
) -> None:
    """Given a started job of a dead worker, recovery requeues it at once, spending one retry."""
    start_and_die(redis_client, job_id, "preview-gone-1-0")
    report = recovery.recover(redis_client)
    assert report.retried == [job_id]
    job = Job.fetch(job_id, connection=redis_client)
    assert job.get_status() == JobStatus.QUEUED and job.retries_left == settings.retry_max - 1
    assert redis_client.lrange("rq:queue:normal", 0, -1) == [job_id.encode()]
    assert redis_client.zcard(StartedJobRegistry("normal", redis_client).key) == 0
    assert job.meta["failure"]["type"] == "WorkerDied"


def test_started_job_with_no_retries_left_is_dead_lettered(
    redis_client: redis.Redis, redis_url: str, data_dir: Path
) -> None:
    """Given no retries left, recovery dead-letters a dead worker's started job as WorkerDied."""
    settings = load_settings(service_environment(redis_url, data_dir, PREVIEW_RETRY_MAX="0"))
    job_id = queueing.submit(redis_client, settings, load_payload(MINIMAL)).job_id
    start_and_die(redis_client, job_id, "preview-gone-1-0")
    assert recovery.recover(redis_client).dead_lettered == [job_id]
    status = queueing.job_status(redis_client, job_id)
    assert status["deadLettered"] and status["error"]["type"] == "WorkerDied"
    assert status["endedAt"] is not None
    assert redis_client.zscore(keys.ACCEPTED, job_id) is None


def test_job_of_a_live_worker_is_left_alone(redis_client: redis.Redis, job_id: str) -> None:
    """Given a started job whose worker is still alive, recovery changes nothing."""
    start_and_die(redis_client, job_id, "preview-alive-1-0")
    redis_client.set(keys.worker_alive_key("preview-alive-1-0"), 1, ex=10)
    assert recovery.recover(redis_client).as_dict() == {
        "requeued": [],
        "retried": [],
        "deadLettered": [],
        "forgotten": [],
    }
    assert Job.fetch(job_id, connection=redis_client).get_status() == JobStatus.STARTED


def test_only_one_recovery_runs_at_a_time(redis_client: redis.Redis, job_id: str) -> None:
    """Given the recovery lock held by another host, a recovery retries nothing."""
    start_and_die(redis_client, job_id, "preview-gone-1-0")
    redis_client.set(keys.RECOVERY_LOCK, "another host", ex=10)
    assert recovery.recover(redis_client).retried == []


def test_ended_and_expired_jobs_are_forgotten(redis_client: redis.Redis, job_id: str) -> None:
    """Given an accepted job whose record has expired, recovery forgets it."""
    redis_client.delete(f"rq:job:{job_id}")
    assert recovery.recover(redis_client).forgotten == [job_id]
    assert redis_client.zcard(keys.ACCEPTED) == 0


def test_an_end_no_hook_settled_is_counted_once(redis_client: redis.Redis, job_id: str) -> None:
    """Given a job that finished while its hook died, recovery counts it, and only once."""
    pop_and_die(redis_client, job_id)
    job = Job.fetch(job_id, connection=redis_client)
    job.set_status(JobStatus.FINISHED)
    recovery.recover(redis_client)
    recovery.recover(redis_client)
    assert figures.read_outcomes(redis_client)[("normal", "succeeded")] == 1
    assert redis_client.zcard(keys.ACCEPTED) == 0


def test_a_job_that_waited_too_long_is_dead_lettered(
    redis_client: redis.Redis, job_id: str
) -> None:
    """Given a job still queued after its start-by time, recovery dead-letters it."""
    redis_client.zadd(keys.ACCEPTED, {job_id: time.time() - 1})
    assert recovery.recover(redis_client).dead_lettered == [job_id]
    status = queueing.job_status(redis_client, job_id)
    assert status["deadLettered"] and status["error"]["type"] == "QueuedTooLong"
    assert status["endedAt"] is not None
    assert redis_client.llen("rq:queue:normal") == 0


def test_a_stop_asked_of_a_dead_workers_job_cancels_it(
    redis_client: redis.Redis, job_id: str
) -> None:
    """Given a stop sent to a job whose worker had died, recovery ends it, never retries it."""
    start_and_die(redis_client, job_id, "preview-gone-1-0")
    assert queueing.cancel(redis_client, job_id) == "stopping"
    assert recovery.recover(redis_client).dead_lettered == [job_id]
    assert queueing.job_status(redis_client, job_id)["error"]["type"] == "PreviewStopped"
    assert figures.read_outcomes(redis_client)[("normal", "canceled")] == 1


def test_a_foreign_workers_job_waits_for_its_timeout(
    redis_client: redis.Redis, job_id: str
) -> None:
    """Given a job of a stock worker, recovery waits until its timeout has surely passed."""
    start_and_die(redis_client, job_id, "rq-stock-worker")
    job = Job.fetch(job_id, connection=redis_client)
    job.heartbeat(datetime.now(timezone.utc), ttl=60)
    assert recovery.recover(redis_client).retried == []
    silent = timedelta(seconds=(job.timeout or 0) + 61)
    job.heartbeat(datetime.now(timezone.utc) - silent, ttl=60)
    assert recovery.recover(redis_client).retried == [job_id]


def test_a_job_whose_worker_died_after_its_hook_is_still_recovered(
    redis_client: redis.Redis, job_id: str
) -> None:
    """Given a success hook that ran before its worker died unsaved, recovery still retries it."""
    from preview_worker.observe import outcomes

    start_and_die(redis_client, job_id, "preview-gone-1-0")
    outcomes.record_end(redis_client, Job.fetch(job_id, connection=redis_client), "succeeded")
    assert redis_client.zscore(keys.ACCEPTED, job_id) is not None, "a hook forgets nothing"
    assert recovery.recover(redis_client).retried == [job_id]


@pytest.mark.parametrize("status", [JobStatus.SCHEDULED, JobStatus.DEFERRED])
def test_a_job_waiting_in_no_registry_is_requeued_after_the_grace_period(
    redis_client: redis.Redis, job_id: str, status: JobStatus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a job left scheduled or deferred on no queue and in no registry, it comes back.

    Redis out of memory can refuse the write that files a retry in its registry after the
    status was set: no scheduler would ever find that job.
    """
    monkeypatch.setattr(recovery, "MISSING_GRACE", 0.3)
    pop_and_die(redis_client, job_id)
    Job.fetch(job_id, connection=redis_client).set_status(status)
    assert recovery.recover(redis_client).requeued == []  # first sight
    time.sleep(0.4)
    assert recovery.recover(redis_client).requeued == [job_id]
    assert Job.fetch(job_id, connection=redis_client).get_status() == JobStatus.QUEUED
    assert redis_client.lrange("rq:queue:normal", 0, -1) == [job_id.encode()]
    assert recovery.recover(redis_client).requeued == []


def test_a_job_in_its_registry_is_left_to_the_scheduler(
    redis_client: redis.Redis, job_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a retry scheduled in its registry, recovery never moves it, however long it waits."""
    monkeypatch.setattr(recovery, "MISSING_GRACE", 0.1)
    pop_and_die(redis_client, job_id)
    job = Job.fetch(job_id, connection=redis_client)
    job.set_status(JobStatus.SCHEDULED)
    redis_client.zadd(keys.scheduled_key("normal"), {job_id: time.time() + 600})
    for _ in range(3):
        assert recovery.recover(redis_client).requeued == []
        time.sleep(0.15)
    assert job.get_status() == JobStatus.SCHEDULED
    assert redis_client.llen("rq:queue:normal") == 0
