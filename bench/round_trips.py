"""Redis round trips and commands that one job costs a worker, from its pop to finished.

Three paths, each run in-process in burst mode against a private redis-server:
(a) raw RQ: SimpleWorker, a no-op enqueued with Queue.enqueue;
(b) ours: PreviewWorker, the same no-op submitted with queueing.submit (hooks, retry, meta);
(c) ours: PreviewWorker running the real render_preview on the minimal payload.
Then (d): the pool's recovery pass that settles the jobs (b) left, per job.

Every Connection.send_packed_command is one round trip (a pipeline is one send); its bytes
are parsed back into commands. Each send is attributed to the thread that made it and to a
stage, from the Python frames that issued it. The worker loop's iterations are marked, so
iteration k (1..N) holds everything the worker did for job k: suspension check, pop,
heartbeats, prepare, body, callbacks, result save, state. Per job = the mean over those
iterations; the differential (run of N jobs less a run of 0) is printed as a cross-check.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import redis
import redis.connection
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.worker import BaseWorker

from preview_worker import queueing, recovery
from preview_worker.connections import connect
from preview_worker.embedded_redis import EmbeddedRedis
from preview_worker.settings import Settings, get_settings
from preview_worker.worker import MAINTENANCE_INTERVAL, PreviewWorker, worker_name

PAYLOADS = Path(__file__).resolve().parent.parent / "payloads"
FRESH = itertools.count()  # every payload of every run is new: a render is never a cache hit
NOOP = f"{__name__}.noop"
MAIN_THREAD = "MainThread"
ALIVE_THREAD = "preview-alive"  # AliveMixin's thread in preview_worker/worker.py


def noop(payload: dict[str, Any]) -> None:
    """Do nothing: the job that measures the queue's own cost."""


# Stage of a send: the innermost frame that matches one of these (module prefix, functions).
STAGE_RULES: list[tuple[str, frozenset[str], str]] = [
    ("preview_worker.worker", frozenset({"refresh"}), "liveness (ours: AliveMixin)"),
    ("preview_worker.progress", frozenset(), "progress (ours: progress.py)"),
    ("preview_worker.hooks", frozenset(), "callback (ours: hooks.py)"),
    ("preview_worker.recovery", frozenset({"_recover_one"}), "recovery, per job (ours)"),
    ("preview_worker.recovery", frozenset(), "recovery, per pass (ours)"),
    ("rq", frozenset({"check_for_suspension"}), "suspension check + heartbeat (RQ)"),
    ("rq", frozenset({"heartbeat", "maintain_heartbeats"}), "heartbeat (RQ)"),
    ("rq", frozenset({"set_state"}), "worker state (RQ)"),
    ("rq", frozenset({"dequeue_any", "dequeue_job_and_maintain_ttl"}), "pop/dequeue (RQ)"),
    ("rq", frozenset({"get_redis_server_version"}), "pop/dequeue (RQ)"),
    ("rq", frozenset({"prepare_execution"}), "prepare: execution record (RQ)"),
    ("rq", frozenset({"prepare_job_execution"}), "prepare: started (RQ)"),
    ("rq", frozenset({"handle_execution_ended"}), "execution ended: job heartbeat (RQ)"),
    ("rq", frozenset({"execute_success_callback", "execute_failure_callback"}), "callback (RQ)"),
    ("rq", frozenset({"handle_job_success"}), "result save + finished registry (RQ)"),
    ("rq", frozenset({"handle_job_failure", "handle_job_retry"}), "failure save (RQ)"),
    ("rq", frozenset({"send_webhooks"}), "webhooks (RQ)"),
    ("rq", frozenset({"perform"}), "job body"),
    ("rq", frozenset({"run_maintenance_tasks"}), "maintenance (RQ)"),
    ("rq", frozenset({"teardown", "register_death"}), "stop (RQ)"),
    ("rq", frozenset({"bootstrap", "_start_scheduler", "register_birth"}), "start (RQ)"),
]


# Sends that redis-py makes on its own, by the redis-py function that makes them.
REDIS_PY_STAGES = {
    "on_connect": "connection handshake (redis-py)",
    "on_connect_check_health": "connection handshake (redis-py)",
    "check_health": "health check PING (redis-py)",
    "_send_ping": "health check PING (redis-py)",
}


