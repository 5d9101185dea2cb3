"""Chaos with real processes: workers killed, Redis restarted, the store unwritable; no job lost."""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import resource
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.job import Job
from rq.utils import utcparse

from preview_worker import queueing
from preview_worker.connections import connect
from preview_worker.embedded_redis import EmbeddedRedis
from preview_worker.observe.figures import read_outcomes
from preview_worker.previews import MANIFEST
from preview_worker.settings import Settings, load_settings
from preview_worker.store import FileStore
from preview_worker.store.base import KEY_PATTERN

from .conftest import payload, service_environment
from .processes import kill_group, serving, start_worker, stop, wait_until

TOKEN = "chaos-token-0123456789"
ENDED = {"finished", "failed", "stopped", "canceled"}  # RQ's final states


def distinct_payload(number: int) -> dict[str, Any]:
    """Return a payload of its own, so each job renders a preview of its own."""
    made = payload(revision=number)
    made["content"] = {**made["content"], "title": f"Chaos preview {number}"}
    return made


def final_states(connection: redis.Redis, job_ids: list[str]) -> dict[str, tuple[str, float]]:
    """Return the status and end time of every job that has ended, in one round trip."""
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hmget(Job.key_for(job_id), "status", "ended_at")
        rows = pipe.execute()
    states = {}
    for job_id, (status, ended_at) in zip(job_ids, rows, strict=True):
        if status is not None and status.decode() in ENDED and ended_at:
            ended = utcparse(ended_at.decode()).replace(tzinfo=timezone.utc).timestamp()
            states[job_id] = (status.decode(), ended)
    return states


def incomplete_previews(store: FileStore) -> list[str]:
    """Name every visible preview directory whose files are not exactly its manifest's."""
    wrong = []
    # Directories starting with a dot are unfinished copies that no reader is given.
    for directory in store.previews.glob("[0-9a-f][0-9a-f]/*"):
        if not KEY_PATTERN.fullmatch(directory.name):
            continue
        try:
            manifest = json.loads((directory / MANIFEST).read_bytes())
            listed = {item["name"]: item for item in manifest["files"]}
            present = {path.name for path in directory.iterdir()} - {MANIFEST}
            whole = present == set(listed) and all(
                hashlib.sha256((directory / name).read_bytes()).hexdigest() == item["sha256"]
                and item["size"] == (directory / name).stat().st_size
                for name, item in listed.items()
            )
        except (OSError, ValueError, KeyError):
            whole = False
        if not whole:
            wrong.append(directory.name)
    return wrong


def stored_hashes(connection: redis.Redis, job_ids: list[str]) -> set[str]:
    """Return the artifact hash each finished job reported."""
    hashes = set()
    for job_id in job_ids:
        result = Job.fetch(job_id, connection=connection).return_value()
        assert result is not None, f"job {job_id} finished without a result"
        hashes.add(result["artifactHash"])
    return hashes


class StoreWatcher(threading.Thread):
    """Looks at the store every few milliseconds and remembers any preview seen incomplete."""

    def __init__(self, store: FileStore) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.seen: set[str] = set()
        self.looks = 0
        self.done = threading.Event()

    def run(self) -> None:
        """Look until told to stop."""
        while not self.done.wait(0.005):
            self.seen.update(incomplete_previews(self.store))
            self.looks += 1


def retried(connection: redis.Redis) -> int:
    """Return how many job attempts failed and were scheduled again, over all queues."""
    return sum(
        count for (_, outcome), count in read_outcomes(connection).items() if outcome == "retried"
    )


def group_members(leader: subprocess.Popen[bytes]) -> list[int]:
    """Return the process ids of a worker's whole process group (the pool and its workers)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The process group is the fifth field, after the name in parentheses.
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # it exited while we looked
        if int(fields[2]) == leader.pid:
            members.append(int(entry.name))
    return members


def limit_file_size(leader: subprocess.Popen[bytes], limit: int) -> None:
    """Set the largest file every process of a worker's group may write, as a full disk would."""
    for pid in group_members(leader):
        with contextlib.suppress(ProcessLookupError):
            _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, hard))


def post(base: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], str | None]:
    """POST a job; return the status, the JSON answer and any Retry-After header."""
    request = urllib.request.Request(
        base + "/api/preview/job",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read()), answer.headers["Retry-After"]
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers["Retry-After"]


Pools = list[subprocess.Popen[bytes]]


