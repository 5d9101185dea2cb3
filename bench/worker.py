"""Jobs per second through our queue and workers, against raw RQ doing the same work.

Every figure of one run comes from the same machine state; compare the ratios.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from rq import Queue, SimpleWorker, Worker
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from preview_worker import keys, queueing
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
    """Return a distinct full payload: its title, every body and every code block differ, so
    no part of it is in any cache or in the store."""
    payload: dict[str, Any] = json.loads((PAYLOADS / "preview_payload_full.json").read_text())
    payload.pop("idempotencyKey")
    content = payload["content"]
    content["title"] = f"{content['title']} #{number}"
    for step in content["steps"]:
        step["body"] = f"{step['body']}\n\nRevision {number}."
        if step.get("code"):
            step["code"]["source"] = f"{step['code']['source']}\n\n{number}"
    return payload


def edited(base: int, edit: int) -> dict[str, Any]:
    """Return the edit-th version of one tutorial: one more step's body edited each time."""
    payload = full(base)
    steps = payload["content"]["steps"]
    for made in range(1, edit + 1):
        step = steps[made % len(steps)]
        step["body"] = f"{step['body']}\n\nEdit {made}."
    return payload


def warm_loop(data_dir: str, payloads: list[dict[str, Any]], go: Any, done: Any) -> None:
    """Render one payload to warm up, wait for the go, then render and store in a loop."""
    store = FileStore(Path(data_dir))
    store_preview(store, full(-1 - os.getpid()))
    go.wait()
    for payload in payloads:
        store_preview(store, payload)
    done.put(time.perf_counter())


def loop_rate(payloads: list[dict[str, Any]]) -> float:
    """Return renders/s of the render function in a loop in WORKERS warm processes."""
    context = multiprocessing.get_context("fork")
    go, done = context.Event(), context.Queue()
    with tempfile.TemporaryDirectory() as plain:
        shares = [payloads[n::WORKERS] for n in range(WORKERS)]
        processes = [context.Process(target=warm_loop, args=(plain, share, go, done))
                     for share in shares]
        for process in processes:
            process.start()
        time.sleep(3)  # every process has imported, rendered once and waits
        start = time.perf_counter()
        go.set()
        ends = [done.get(timeout=600) for _ in processes]
        for process in processes:
            process.join()
    return len(payloads) / (float(max(ends)) - start)


def pool_forever(url: str, overrides: dict[str, str]) -> None:
    """Run our worker pool (not burst) with some settings overridden in its environment."""
    os.environ.update(overrides)
    get_settings.cache_clear()
    WorkerPool.for_settings(url, get_settings()).run()


class RunningPool:
    """Our pool started and idle before the first submit, stopped (drained) at the end."""

    def __init__(self, connection: redis.Redis, url: str, **overrides: str) -> None:
        self.connection = connection
        context = multiprocessing.get_context("fork")
        self.process = context.Process(target=pool_forever, args=(url, overrides))

    def __enter__(self) -> RunningPool:
        self.process.start()
        deadline = time.monotonic() + 60
        while len(Worker.all_keys(connection=self.connection)) < WORKERS:
            if time.monotonic() > deadline:
                raise RuntimeError("the pool did not start")
            time.sleep(0.05)
        time.sleep(1)  # registered, past their start-up work, blocked on the queues
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.pid:
            os.kill(self.process.pid, signal.SIGTERM)
        self.process.join(60)

    def rate(self, settings: Settings, payloads: list[dict[str, Any]]) -> float:
        """Submit payloads as one batch; return renders/s until the last one finished."""
        before = ended_count(self.connection)
        start = time.perf_counter()
        queueing.submit_many(self.connection, settings, payloads)
        # One command a look, every 20 ms: the bench shares the cores it measures.
        while (ended := ended_count(self.connection)) - before < len(payloads):
            time.sleep(0.02)
        rate = len(payloads) / (time.perf_counter() - start)
        failed = sum(FailedJobRegistry(name, self.connection).count
                     for name in queueing.PRIORITIES)
        if failed or ended - before > len(payloads):
            raise RuntimeError(f"{failed} jobs failed")
        return rate