@dataclass(frozen=True)
class Send:
    """One round trip: the commands of one send, who sent them and in which iteration."""

    thread: str
    connection: int
    iteration: int  # of the worker loop; 0 before it, -1 after it (teardown)
    commands: tuple[tuple[bytes, ...], ...]
    stage: str
    origin: str  # the innermost frame outside redis-py and this file: module:function

    def names(self) -> list[str]:
        """Return the command names, upper case."""
        return [command[0].decode().upper() for command in self.commands]


def parse_packed(packed: Any) -> tuple[tuple[bytes, ...], ...]:
    """Read RESP arrays back from what redis-py sends: bytes, str, memoryview or a list."""
    chunks = [packed] if isinstance(packed, bytes | str | memoryview) else list(packed)
    data = b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks)
    commands: list[tuple[bytes, ...]] = []
    at = 0
    while at < len(data):
        end = data.index(b"\r\n", at)
        if data[at:at + 1] != b"*":
            raise ValueError(f"not a RESP array at {at}: {data[at:at + 20]!r}")
        count, at = int(data[at + 1:end]), end + 2
        args: list[bytes] = []
        for _ in range(count):
            end = data.index(b"\r\n", at)
            size, at = int(data[at + 1:end]), end + 2
            args.append(data[at:at + size])
            at += size + 2
        commands.append(tuple(args))
    return tuple(commands)


def classify(frame: FrameType | None) -> tuple[str, str]:
    """Return the stage and the issuing function of a send, from the frames that made it."""
    origin = ""
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        function = frame.f_code.co_name
        if module.startswith("redis") and function in REDIS_PY_STAGES:
            stage = REDIS_PY_STAGES[function]
            while frame is not None and not origin:  # name who opened or checked it
                module = str(frame.f_globals.get("__name__", ""))
                if not module.startswith("redis") and module != __name__:
                    origin = f"{module}:{frame.f_code.co_name}"
                frame = frame.f_back
            return stage, origin
        if module.startswith("redis") or module == __name__:
            frame = frame.f_back
            continue
        if not origin:
            origin = f"{module}:{function}"
        for prefix, functions, stage in STAGE_RULES:
            if module.startswith(prefix) and (not functions or function in functions):
                return stage, origin
        frame = frame.f_back
    return "other", origin


@dataclass
class Recorder:
    """Records every send of every redis-py Connection while on."""

    on: bool = False
    iteration: int = 0
    sends: list[Send] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self) -> None:
        """Wrap Connection.send_packed_command once."""
        original: Callable[..., None] = redis.connection.Connection.send_packed_command
        recorder = self

        def send_packed_command(
            self: redis.connection.Connection, command: Any, check_health: bool = True
        ) -> None:
            if not recorder.on:
                original(self, command, check_health)
                return
            stage, origin = classify(sys._getframe(1))
            send = Send(
                threading.current_thread().name, id(self), recorder.iteration,
                parse_packed(command), stage, origin,
            )
            try:  # a new connection's handshake goes out inside: record this send after it
                original(self, command, check_health)
            finally:
                with recorder.lock:
                    recorder.sends.append(send)

        redis.connection.Connection.send_packed_command = (  # type: ignore[method-assign]
            send_packed_command  # type: ignore[assignment]
        )

    @contextmanager
    def recording(self) -> Iterator[list[Send]]:
        """Record the sends of a block into a fresh list."""
        with self.lock:
            self.sends = []
            self.iteration = 0
        self.on = True
        try:
            yield self.sends
        finally:
            self.on = False


RECORDER = Recorder()


def mark_iterations(worker: BaseWorker) -> None:
    """Count the worker loop's iterations (each starts with check_for_suspension)."""
    check: Callable[[bool], None] = worker.check_for_suspension
    teardown: Callable[[], None] = worker.teardown

    def check_for_suspension(burst: bool) -> None:
        RECORDER.iteration += 1
        check(burst)

    def marked_teardown() -> None:
        RECORDER.iteration = -1
        teardown()

    worker.check_for_suspension = check_for_suspension  # type: ignore[method-assign]
    worker.teardown = marked_teardown  # type: ignore[method-assign]


def command_stats(connection: redis.Redis) -> Counter[str]:
    """Return the server's calls by command so far (commands run by scripts included)."""
    stats = connection.info("commandstats")
    return Counter({
        name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()
    })