@contextlib.contextmanager
def workers(environment: dict[str, str], count: int, logs: Path) -> Iterator[Pools]:
    """Run count worker pools of one worker each; drain them all at the end."""
    started = [
        start_worker(environment, "--concurrency", "1", log=logs / f"worker-{index}.log")
        for index in range(count)
    ]
    try:
        yield started
    finally:
        for process in started:
            stop(process)


Report = Callable[[str], None]


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Report:
    """Give a printer of chaos figures that reaches the terminal, so CI's log keeps them."""

    def say(line: str) -> None:
        """Print one line past pytest's capture."""
        with capsys.disabled():
            print(f"\n  chaos: {line}")

    return say


JOBS = 1000
POOLS = 3
KILL_EVERY = 2.0  # seconds
CHAOS_FOR = 40.0  # seconds of kills
SUBMIT_FOR = 30.0  # seconds over which the jobs arrive, so they keep coming while workers die


@pytest.mark.slow
@pytest.mark.file_store  # it looks for half-written preview directories on disk
def test_random_sigkills_lose_no_job_and_corrupt_no_artifact(
    redis_client: redis.Redis,
    settings: Settings,
    redis_url: str,
    data_dir: Path,
    tmp_path: Path,
    report: Report,
) -> None:
    """Given a random worker's group SIGKILLed every 2 s for 40 s, all 1,000 jobs finish whole."""
    submitted: dict[str, float] = {}

    def submit_all() -> None:
        """Submit the jobs at an even pace on a connection of this thread's own."""
        with connect(redis_url) as connection:
            start = time.monotonic()
            for number in range(JOBS):
                time.sleep(max(0.0, start + number * SUBMIT_FOR / JOBS - time.monotonic()))
                job_id = queueing.submit(connection, settings, distinct_payload(number)).job_id
                submitted[job_id] = time.time()

    environment = service_environment(redis_url, data_dir)
    submitter = threading.Thread(target=submit_all)
    chaos = random.Random(7)
    kills = 0
    with workers(environment, POOLS, tmp_path) as pools:
        submitter.start()
        started = time.monotonic()
        while time.monotonic() - started < CHAOS_FOR:
            time.sleep(KILL_EVERY)
            victim = chaos.randrange(POOLS)
            kill_group(pools[victim])  # the whole group, as a host losing power would
            pools[victim].wait()
            pools[victim] = start_worker(
                environment, "--concurrency", "1", log=tmp_path / f"worker-{victim}.log"
            )
            kills += 1
        submitter.join()
        job_ids = list(submitted)
        took = wait_until(
            lambda: len(final_states(redis_client, job_ids)) == JOBS, 180, "every job to end"
        )
    states = final_states(redis_client, job_ids)
    to_end = sorted(ended - submitted[job_id] for job_id, (_, ended) in states.items())
    outcomes = [status for status, _ in states.values()]
    report(
        f"{kills} kills; all ended {took:.1f} s after the kills stopped; "
        f"{outcomes.count('finished')} finished, {outcomes.count('failed')} dead-lettered; "
        f"submission to end: median {statistics.median(to_end):.2f} s, "
        f"longest {to_end[-1]:.1f} s"
    )
    # Three retries each: a job would have to be killed four times to be dead-lettered.
    assert outcomes.count("finished") == JOBS
    store = FileStore(data_dir)
    assert incomplete_previews(store) == []
    assert all(store.exists(digest) for digest in stored_hashes(redis_client, job_ids))


def halt(server: EmbeddedRedis, how: str) -> None:
    """Stop Redis: "shutdown" is its own graceful SIGTERM, "crash" a SIGKILL mid-write."""
    if how == "shutdown" or server.process is None:
        server.stop()
        return
    server.process.kill()
    server.process.wait()
    server.process = None


