"""Workers as real processes: priority, retries, dead letters, cancel, SIGKILL, SIGTERM."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.job import Job

from preview_worker import queueing
from preview_worker.observe import figures
from preview_worker.settings import Settings, load_settings

from .conftest import payload, service_environment, submit_together
from .processes import kill_group, running_worker, wait_until

QUEUES = ("high", "normal", "low")


def slow_payload(revision: int = 0) -> dict[str, Any]:
    """Return a valid payload near the size limit, whose render takes a second or more."""
    code = "def double(x):\n    return x * 2  # twice as much\n" * 60
    body = "Some *text* with `code` and a [link](https://example.org/docs).\n\n" * 8
    steps = [
        {"title": f"Step {n}", "body": body, "code": {"language": "python", "source": code}}
        for n in range(200)
    ]
    content = {"title": "Slow", "steps": steps}
    return {"tutorialId": "slow", "revision": revision, "content": content}


def status_of(connection: redis.Redis, job_id: str) -> dict[str, Any]:
    """Return a job's status answer."""
    return queueing.job_status(connection, job_id)


def has_ended(connection: redis.Redis, job_id: str) -> bool:
    """Tell whether a job finished, was dead-lettered or was canceled."""
    return queueing.has_ended(status_of(connection, job_id))


def is_rendering(connection: redis.Redis, job_id: str) -> bool:
    """Tell whether a job's render function is running (not merely popped by a worker)."""
    status = status_of(connection, job_id)
    return bool(status["status"] == "started" and status["progress"]["stage"] == "page")


@pytest.mark.both_stores
def test_high_job_runs_before_fifty_low_ones(
    redis_client: redis.Redis, settings: Settings, redis_url: str, data_dir: Path
) -> None:
    """Given 50 low jobs queued first, a high job still starts before all of them."""
    lows = [
        queueing.submit(redis_client, settings, payload(priority="low", revision=n)).job_id
        for n in range(50)
    ]
    high = queueing.submit(redis_client, settings, payload(priority="high", revision=99)).job_id
    environment = service_environment(redis_url, data_dir)
    with running_worker(environment, "--burst", "--concurrency", "1") as worker:
        assert worker.wait(120) == 0
    started = {job_id: status_of(redis_client, job_id)["startedAt"] for job_id in [*lows, high]}
    assert all(status_of(redis_client, job_id)["status"] == "finished" for job_id in started)
    assert started[high] < min(started[low] for low in lows)


@pytest.mark.both_stores
def test_transient_failures_retry_with_growing_gaps_then_dead_letter(
    redis_client: redis.Redis, redis_url: str, data_dir: Path, refuse_writes: Callable[[], None]
) -> None:
    """Given a store that refuses writes, a job retries 3 times at growing gaps, then is
    dead-lettered.
    """
    refuse_writes()
    environment = service_environment(redis_url, data_dir, PREVIEW_RETRY_BASE_DELAY="2")
    settings = load_settings(environment)
    job_id = queueing.submit(redis_client, settings, payload()).job_id
    with running_worker(environment, "--concurrency", "1"):
        wait_until(lambda: has_ended(redis_client, job_id), 60, "the last retry")
    status = status_of(redis_client, job_id)
    assert status["deadLettered"] and status["attempts"] == 4 and status["retriesLeft"] == 0
    assert status["error"]["type"] == "StorageError"
    job = Job.fetch(job_id, connection=redis_client)
    attempts = job.meta["attempts"]
    gaps = [later - earlier for earlier, later in zip(attempts, attempts[1:], strict=False)]
    planned = job.retry_intervals or []
    assert planned == sorted(planned) and planned[-1] > planned[0], planned
    # The scheduler moves due jobs once a second, so a gap may run up to a second long.
    assert all(-0.5 <= gap - plan <= 1.5 for gap, plan in zip(gaps, planned, strict=True)), (
        f"gaps {gaps} follow the plan {planned}"
    )
    outcomes = figures.read_outcomes(redis_client)
    assert outcomes[("normal", "retried")] == 3 and outcomes[("normal", "dead_lettered")] == 1


def test_permanent_failure_is_dead_lettered_after_one_attempt(
    redis_client: redis.Redis, settings: Settings, redis_url: str, data_dir: Path
) -> None:
    """Given an invalid payload, the worker dead-letters it after one attempt, with no traceback."""
    job_id = queueing.submit(redis_client, settings, payload(tutorialId="Not A Slug")).job_id
    with running_worker(service_environment(redis_url, data_dir), "--burst") as worker:
        assert worker.wait(60) == 0
    status = status_of(redis_client, job_id)
    assert status["deadLettered"] and status["attempts"] == 1 and status["retriesLeft"] == 0
    assert status["error"]["type"] == "InvalidPayload"
    assert "/tutorialId" in status["error"]["message"]
    assert "Traceback" not in str(status)