@dataclass
class Run:
    """The sends of one burst run of a worker over some jobs."""

    jobs: int
    sends: list[Send]
    seconds: float
    job_ids: list[str]
    worker: str
    executed: Counter[str] = field(default_factory=Counter)  # by the server, during the run

    def main(self) -> list[Send]:
        """Return the worker main thread's sends."""
        return [s for s in self.sends if s.thread == MAIN_THREAD]

    def iteration(self, number: int) -> list[Send]:
        """Return the main thread's sends of one loop iteration."""
        return [s for s in self.main() if s.iteration == number]


def commands_of(sends: list[Send]) -> int:
    """Return how many commands the sends carry (MULTI and EXEC included)."""
    return sum(len(s.commands) for s in sends)


def wrappers_of(sends: list[Send]) -> int:
    """Return how many of those commands are MULTI or EXEC."""
    return sum(1 for s in sends for name in s.names() if name in ("MULTI", "EXEC"))


Enqueue = Callable[[redis.Redis, int], str]
MakeWorker = Callable[[redis.Redis], BaseWorker]


def burst(url: str, enqueue: Enqueue, make_worker: MakeWorker, jobs: int, **work: Any) -> Run:
    """Flush Redis, enqueue jobs unrecorded, then record a burst run of a new worker."""
    admin = redis.Redis.from_url(url)
    admin.flushdb()
    job_ids = [enqueue(admin, next(FRESH)) for _ in range(jobs)]
    connection = connect(url)
    worker = make_worker(connection)
    mark_iterations(worker)
    before = command_stats(admin)
    start = time.perf_counter()
    with RECORDER.recording() as sends:
        worker.work(burst=True, logging_level="WARNING", **work)
    seconds = time.perf_counter() - start
    executed = command_stats(admin) - before
    executed["info"] -= 1  # the first command_stats call itself
    for job_id in job_ids:
        status = Job.fetch(job_id, connection=admin).get_status()
        assert status == JobStatus.FINISHED, f"job {job_id} is {status}"
    connection.close()
    admin.close()
    return Run(jobs, list(sends), seconds, job_ids, worker.name, executed)


def minimal(number: int) -> dict[str, Any]:
    """Return the minimal payload, made distinct (its title differs: no cache hit)."""
    payload: dict[str, Any] = json.loads((PAYLOADS / "preview_payload_minimal.json").read_text())
    content = {**payload["content"], "title": f"{payload['content']['title']} #{number}"}
    return {**payload, "revision": number, "content": content}


def shorten(value: bytes, run: Run) -> str:
    """Show a key or argument with job ids, worker names and other ids abbreviated."""
    text = value.decode(errors="replace")
    for job_id in run.job_ids:
        text = text.replace(job_id, "<job>")
    if run.worker:
        text = text.replace(run.worker, "<worker>")
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}",
                  "<id>", text)
    return text if len(text) <= 60 and text.isprintable() else "<blob>"


def describe(send: Send, run: Run) -> str:
    """Show a send's commands: the name and first key of each; MULTI/EXEC as brackets."""
    parts = []
    for command in send.commands:
        name = command[0].decode().upper()
        if name in ("MULTI", "EXEC"):
            parts.append(name)
        elif name in ("EVALSHA", "EVAL") and len(command) > 3:
            script_keys = command[3:3 + int(command[2])]
            parts.append(f"{name}({', '.join(shorten(key, run) for key in script_keys)})")
        elif len(command) > 1:
            parts.append(f"{name} {shorten(command[1], run)}")
        else:
            parts.append(name)
    return ", ".join(parts)


@dataclass
class Figures:
    """Per-job figures of one path."""

    name: str
    trips: float
    commands: float
    trips_range: tuple[int, int]
    diff_trips: float
    diff_commands: float
    stages: Counter[str]
    alive: int  # the liveness thread's own sends (no handshake) in the N-job run


def stage_counts(sends: list[Send]) -> Counter[str]:
    """Return round trips by stage."""
    return Counter(send.stage for send in sends)


def print_sends(sends: list[Send], run: Run) -> None:
    """Print sends one per line: stage, issuing function, commands."""
    for number, send in enumerate(sends, 1):
        print(f"  {number:2d}. {send.stage:<38} {send.origin:<52} {describe(send, run)}")


