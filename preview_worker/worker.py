"""The worker classes and the pool that runs several of them with recovery alongside."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import redis
from rq import Queue, SimpleWorker, Worker
from rq.executions import Execution
from rq.job import Job
from rq.worker import BaseWorker

from preview_worker import keys, progress, queueing, recovery
from preview_worker.connections import connect
from preview_worker.logs import configure_logging
from preview_worker.settings import Settings
from preview_worker.store import store_for

log = logging.getLogger(__name__)

RECOVERY_INTERVAL = 10.0  # seconds between recovery passes of a pool
# Seconds between a worker's maintenance runs, where it also takes over the retry scheduler
# of a dead worker; RQ's default of 600 would leave retries waiting for ten minutes.
MAINTENANCE_INTERVAL = 60
SWEEP_INTERVAL = 3600.0  # seconds between sweeps of half-written artifact directories
# A worker that exits sooner than this after its start most likely cannot start at all
# (Redis refusing writes, say): its slot waits before the next try, longer each time.
QUICK_EXIT = 10.0  # seconds
RESTART_DELAY_BASE = 0.5  # seconds before restarting after the first quick exit
RESTART_DELAY_CAP = 60.0  # seconds; the longest wait between two tries


def restart_delay(quick_exits: int) -> float:
    """Return how long a slot waits before its next worker, after so many quick exits in a row."""
    if quick_exits == 0:
        return 0.0
    return float(min(RESTART_DELAY_CAP, RESTART_DELAY_BASE * 2.0 ** (quick_exits - 1)))


class AliveMixin:
    """Keep a short-lived liveness key fresh from a thread, even while a job runs."""

    name: str
    connection: redis.Redis

    def start_alive_thread(self) -> tuple[threading.Event, threading.Thread]:
        """Start refreshing this worker's liveness key; set the event to stop, then join."""
        stop = threading.Event()
        key = keys.worker_alive_key(self.name)

        def refresh() -> None:
            while not stop.is_set():
                try:
                    self.connection.set(key, os.getpid(), ex=keys.WORKER_ALIVE_TTL)
                except redis.RedisError:
                    log.warning("could not refresh liveness of %s", self.name)
                stop.wait(keys.WORKER_ALIVE_REFRESH)
            try:
                self.connection.delete(key)
            except redis.RedisError:
                pass  # the key expires on its own within WORKER_ALIVE_TTL

        thread = threading.Thread(target=refresh, name="preview-alive", daemon=True)
        thread.start()
        return stop, thread

    def work(self, *args: Any, **kwargs: Any) -> bool:
        """Run the worker loop with its liveness key kept fresh."""
        stop, thread = self.start_alive_thread()
        try:
            result: bool = super().work(*args, **kwargs)  # type: ignore[misc]
            return result
        finally:
            stop.set()
            # The thread still uses the worker's connection: done with it before we return.
            thread.join(keys.WORKER_ALIVE_REFRESH + 5)