@pytest.mark.both_stores
@pytest.mark.parametrize("kind", ["simple", "fork"])
def test_cancel_stops_a_running_job_and_a_resubmission_runs_in_full(
    redis_client: redis.Redis, settings: Settings, redis_url: str, data_dir: Path, kind: str,
    stored_previews: Callable[[], list[str]],
) -> None:
    """Given a job mid-render, When canceled, Then it stops unwritten; its retry then runs."""
    job_id = queueing.submit(redis_client, settings, slow_payload()).job_id
    environment = service_environment(redis_url, data_dir)
    with running_worker(environment, "--kind", kind, "--concurrency", "1"):
        wait_until(lambda: is_rendering(redis_client, job_id), 30, "rendering")
        assert queueing.cancel(redis_client, job_id) == "stopping"
        wait_until(lambda: has_ended(redis_client, job_id), 30, "the stop")
        status = status_of(redis_client, job_id)
        assert status["status"] == "stopped" and status["result"] is None
        assert stored_previews() == [], "a stopped render writes nothing"
        assert figures.read_outcomes(redis_client)[("normal", "canceled")] == 1
        with pytest.raises(queueing.JobAlreadyEnded):
            queueing.cancel(redis_client, job_id)

        again = queueing.submit(redis_client, settings, slow_payload())
        assert again.job_id == job_id and not again.duplicate
        wait_until(lambda: has_ended(redis_client, job_id), 60, "the new attempt")
    assert status_of(redis_client, job_id)["status"] == "finished"
    assert stored_previews() == [status_of(redis_client, job_id)["result"]["artifactHash"]]


@pytest.mark.both_stores
def test_stock_rq_worker_runs_jobs_and_dead_letters_failures(
    redis_client: redis.Redis, settings: Settings, redis_url: str, data_dir: Path
) -> None:
    """Given a stock `rq worker`, a good job finishes and a bad one dead-letters in one attempt."""
    good = queueing.submit(redis_client, settings, payload()).job_id
    bad = queueing.submit(redis_client, settings, payload(tutorialId="BAD")).job_id
    environment = service_environment(redis_url, data_dir)
    with running_worker(environment, "--with-scheduler", "--burst", *QUEUES, stock=True) as worker:
        assert worker.wait(60) == 0
    assert status_of(redis_client, good)["status"] == "finished"
    failed = status_of(redis_client, bad)
    assert failed["deadLettered"] and failed["attempts"] == 1
    assert failed["error"]["type"] == "InvalidPayload"


def test_job_of_a_killed_worker_is_recovered_within_a_minute(
    redis_client: redis.Redis, settings: Settings, redis_url: str, data_dir: Path
) -> None:
    """Given a worker killed mid-render, a new one finishes the job on attempt 2 within a minute."""
    job_id = queueing.submit(redis_client, settings, slow_payload()).job_id
    environment = service_environment(redis_url, data_dir)
    with running_worker(environment, "--concurrency", "1") as first:
        wait_until(lambda: is_rendering(redis_client, job_id), 30, "rendering")
        kill_group(first)  # the whole process group, as an OOM killer or a host loss would
        first.wait()
    killed_at = time.monotonic()
    with running_worker(environment, "--concurrency", "1"):
        wait_until(lambda: has_ended(redis_client, job_id), 60, "recovery")
    status = status_of(redis_client, job_id)
    assert status["status"] == "finished" and status["attempts"] == 2
    assert time.monotonic() - killed_at < 60


@pytest.mark.both_stores
def test_sigterm_lets_the_running_job_finish(
    redis_client: redis.Redis, settings: Settings, redis_url: str, data_dir: Path
) -> None:
    """Given SIGTERM mid-render, the worker exits 0 once the job finishes; the next one waits."""
    running = queueing.submit(redis_client, settings, slow_payload(1)).job_id
    waiting = queueing.submit(redis_client, settings, slow_payload(2)).job_id
    environment = service_environment(redis_url, data_dir)
    with running_worker(environment, "--concurrency", "1") as worker:
        wait_until(lambda: is_rendering(redis_client, running), 30, "rendering")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
    assert status_of(redis_client, running)["status"] == "finished"
    assert status_of(redis_client, waiting)["status"] == "queued"
    # Nothing was lost: the next worker runs the waiting job, and the finished one not again.
    with running_worker(environment, "--concurrency", "1", "--burst") as successor:
        assert successor.wait(60) == 0
    assert status_of(redis_client, waiting)["status"] == "finished"
    assert status_of(redis_client, running)["attempts"] == 1