def report(name: str, run: Run, empty: Run, example: int) -> Figures:
    """Print one path's figures and the sequence of one of its jobs; return the figures."""
    steady = range(2, run.jobs + 1)  # iteration 1 also runs the worker's first maintenance
    per_trips = [len(run.iteration(k)) for k in steady]
    per_commands = [commands_of(run.iteration(k)) for k in steady]
    main, empty_main = run.main(), empty.main()
    diff_trips = (len(main) - len(empty_main)) / run.jobs
    diff_commands = (commands_of(main) - commands_of(empty_main)) / run.jobs
    threads = Counter(s.thread for s in run.sends)
    print(f"\n=== {name} ===")
    print(f"{run.jobs} jobs in {run.seconds:.2f} s; round trips by thread: {dict(threads)}; "
          f"{len({s.connection for s in run.sends})} connections")
    print(f"per job, main thread (loop iterations 2..{run.jobs}): "
          f"{statistics.mean(per_trips):.2f} round trips (min {min(per_trips)}, "
          f"max {max(per_trips)}), {statistics.mean(per_commands):.2f} commands, "
          f"MULTI/EXEC included ({wrappers_of(run.iteration(example))} of them)")
    print(f"cross-check, (main thread with {run.jobs} jobs - with 0 jobs) / {run.jobs}: "
          f"{diff_trips:.2f} round trips, {diff_commands:.2f} commands (one-time costs "
          "of iteration 1 spread over the jobs)")
    executed = {
        name: (run.executed[name] - empty.executed[name]) / run.jobs
        for name in sorted(set(run.executed) | set(empty.executed))
        if run.executed[name] != empty.executed[name]
    }
    print(f"commands the server ran, per job (INFO commandstats, all threads, scripts' own "
          f"calls included; N jobs - 0 jobs, / N): {sum(executed.values()):.2f}: "
          + ", ".join(f"{name} {count:g}" for name, count in executed.items()))
    first = run.iteration(1)
    extra = stage_counts(first) - stage_counts(run.iteration(example))
    print(f"iteration 1: {len(first)} round trips; beyond a steady job: {dict(extra)}")
    fixed = [s for s in main if s.iteration in (0, -1) or s.iteration > run.jobs]
    print(f"start, last (empty) pop and stop: {len(fixed)} round trips, {commands_of(fixed)} "
          f"commands (0-job run, all of it: {len(empty_main)}, {commands_of(empty_main)})")
    others = [s for s in run.sends if s.thread != MAIN_THREAD]
    for thread in sorted({s.thread for s in others}):
        mine = [s for s in others if s.thread == thread]
        print(f"thread {thread}: {len(mine)} round trips in the whole run:")
        print_sends(mine, run)
    print(f"job {example} of {run.jobs}, main thread, one line per round trip:")
    print_sends(run.iteration(example), run)
    return Figures(
        name, statistics.mean(per_trips), statistics.mean(per_commands),
        (min(per_trips), max(per_trips)), diff_trips, diff_commands,
        stage_counts(run.iteration(example)),
        sum(1 for s in others if s.thread == ALIVE_THREAD and s.stage.startswith("liveness")),
    )


def report_recovery(url: str, settings: Settings, jobs: int) -> None:
    """Print what one recovery pass costs per job that (b) left ended but still watched."""
    runs: dict[int, tuple[Run, list[Send]]] = {}
    for count in (0, jobs):
        run = burst(url, submit_noop(settings), ours(settings), count, with_scheduler=True)
        connection = connect(url)
        with RECORDER.recording() as sends:
            recovery.recover(connection)
        runs[count] = (run, list(sends))
        connection.close()
    run, full = runs[jobs]
    empty = runs[0][1]
    print(f"\n=== (d) ours: one recovery pass (preview_worker/recovery.py:recover) after {jobs} "
          "finished no-op jobs of (b), on a new connection ===")
    print(f"pass: {len(full)} round trips, {commands_of(full)} commands; with 0 jobs: "
          f"{len(empty)}, {commands_of(empty)}; per job: "
          f"{(len(full) - len(empty)) / jobs:.2f} round trips, "
          f"{(commands_of(full) - commands_of(empty)) / jobs:.2f} commands")
    lines: Counter[tuple[str, str, str]] = Counter()
    for send in full:
        text = describe(send, run)
        text = re.sub(r"(HMGET rq:job:<job>, )+", f"HMGET rq:job:<job> x{jobs - 1}, ", text)
        lines[(send.stage, send.origin, text)] += 1
    for (stage, origin, text), times in lines.items():
        print(f"  x{times:<3d} {stage:<34} {origin:<48} {text}")