class PoolSignalsMixin:
    """Stop on the pool's SIGTERM alone: a terminal's Ctrl-C reaches every process of the
    group, and RQ would take it, with the pool's SIGTERM after it, as a second signal: a
    cold stop, a traceback, a worker left registered. The pool turns Ctrl-C into SIGTERM."""

    def _install_signal_handlers(self) -> None:
        """Install RQ's handlers, then ignore SIGINT."""
        super()._install_signal_handlers()  # type: ignore[misc]
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def handle_warm_shutdown_request(self) -> None:
        """Drain as RQ does, still deaf to SIGINT (RQ armed it for a cold stop just before)."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        super().handle_warm_shutdown_request()  # type: ignore[misc]


class PreviewWorker(PoolSignalsMixin, AliveMixin, SimpleWorker):
    """Runs jobs in its own process: no fork per job; stop requests are cooperative."""

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """Send RQ's heartbeat (three commands) in one round trip, not three."""
        if pipeline is not None:
            super().heartbeat(timeout, pipeline=pipeline)
            return
        with self.connection.pipeline(transaction=False) as pipe:
            super().heartbeat(timeout, pipeline=pipe)
            pipe.execute()

    def kill_horse(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Ask the running job to stop at its next stage, since there is no horse to kill."""
        progress.request_stop(self._stopped_job_id)

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        """Run one job, then forget any stop asked of it, so a new attempt runs in full."""
        try:
            result: bool = super().perform_job(job, queue, execution)
            return result
        finally:
            progress.request_stop(None)


class ForkingPreviewWorker(PoolSignalsMixin, Worker):
    """Forks a work horse per job, like a stock `rq worker`.

    It keeps no liveness key: its horse runs in a process group of its own and can outlive
    the worker, so recovery waits for the job's timeout instead (see recovery.py).
    """


WORKER_CLASSES: dict[str, type[BaseWorker]] = {
    "simple": PreviewWorker,
    "fork": ForkingPreviewWorker,
}


def worker_name(kind: str, index: int) -> str | None:
    """Return a unique name that recovery recognises for an in-process worker; RQ's otherwise."""
    if kind != "simple":
        return None
    return f"{keys.OUR_WORKER_PREFIX}{socket.gethostname()}-{os.getpid()}-{index}"


def run_worker(
    redis_url: str, settings: Settings, kind: str, index: int, burst: bool, max_jobs: int | None
) -> None:
    """Run one worker process until it is told to stop, runs out of work or of max_jobs."""
    configure_logging(settings.log_level)  # RQ adds no handler of its own when one exists
    connection = connect(redis_url)
    worker = WORKER_CLASSES[kind](
        # Webhook deliveries first: small, and never to wait behind a backlog of renders.
        [Queue(name, connection=connection) for name in queueing.worker_queue_names(settings)],
        connection=connection,
        name=worker_name(kind, index),
        default_result_ttl=settings.result_ttl,
        maintenance_interval=MAINTENANCE_INTERVAL,
    )
    worker.work(
        burst=burst, with_scheduler=True, max_jobs=max_jobs, logging_level=settings.log_level
    )


@dataclass(frozen=True)
class PoolOptions:
    """How a pool runs, as the command line asks; None takes the settings' value."""

    concurrency: int | None = None  # workers; PREVIEW_WORKER_CONCURRENCY when None
    kind: str = "simple"  # a key of WORKER_CLASSES
    burst: bool = False  # stop once the queues are empty
    max_jobs: int | None = None  # jobs before a worker is replaced; PREVIEW_WORKER_MAX_JOBS


@dataclass
class WorkerPool:
    """Several worker processes on webhooks, high, normal and low, replaced when they exit."""

    redis_url: str
    settings: Settings
    concurrency: int
    kind: str = "simple"
    burst: bool = False
    max_jobs: int | None = None  # jobs before a worker is replaced; None: never
    processes: dict[int, BaseProcess] = field(default_factory=dict)
    stopping: bool = False
    started: dict[int, float] = field(default_factory=dict)  # slot -> monotonic start
    quick_exits: dict[int, int] = field(default_factory=dict)  # slot -> quick exits in a row
    restarts: dict[int, float] = field(default_factory=dict)  # slot -> monotonic restart time
    # Told first when the pool is asked to stop (run stops the API before the workers drain).
    on_stop: Callable[[], None] | None = None
    # Asked on every turn; a reason to stop (the API of run exited) stops the pool.
    stop_when: Callable[[], str | None] | None = None

    @classmethod
    def for_settings(
        cls, redis_url: str, settings: Settings, options: PoolOptions = PoolOptions()
    ) -> WorkerPool:
        """Return a pool on a Redis, shaped by the options, else by the settings."""
        return cls(
            redis_url=redis_url,
            settings=settings,
            concurrency=options.concurrency or settings.worker_concurrency,
            kind=options.kind,
            burst=options.burst,
            max_jobs=options.max_jobs or settings.worker_max_jobs,
        )

    def start_worker(self, index: int) -> None:
        """Start the worker process in slot index."""
        context = multiprocessing.get_context("fork")
        process = context.Process(
            target=run_worker,
            args=(self.redis_url, self.settings, self.kind, index, self.burst, self.max_jobs),
            name=f"preview-worker-{index}",
        )
        process.start()
        self.processes[index] = process
        self.started[index] = time.monotonic()

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        """Drain: each worker finishes its running job and starts nothing new."""
        if self.stopping:
            return
        self.stopping = True
        if self.on_stop is not None:
            self.on_stop()
        log.info("draining %d workers", len(self.processes))
        for process in self.processes.values():
            if process.pid and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    def run(self) -> None:
        """Start the workers, replace any that exit, recover lost jobs, until stopped."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        for index in range(self.concurrency):
            self.start_worker(index)
        connection = connect(self.redis_url)
        next_recovery = next_sweep = 0.0
        while self.processes or (self.restarts and not self.stopping):
            if not self.stopping and time.monotonic() >= next_recovery:
                recovery.recover_safely(connection)
                next_recovery = time.monotonic() + RECOVERY_INTERVAL
            if not self.stopping and time.monotonic() >= next_sweep:
                self.sweep_store()
                next_sweep = time.monotonic() + SWEEP_INTERVAL
            self.reap(connection)
            self.restart_due()
            reason = None if self.stopping or self.stop_when is None else self.stop_when()
            if reason:
                log.warning("%s: stopping the workers", reason)
                self.request_stop(signal.SIGTERM, None)
            # Wake as soon as a worker exits, or every half second for recovery and restarts.
            sentinels = [process.sentinel for process in self.processes.values()]
            if sentinels:
                wait(sentinels, timeout=0.5)
            else:
                time.sleep(0.5)

    def sweep_store(self) -> None:
        """Remove half-written artifact directories that killed renders left behind."""
        try:
            removed = store_for(self.settings).remove_abandoned()
        except OSError as error:
            log.warning("could not sweep the artifact store: %s", error)
        else:
            if removed:
                log.info("removed %d half-written artifact directories", removed)

    def reap(self, connection: redis.Redis) -> None:
        """Forget workers that exited; replace them unless draining or out of burst work."""
        for index, process in list(self.processes.items()):
            if process.is_alive():
                continue
            process.join()
            del self.processes[index]
            # A burst worker also exits after max_jobs: replace it while work remains.
            more = not self.burst or queueing.queued_count(connection, self.settings) > 0
            if not self.stopping and more:
                self.schedule_restart(index, process.exitcode)

    def schedule_restart(self, index: int, exit_code: int | None) -> None:
        """Restart a slot's worker at once, or later when its workers keep exiting at once."""
        lived = time.monotonic() - self.started.get(index, 0.0)
        quick = self.quick_exits.get(index, 0) + 1 if lived < QUICK_EXIT else 0
        self.quick_exits[index] = quick
        delay = restart_delay(quick)
        if delay:
            log.warning(
                "worker %d exited with %s after %.1f s (%d quick exits in a row); "
                "restarting in %.1f s", index, exit_code, lived, quick, delay,
            )
        else:
            log.info("worker %d exited with %s; starting another", index, exit_code)
        self.restarts[index] = time.monotonic() + delay
        self.restart_due()

    def restart_due(self) -> None:
        """Start the workers of slots whose wait is over; drop them all when draining."""
        if self.stopping:
            self.restarts.clear()
            return
        for index, due in list(self.restarts.items()):
            if time.monotonic() >= due:
                del self.restarts[index]
                self.start_worker(index)