@pytest.mark.both_stores
def test_fifty_threads_submitting_one_key_while_workers_run_make_one_render(
    redis_client: redis.Redis, settings: Settings, redis_url: str, data_dir: Path,
    stored_previews: Callable[[], list[str]],
) -> None:
    """Given 50 threads posting one idempotency key as workers run, one job renders once."""
    with running_worker(service_environment(redis_url, data_dir), "--concurrency", "2"):
        results = submit_together(redis_url, settings, payload(idempotencyKey="same"), 50)
        wait_until(lambda: has_ended(redis_client, "same"), 60, "the one job")
    assert [result.duplicate for result in results].count(False) == 1
    status = status_of(redis_client, "same")
    assert status["status"] == "finished" and status["attempts"] == 1
    assert stored_previews() == [status["result"]["artifactHash"]]


def poison_payloads() -> dict[str, dict[str, Any]]:
    """Return the payloads of the hostile round that held workers for minutes or gigabytes."""
    amplifier = "[x]: https://example.org/" + "&" * 1_900 + "\n\n" + "[x] " * 2_500
    slow_code = {"language": "c", "source": "\n" * 19_999}
    return {
        "looping lexer": payload(content={"title": "Loop", "steps": [
            {"title": "Code", "code": {"language": "mcschema", "source": "<!--"}},
            {"title": "Fenced", "body": "```mcschema\n<!--\n```\n"},
        ]}),
        "reused reference": payload(content={"title": "Amplified", "steps": [
            {"title": f"Step {n}", "body": amplifier} for n in range(8)
        ]}),
        "slow code everywhere": payload(content={"title": "Slow", "steps": [
            {"title": f"Step {n}", "code": slow_code} for n in range(200)
        ]}),
    }


def test_poison_payloads_end_in_seconds_with_one_attempt(
    redis_client: redis.Redis, redis_url: str, data_dir: Path
) -> None:
    """Given the hostile round's payloads, each ends within seconds, after a single attempt."""
    environment = service_environment(
        redis_url, data_dir, PREVIEW_RENDER_TIMEOUT="3", PREVIEW_MAX_PAGE_BYTES="4194304"
    )
    settings = load_settings(environment)
    jobs = {name: queueing.submit(redis_client, settings, body).job_id
            for name, body in poison_payloads().items()}
    started = time.monotonic()
    with running_worker(environment, "--concurrency", "2"):
        wait_until(lambda: all(has_ended(redis_client, each) for each in jobs.values()), 30,
                   "the poison jobs")
    took = time.monotonic() - started
    ends = {name: status_of(redis_client, job_id) for name, job_id in jobs.items()}
    assert ends["looping lexer"]["status"] == "finished"  # shown as plain text, at once
    for name in ("reused reference", "slow code everywhere"):
        assert ends[name]["deadLettered"] and ends[name]["attempts"] == 1, ends[name]
        assert ends[name]["error"]["type"] == "PreviewRefused"
    assert "larger than 4194304 bytes" in ends["reused reference"]["error"]["message"]
    assert "longer than 3 s" in ends["slow code everywhere"]["error"]["message"]
    assert took < 30


def test_cancel_stops_a_job_inside_one_long_code_block(
    redis_client: redis.Redis, redis_url: str, data_dir: Path
) -> None:
    """Given a job lexing one block for many seconds, a cancel stops it within two seconds."""
    environment = service_environment(redis_url, data_dir, PREVIEW_HIGHLIGHT_TIMEOUT="60")
    code = {"language": "python", "source": " \n" * 10_000}  # about 3 s a block
    long = payload(content={"title": "Long", "steps": [
        {"title": f"Step {n}", "code": code} for n in range(20)
    ]})
    job_id = queueing.submit(redis_client, load_settings(environment), long).job_id
    with running_worker(environment, "--concurrency", "1"):
        wait_until(lambda: is_rendering(redis_client, job_id), 30, "rendering")
        time.sleep(0.5)  # inside the first block by now
        assert queueing.cancel(redis_client, job_id) == "stopping"
        took = wait_until(lambda: has_ended(redis_client, job_id), 30, "the stop")
    assert took < 2.0, f"the stop took {took:.1f} s"
    assert status_of(redis_client, job_id)["status"] == "stopped"
