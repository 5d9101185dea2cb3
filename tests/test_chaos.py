"""Chaos with real processes: workers SIGKILLed at random while jobs run; no job is lost."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import time
from pathlib import Path

import pytest
import redis

from preview_worker import queueing
from preview_worker.settings import Settings
from preview_worker.storage import ArtifactStore

from .conftest import payload, service_environment
from .processes import kill_group, start_worker, stop, wait_until

JOBS = 400
WORKERS = 3
KILL_EVERY = 2.0  # seconds
CHAOS_FOR = 30.0  # seconds


def ended(connection: redis.Redis, job_ids: list[str]) -> dict[str, str]:
    """Return the final status of every job that has ended."""
    done = {}
    for job_id in job_ids:
        status = queueing.job_status(connection, job_id)
        if queueing.has_ended(status):
            done[job_id] = "dead_lettered" if status["deadLettered"] else status["status"]
    return done


def assert_artifacts_whole(store: ArtifactStore) -> int:
    """Check every stored preview against its manifest; return how many there are."""
    count = 0
    for manifest_path in store.previews.glob("*/*/manifest.json"):
        manifest = json.loads(manifest_path.read_bytes())
        for item in manifest["files"]:
            data = (manifest_path.parent / item["name"]).read_bytes()
            assert len(data) == item["size"]
            assert hashlib.sha256(data).hexdigest() == item["sha256"]
        count += 1
    return count


@pytest.mark.slow
def test_random_sigkills_lose_no_job_and_corrupt_no_artifact(
    redis_client: redis.Redis, settings: Settings, redis_url: str, data_dir: Path
) -> None:
    """Given workers killed every 2 s for 30 s, every job still ends and every artifact is whole."""
    job_ids = []
    for number in range(JOBS):
        distinct = payload(revision=number)
        distinct["content"] = {**distinct["content"], "title": f"Chaos preview {number}"}
        job_ids.append(queueing.submit(redis_client, settings, distinct).job_id)
    environment = service_environment(redis_url, data_dir)
    workers: list[subprocess.Popen[bytes]] = [
        start_worker(environment, "--concurrency", "1") for _ in range(WORKERS)
    ]
    chaos = random.Random(7)
    started = time.monotonic()
    kills = 0
    try:
        while time.monotonic() - started < CHAOS_FOR:
            time.sleep(KILL_EVERY)
            victim = chaos.randrange(WORKERS)
            kill_group(workers[victim])  # the whole group, as a host losing power would
            workers[victim].wait()
            workers[victim] = start_worker(environment, "--concurrency", "1")
            kills += 1
        took = wait_until(lambda: len(ended(redis_client, job_ids)) == JOBS, 180, "every job")
    finally:
        for worker in workers:
            stop(worker)
    outcomes = ended(redis_client, job_ids)
    print(f"{kills} kills; every job ended {took:.1f} s after the chaos; "
          f"{list(outcomes.values()).count('finished')} finished, "
          f"{list(outcomes.values()).count('dead_lettered')} dead-lettered")
    assert set(outcomes.values()) <= {"finished", "dead_lettered"}
    assert list(outcomes.values()).count("finished") > JOBS // 2
    assert assert_artifacts_whole(ArtifactStore(data_dir)) >= list(outcomes.values()).count(
        "finished"
    )
