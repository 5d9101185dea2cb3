"""Several hosts rehearsed on one machine: two worker pools and an API, each with a DATA_DIR of
its own and no disk in common, the object store between them.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import redis

from preview_worker.previews import MANIFEST

from .conftest import payload, service_environment
from .object_store import ObjectStore
from .processes import running_worker, serving, wait_until

JOBS = 20
POOLS = ("pool-a", "pool-b")
CONCURRENCY = 2  # workers in each pool


def call(url: str, body: Any = None) -> Any:
    """Send a JSON request (POST with a body, else GET) and return the JSON answer, whatever
    its status (health answers 503 until every worker is up).
    """
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as error:
        with error:
            return json.load(error)


def fetch(url: str) -> bytes:
    """GET a URL and return its body, failing on any status but 200."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.status == 200, url
        data: bytes = answer.read()
        return data


def tutorial(number: int) -> dict[str, Any]:
    """Return a payload whose preview differs from every other number's."""
    content = {"title": f"Tutorial {number}",
               "steps": [{"title": f"Step one of {number}", "body": f"Only in {number}."}]}
    return payload(tutorialId=f"tutorial-{number}", content=content)


def jobs_logged(log: Path) -> set[str]:
    """Return the ids of the jobs whose lines are in a pool's JSON log."""
    lines = [json.loads(line) for line in log.read_text("utf-8").splitlines() if line.strip()]
    return {line["jobId"] for line in lines if line.get("jobId")}


def files_under(directory: Path) -> list[Path]:
    """Return every file below a directory."""
    return [path for path in directory.rglob("*") if path.is_file()]


def test_pools_without_a_shared_disk_and_an_api_serve_every_artifact_through_the_store(
    object_store: ObjectStore, redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Given two pools and an API, each with its own DATA_DIR, and an S3 store: When 20 jobs are
    submitted over HTTP, Then both pools run some, the API serves every artifact whole once
    the pools are gone, and no DATA_DIR holds a file.
    """
    data_dirs = {host: tmp_path / host / "data" for host in ("api", *POOLS)}
    for directory in data_dirs.values():
        directory.mkdir(parents=True)

    def environment(host: str) -> dict[str, str]:
        """Return one host's settings: its own DATA_DIR, the shared Redis and store."""
        return service_environment(redis_url, data_dirs[host], **object_store.environment())

    logs = {pool: tmp_path / f"{pool}.log" for pool in POOLS}
    with serving(environment("api"), workers=2, log=tmp_path / "api.log") as base:
        api = f"{base}/api/preview"
        with running_worker(environment(POOLS[0]), "--concurrency", str(CONCURRENCY),
                            log=logs[POOLS[0]]), \
             running_worker(environment(POOLS[1]), "--concurrency", str(CONCURRENCY),
                            log=logs[POOLS[1]]):
            # Every worker of both pools waits on the queues before the first job arrives.
            wait_until(lambda: call(f"{api}/worker/health")["workers"]["live"] == 4, 30,
                       "both pools' workers")
            job_ids = [call(f"{api}/job", tutorial(number))["jobId"] for number in range(JOBS)]
            assert len(set(job_ids)) == JOBS

            def all_finished() -> bool:
                """Tell whether every job finished; fail at once on a job that failed."""
                states = [call(f"{api}/job/{job_id}")["status"] for job_id in job_ids]
                assert "failed" not in states, states
                return all(state == "finished" for state in states)

            wait_until(all_finished, 120, "every job to finish")
        # The pools are gone: what the API serves now comes from the store alone.
        statuses = [call(f"{api}/job/{job_id}") for job_id in job_ids]
        hashes = {status["result"]["artifactHash"] for status in statuses}
        assert len(hashes) == JOBS, "every job made a preview of its own"
        for status in statuses:
            listed = status["result"]["artifacts"]
            assert {item["name"] for item in listed} == {"index.html", "thumbnail.png"}
            for item in listed:
                data = fetch(base + item["url"])
                assert len(data) == item["size"]
                assert hashlib.sha256(data).hexdigest() == item["sha256"]

    # Each pool ran jobs, and no job ran twice: each line a job logs carries its id.
    ran = {pool: jobs_logged(logs[pool]) for pool in POOLS}
    assert all(ran.values()), {pool: len(jobs) for pool, jobs in ran.items()}
    assert ran[POOLS[0]].isdisjoint(ran[POOLS[1]])
    assert ran[POOLS[0]] | ran[POOLS[1]] == set(job_ids)
    # Every preview is in the bucket, whole, and nothing was written on any host's disk.
    stored = object_store.keys()
    assert all(f"{object_store.prefix}/{digest[:2]}/{digest}/{MANIFEST}" in stored
               for digest in hashes)
    assert not [key for key in stored if "/.unfinished/" in key]
    for host, directory in data_dirs.items():
        assert files_under(directory) == [], f"{host} wrote to its DATA_DIR"