@pytest.mark.slow
@pytest.mark.parametrize("how", ["shutdown", "crash"])
def test_redis_restart_under_load_keeps_every_accepted_job(
    tmp_path: Path, data_dir: Path, report: Report, how: str
) -> None:
    """Given Redis down for 5 s and started again from its append-only file, no 202 is lost."""
    server = EmbeddedRedis(data_dir=tmp_path / "redis", persistent=True).start()
    environment = service_environment(server.url, data_dir, PREVIEW_API_TOKENS=TOKEN)
    answers: list[tuple[float, int, dict[str, Any], str | None]] = []
    posting = threading.Event()

    def post_while_posting(base: str) -> None:
        """Send a new job every 20 ms and keep every answer with when it came."""
        number = 0
        while posting.is_set():
            answers.append((time.monotonic(), *post(base, distinct_payload(number))))
            number += 1
            time.sleep(0.02)

    try:
        with workers(environment, 2, tmp_path) as pools, serving(environment, 2) as base:
            posting.set()
            poster = threading.Thread(target=post_while_posting, args=(base,))
            poster.start()
            time.sleep(3)
            halt(server, how)
            down = time.monotonic()
            time.sleep(5)
            server.start()  # on the same port, from the same append-only file
            up = time.monotonic()
            time.sleep(4)
            posting.clear()
            poster.join()
            crashed = [pool.pid for pool in pools if pool.poll() is not None]
            connection = redis.Redis.from_url(server.url)
            accepted = [body["jobId"] for _, code, body, _ in answers if code == 202]
            took = wait_until(
                lambda: len(final_states(connection, accepted)) == len(accepted),
                120,
                "every accepted job to end",
            )
            states = final_states(connection, accepted)
    finally:
        server.stop()
    refused = [(when, body, retry) for when, code, body, retry in answers if code != 202]
    report(
        f"Redis {how}: {len(accepted)} accepted, {len(refused)} refused while it was down; "
        f"all ended {took:.1f} s after posting stopped"
    )
    assert not crashed, "worker pools exited while Redis was down"
    assert any(when < down for when, code, _, _ in answers if code == 202)
    assert any(when > up for when, code, _, _ in answers if code == 202)
    # Refusals came only while Redis was down (or the call in flight when it went).
    assert refused and all(down - 1 < when < up + 1 for when, _, _ in refused)
    assert all(
        body["error"] == "unavailable" and body["requestId"] and retry for _, body, retry in refused
    )
    assert {status for status, _ in states.values()} == {"finished"}


FILE_SIZE_LIMIT = 8192  # bytes: a page is written, a thumbnail is cut short
UNWRITABLE_FOR = 4.0  # seconds
# Retry gaps of 2-4, 4-8 and 8-16 s: RQ's whole-second schedule may cut each short by up
# to a second, which still leaves about 11 s, well past the fault, before a job runs out.
RETRY_BASE_DELAY = "2"


@pytest.mark.slow
@pytest.mark.file_store  # DATA_DIR's permissions take writes away and back
def test_store_unwritable_mid_run_retries_and_shows_nothing_partial(
    redis_client: redis.Redis, redis_url: str, data_dir: Path, tmp_path: Path, report: Report
) -> None:
    """Given every write failing for 4 s, jobs retry and finish; nothing half-written shows."""
    store = FileStore(data_dir)
    watcher = StoreWatcher(store)
    environment = service_environment(
        redis_url, data_dir, PREVIEW_RETRY_BASE_DELAY=RETRY_BASE_DELAY, PREVIEW_RETRY_MAX_DELAY="16"
    )
    settings = load_settings(environment)  # the submitter plans the same retry gaps
    with workers(environment, 1, tmp_path) as pools:
        pool = pools[0]
        wait_until(lambda: len(group_members(pool)) > 1, 30, "the pool's worker")
        watcher.start()
        before = [
            queueing.submit(redis_client, settings, distinct_payload(number)).job_id
            for number in range(5)
        ]
        wait_until(lambda: len(final_states(redis_client, before)) == 5, 60, "the first jobs")
        limit_file_size(pool, FILE_SIZE_LIMIT)
        during = [
            queueing.submit(redis_client, settings, distinct_payload(number)).job_id
            for number in range(5, 25)
        ]
        time.sleep(UNWRITABLE_FOR)
        # On a slow machine, hold the fault until every job has met it at least once.
        wait_until(lambda: retried(redis_client) >= len(during), 30, "every job to fail once")
        failed_writes = retried(redis_client)
        limit_file_size(pool, resource.RLIM_INFINITY)
        wait_until(lambda: len(final_states(redis_client, during)) == 20, 60, "every job")
        watcher.done.set()
        watcher.join()
    states = final_states(redis_client, before + during)
    attempts = Counter(
        len(Job.fetch(job_id, connection=redis_client).meta["attempts"]) for job_id in during
    )
    report(
        f"{failed_writes} attempts failed and were retried; the store was looked at "
        f"{watcher.looks} times; jobs by attempts: {dict(attempts)}"
    )
    assert min(attempts) >= 2  # every job of the fault failed at least once
    assert watcher.looks > 100 and watcher.seen == set(), "a half-written preview was visible"
    assert incomplete_previews(store) == []
    assert {status for status, _ in states.values()} == {"finished"}
    assert not list(store.previews.glob("*/.*")), "a failed write left its temporary copy"
