"""Jobs per second through our queue and workers, against raw RQ doing the same work.

Every figure of one run comes from the same machine state; compare the ratios.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from rq import Queue, SimpleWorker, Worker
from rq.registry import FinishedJobRegistry

from preview_worker import queueing
from preview_worker.connections import connect
from preview_worker.embedded_redis import EmbeddedRedis
from preview_worker.previews import store_preview
from preview_worker.settings import Settings, get_settings
from preview_worker.store import FileStore
from preview_worker.worker import WorkerPool

PAYLOADS = Path(__file__).resolve().parent.parent / "payloads"
WORKERS = 2
Rates = tuple[float, float]  # enqueues per second, jobs per second


def noop(payload: dict[str, Any]) -> None:
    """Do nothing: the job that measures the queue's own cost."""


def run_processes(target: Callable[..., Any], args: list[tuple[Any, ...]]) -> float:
    """Run one forked process per argument tuple; return the seconds until all have exited."""
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=target, args=each) for each in args]
    start = time.perf_counter()
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    return time.perf_counter() - start


def raw_worker(url: str, worker_class: type[Worker] | type[SimpleWorker]) -> None:
    """Run a plain RQ worker of a class in burst mode on the three queues."""
    connection = redis.Redis.from_url(url)
    queues = [Queue(name, connection=connection) for name in queueing.PRIORITIES]
    worker_class(queues, connection=connection).work(burst=True, logging_level="WARNING")


def our_pool(url: str, settings: Settings, kind: str) -> None:
    """Run our worker pool in burst mode, as `preview-worker worker --burst` does."""
    pool = WorkerPool(url, settings, WORKERS, kind=kind, burst=True)
    pool.max_jobs = settings.worker_max_jobs
    pool.run()


def measure(
    connection: redis.Redis, enqueue: Callable[[int], object], count: int, work: Callable[[], float]
) -> Rates:
    """Enqueue count jobs, then run the workers; return enqueues/s and jobs/s."""
    connection.flushdb()
    start = time.perf_counter()
    for number in range(count):
        enqueue(number)
    enqueue_rate = count / (time.perf_counter() - start)
    job_rate = count / work()
    finished = sum(
        FinishedJobRegistry(name, connection).get_job_count(cleanup=False)
        for name in queueing.PRIORITIES
    )
    assert finished == count, f"only {finished} of {count} jobs finished"
    return enqueue_rate, job_rate


def minimal(number: int) -> dict[str, Any]:
    """Return a distinct minimal payload."""
    payload: dict[str, Any] = json.loads((PAYLOADS / "preview_payload_minimal.json").read_text())
    return {**payload, "revision": number}


def full(number: int) -> dict[str, Any]:
    """Return a distinct full payload: its title differs, so nothing is a cache hit."""
    payload: dict[str, Any] = json.loads((PAYLOADS / "preview_payload_full.json").read_text())
    payload.pop("idempotencyKey")
    payload["content"] = {**payload["content"], "title": f"{payload['content']['title']} #{number}"}
    return payload


def render_loop(data_dir: str, numbers: list[int]) -> None:
    """Render and store payloads in a loop, with no queue at all."""
    store = FileStore(Path(data_dir))
    for number in numbers:
        store_preview(store, full(number))


def median_rates(rounds: int, variants: dict[str, Callable[[], Rates]]) -> dict[str, Rates]:
    """Run every variant once per round, interleaved against drift; return median rates."""
    seen: dict[str, list[Rates]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            seen[name].append(run())
    return {
        name: (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
        for name, runs in seen.items()
    }


def main() -> None:
    """Print no-op and render throughput, ours against raw RQ, in one run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--noop-jobs", type=int, default=2000)
    parser.add_argument("--renders", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    count, forks = options.noop_jobs, options.noop_jobs // 4  # a fork per job is slow

    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as data:
        url = server.url
        # Workers read their settings from the environment, as deployed ones do.
        os.environ.update({"REDIS_URL": url, "DATA_DIR": data, "PREVIEW_LOG_LEVEL": "WARNING"})
        get_settings.cache_clear()
        settings = get_settings()
        connection = connect(url)
        normal = Queue("normal", connection=connection)
        us = "__main__.noop"

        def ours(kind: str) -> float:
            return run_processes(our_pool, [(url, settings, kind)])

        def raw(worker_class: type[Worker] | type[SimpleWorker]) -> float:
            return run_processes(raw_worker, [(url, worker_class)] * WORKERS)

        def submit(number: int) -> object:
            return queueing.submit(connection, settings, minimal(number), function=us)

        def enqueue_raw(number: int) -> object:
            return normal.enqueue(us, minimal(number))

        def run(enqueue: Callable[[int], object], jobs: int, work: Callable[[], float]) -> Rates:
            return measure(connection, enqueue, jobs, work)

        rates = median_rates(options.rounds, {
            "raw RQ, SimpleWorker": lambda: run(enqueue_raw, count, lambda: raw(SimpleWorker)),
            "ours, simple (default)": lambda: run(submit, count, lambda: ours("simple")),
            "raw RQ, forking Worker": lambda: run(enqueue_raw, forks, lambda: raw(Worker)),
            "ours, fork": lambda: run(submit, forks, lambda: ours("fork")),
        })
        print(f"no-op jobs, {WORKERS} worker processes, median of {options.rounds} rounds")
        print(f"{'path':<26} {'enqueue/s':>10} {'jobs/s':>9}")
        for name, (enqueue_rate, job_rate) in rates.items():
            print(f"{name:<26} {enqueue_rate:>10,.0f} {job_rate:>9,.0f}")
        default, simple = rates["ours, simple (default)"][1], rates["raw RQ, SimpleWorker"][1]
        fork, stock = rates["ours, fork"][1], rates["raw RQ, forking Worker"][1]
        print(f"ours/raw with the same worker class: {default / simple:.2f}x (simple), "
              f"{fork / stock:.2f}x (fork)")
        print(f"default configuration/stock forking rq worker: {default / stock:.2f}x")
        print_renders(connection, settings, options.renders, options.rounds, lambda: ours("simple"))


def print_renders(
    connection: redis.Redis,
    settings: Settings,
    renders: int,
    rounds: int,
    work: Callable[[], float],
) -> None:
    """Print full-payload renders per second through the queue against a plain loop."""

    fresh = itertools.count()  # every render of every round is new: never a cache hit

    def queued() -> Rates:
        connection.flushdb()
        numbers = [next(fresh) for _ in range(renders)]
        for number in numbers:
            queueing.submit(connection, settings, full(number))
        rate = renders / work()
        last = queueing.job_status(connection, queueing.job_id_for(full(numbers[-1])))
        assert last["status"] == "finished" and not last["result"]["cached"], last
        return 0.0, rate

    def looped() -> Rates:
        first = 1_000_000 + next(fresh) * renders
        numbers = [list(range(first + n, first + renders, WORKERS)) for n in range(WORKERS)]
        with tempfile.TemporaryDirectory() as plain:
            return 0.0, renders / run_processes(render_loop, [(plain, each) for each in numbers])

    rates = median_rates(rounds, {"loop": looped, "queue": queued})
    loop_rate, queue_rate = rates["loop"][1], rates["queue"][1]
    print(f"\nfull-payload renders, {WORKERS} processes, {renders} distinct payloads")
    print(f"render function in a loop: {loop_rate:6.1f}/s")
    print(f"through queue and workers: {queue_rate:6.1f}/s ({queue_rate / loop_rate:.0%})")


if __name__ == "__main__":
    main()