def ended_count(connection: redis.Redis) -> int:
    """Return how many jobs ended on any queue, finished or not, as the hooks count them."""
    fields = [f"{queue}|{outcome}" for queue in queueing.PRIORITIES
              for outcome in ("succeeded", "dead_lettered")]
    return sum(int(count or 0) for count in connection.hmget(keys.OUTCOMES, fields))


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
    parser.add_argument("--renders", type=int, default=100)
    parser.add_argument("--edits", type=int, default=50)
    parser.add_argument("--only", choices=("noop", "steady", "editing"), action="append",
                        help="run only these measurements (repeatable); all by default")
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()

    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as data:
        url = server.url
        # Workers read their settings from the environment, as deployed ones do.
        os.environ.update({"REDIS_URL": url, "DATA_DIR": data, "PREVIEW_LOG_LEVEL": "WARNING"})
        get_settings.cache_clear()
        settings = get_settings()
        connection = connect(url)
        wanted = set(options.only or ("noop", "steady", "editing"))
        if "noop" in wanted:
            print_noop(connection, url, settings, options.noop_jobs, options.rounds)
        if "steady" in wanted:
            print_steady(connection, url, settings, options.renders, options.rounds)
        if "editing" in wanted:
            print_editing(connection, url, settings, options.edits, options.rounds)


def print_noop(connection: redis.Redis, url: str, settings: Settings, count: int,
               rounds: int) -> None:
    """Print no-op jobs/s through our path against raw RQ with the same worker class."""
    forks = count // 4  # a fork per job is slow
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

    rates = median_rates(rounds, {
        "raw RQ, SimpleWorker": lambda: run(enqueue_raw, count, lambda: raw(SimpleWorker)),
        "ours, simple (default)": lambda: run(submit, count, lambda: ours("simple")),
        "raw RQ, forking Worker": lambda: run(enqueue_raw, forks, lambda: raw(Worker)),
        "ours, fork": lambda: run(submit, forks, lambda: ours("fork")),
    })
    print(f"no-op jobs, {WORKERS} worker processes, median of {rounds} rounds")
    print(f"{'path':<26} {'enqueue/s':>10} {'jobs/s':>9}")
    for name, (enqueue_rate, job_rate) in rates.items():
        print(f"{name:<26} {enqueue_rate:>10,.0f} {job_rate:>9,.0f}")
    default, simple = rates["ours, simple (default)"][1], rates["raw RQ, SimpleWorker"][1]
    fork, stock = rates["ours, fork"][1], rates["raw RQ, forking Worker"][1]
    print(f"ours/raw with the same worker class: {default / simple:.2f}x (simple), "
          f"{fork / stock:.2f}x (fork)")
    print(f"default configuration/stock forking rq worker: {default / stock:.2f}x")


def print_steady(connection: redis.Redis, url: str, settings: Settings, renders: int,
                 rounds: int) -> None:
    """Print renders/s through an idle, running pool against warm render loops."""
    fresh = itertools.count()  # every payload of every round is new

    def queued() -> Rates:
        payloads = [full(next(fresh)) for _ in range(renders)]
        with RunningPool(connection, url) as pool:
            return 0.0, pool.rate(settings, payloads)

    def looped() -> Rates:
        return 0.0, loop_rate([full(next(fresh)) for _ in range(renders)])

    rates = median_rates(rounds, {"loop": looped, "queue": queued})
    loop, queue = rates["loop"][1], rates["queue"][1]
    print(f"\nsteady state: {renders} distinct full payloads, {WORKERS} warm processes, "
          f"median of {rounds}")
    print(f"render function in a loop: {loop:6.1f}/s")
    print(f"through queue and workers: {queue:6.1f}/s ({queue / loop:.2f} of the loop)")


def print_editing(connection: redis.Redis, url: str, settings: Settings, edits: int,
                  rounds: int) -> None:
    """Print renders/s of one tutorial resubmitted with one step edited each time, reuse on
    against reuse off (PREVIEW_RENDER_CACHE_MB=0: every render cold)."""
    bases = itertools.count(10_000_000)

    def versions() -> list[dict[str, Any]]:
        base = next(bases)  # a new tutorial each round: nothing of it is in the store
        return [edited(base, edit) for edit in range(edits)]

    def reuse_on() -> Rates:
        with RunningPool(connection, url) as pool:
            return 0.0, pool.rate(settings, versions())

    def reuse_off() -> Rates:
        with RunningPool(connection, url, PREVIEW_RENDER_CACHE_MB="0") as pool:
            return 0.0, pool.rate(settings, versions())

    rates = median_rates(rounds, {"cold": reuse_off, "reuse": reuse_on})
    cold, warm = rates["cold"][1], rates["reuse"][1]
    print(f"\nediting: one tutorial resubmitted {edits} times, one step edited each time, "
          f"median of {rounds}")
    print(f"cold renders (PREVIEW_RENDER_CACHE_MB=0): {cold:6.1f}/s")
    print(f"reusing unchanged parts (default):        {warm:6.1f}/s ({warm / cold:.1f}x)")


if __name__ == "__main__":
    main()