def raw_enqueue(connection: redis.Redis, number: int) -> str:
    """Enqueue the no-op on 'normal' as plain RQ does."""
    return str(Queue("normal", connection=connection).enqueue(NOOP, minimal(number)).id)


def raw_worker(connection: redis.Redis) -> BaseWorker:
    """Make a plain SimpleWorker on high, normal, low (the queues ours serve)."""
    queues = [Queue(name, connection=connection) for name in queueing.PRIORITIES]
    return SimpleWorker(queues, connection=connection)


def submit_noop(settings: Settings) -> Enqueue:
    """Return a submitter of the no-op through queueing.submit."""

    def enqueue(connection: redis.Redis, number: int) -> str:
        return queueing.submit(connection, settings, minimal(number), function=NOOP).job_id

    return enqueue


def submit_render(settings: Settings) -> Enqueue:
    """Return a submitter of the real render job."""

    def enqueue(connection: redis.Redis, number: int) -> str:
        return queueing.submit(connection, settings, minimal(number)).job_id

    return enqueue


def ours(settings: Settings) -> MakeWorker:
    """Return a maker of PreviewWorker built as preview_worker.worker.run_worker builds it."""

    def make(connection: redis.Redis) -> BaseWorker:
        return PreviewWorker(
            queueing.queues(connection, settings),
            connection=connection,
            name=worker_name("simple", 0),
            default_result_ttl=settings.result_ttl,
            maintenance_interval=MAINTENANCE_INTERVAL,
        )

    return make


def main() -> None:
    """Measure (a), (b), (c) and (d), then print a summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20)
    options = parser.parse_args()
    jobs: int = options.jobs
    example = max(1, jobs // 2)
    RECORDER.install()
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as data:
        url = server.url
        for name in [n for n in os.environ if n.startswith("PREVIEW_")]:
            del os.environ[name]
        os.environ.update({"REDIS_URL": url, "DATA_DIR": data, "PREVIEW_LOG_LEVEL": "WARNING"})
        get_settings.cache_clear()
        settings = get_settings()
        paths: list[tuple[str, Enqueue, MakeWorker, dict[str, Any]]] = [
            ("(a) raw RQ: SimpleWorker, no-op, Queue.enqueue", raw_enqueue, raw_worker, {}),
            ("(b) ours: PreviewWorker, no-op, queueing.submit", submit_noop(settings),
             ours(settings), {"with_scheduler": True}),
            ("(c) ours: PreviewWorker, render_preview, minimal payload",
             submit_render(settings), ours(settings), {"with_scheduler": True}),
        ]
        figures = []
        for name, enqueue, make_worker, work in paths:
            burst(url, enqueue, make_worker, 2, **work)  # warm up: scripts loaded, imports done
            empty = burst(url, enqueue, make_worker, 0, **work)
            run = burst(url, enqueue, make_worker, jobs, **work)
            figures.append(report(name, run, empty, example))
        report_recovery(url, settings, jobs)
    print(f"\n=== summary, per job ({jobs} jobs, worker main thread) ===")
    print(f"{'path':<58} {'trips':>6} {'cmds':>6} {'diff trips':>10} {'diff cmds':>9}")
    for each in figures:
        print(f"{each.name:<58} {each.trips:>6.2f} {each.commands:>6.2f} "
              f"{each.diff_trips:>10.2f} {each.diff_commands:>9.2f}")
    print("liveness thread (ours): one SET per 5 s per worker (WORKER_ALIVE_REFRESH) plus a "
          "SET at start and a DEL at stop, whatever the jobs; SET/DEL seen in the runs: "
          f"{[each.alive for each in figures]}")
    print("\nround trips per job by stage:")
    every = sorted({stage for each in figures for stage in each.stages})
    print(f"{'stage':<40}" + "".join(f"{each.name[:3]:>6}" for each in figures))
    for stage in every:
        print(f"{stage:<40}" + "".join(f"{each.stages[stage]:>6}" for each in figures))


if __name__ == "__main__":
    main()
