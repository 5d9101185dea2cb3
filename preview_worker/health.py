"""One health report of the service: Redis, the artifact store, live workers, the scheduler
and the queues.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis

from preview_worker.observe.figures import QueueFigures, WorkerFigures, read_queues, read_workers
from preview_worker.settings import Settings, redact_url
from preview_worker.store import ArtifactStore, store_for

STORE_TIMEOUT = 2.0  # seconds a report waits for the artifact store's answer
# Seconds one answer of the store is reused: probes come often, and each check is a request.
STORE_FRESH = 5.0


@dataclass(frozen=True)
class StoreHealth:
    """Whether the artifact store answered its check, how fast, or why not."""

    ok: bool
    url: str  # PREVIEW_STORE_URL, or DATA_DIR's file:// URL
    latency_ms: float | None  # of the check; None when it failed
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        """Return the store's part of the report."""
        return {"ok": self.ok, "latencyMs": self.latency_ms, "url": self.url, "error": self.error}


@dataclass(frozen=True)
class HealthReport:
    """Whether the queues can make progress, and the figures that say why or why not."""

    ok: bool
    redis_url: str  # with any password replaced
    latency_ms: float | None  # of one PING; None when Redis did not answer
    error: str | None  # why Redis could not be read
    workers: WorkerFigures | None
    queues: tuple[QueueFigures, ...]
    problems: tuple[str, ...]
    store: StoreHealth

    @property
    def scheduler(self) -> bool | None:
        """Tell whether every queue has a scheduler (None when Redis is unknown)."""
        if self.error is not None:
            return None
        return all(queue.scheduler for queue in self.queues)

    def as_dict(self) -> dict[str, Any]:
        """Return the report as the API and the CLI print it."""
        return {
            "ok": self.ok,
            "problems": list(self.problems),
            "redis": {"ok": self.error is None, "latencyMs": self.latency_ms,
                      "url": self.redis_url, "error": self.error},
            "store": self.store.as_dict(),
            "workers": self.workers.as_dict() if self.workers else None,
            "scheduler": self.scheduler,
            "queues": None if self.error else {q.name: q.as_dict() for q in self.queues},
        }


def health_report(connection: redis.Redis, settings: Settings) -> HealthReport:
    """Check Redis, the store, workers, scheduler and queues; never raise, even when both are down.

    Without its store, a worker cannot finish a job nor the API serve an artifact: a store
    that fails its check makes the report unhealthy.
    """
    store = store_health(settings)
    lost = () if store.ok else (
        f"the artifact store at {store.url} cannot be used: jobs cannot store previews, "
        "nor the API serve them",
    )
    where = _where(connection, settings)
    try:
        started = time.perf_counter()
        connection.ping()
        latency = round((time.perf_counter() - started) * 1000, 3)
        queues = read_queues(connection, settings)
        workers = read_workers(connection, settings)
    except redis.RedisError as error:
        message = _scrub(f"{type(error).__name__}: {error}", settings)
        problem = f"Redis at {where} does not answer"
        return HealthReport(False, where, None, message, None, (), (problem, *lost), store)
    problems = (*_problems(workers, queues), *lost)
    return HealthReport(
        not problems, where, latency, None, workers, tuple(queues), problems, store
    )


def store_health(settings: Settings) -> StoreHealth:
    """Check the settings' artifact store within STORE_TIMEOUT, reusing a fresh answer."""
    url = settings.store_url or f"file://{os.path.abspath(settings.data_dir)}"
    latency, error = _store_check(store_for(settings)).answer()
    return StoreHealth(error is None, url, latency, error)


class StoreCheck:
    """The latest check of one store in this process: one at a time, bounded, reused a while.

    The check runs on a thread of its own that the report waits for at most STORE_TIMEOUT:
    a store that hangs (a silent endpoint, a lost network mount) keeps that one thread, and
    later reports find it still running instead of starting another.
    """

    def __init__(self, store: ArtifactStore) -> None:
        """Check this store."""
        self.store = store
        self.lock = threading.Lock()
        self.latest: tuple[float, float | None, str | None] | None = None  # when, ms, error
        self.running: threading.Thread | None = None
        self.since = 0.0  # when the running check started (monotonic)

    def answer(self) -> tuple[float | None, str | None]:
        """Return the check's latency in ms and no error, or no latency and why it failed."""
        with self.lock:
            if self.latest and time.monotonic() - self.latest[0] < STORE_FRESH:
                return self.latest[1], self.latest[2]
            if self.running is None:
                self.running = threading.Thread(target=self._run, name="store-check", daemon=True)
                self.since = time.monotonic()
                self.running.start()
            running, since = self.running, self.since
        running.join(max(0.0, since + STORE_TIMEOUT - time.monotonic()))
        with self.lock:
            if running.is_alive() or self.latest is None:
                waited = time.monotonic() - since
                return None, f"the store has not answered for {waited:.1f} s"
            return self.latest[1], self.latest[2]

    def _run(self) -> None:
        """Check the store once and keep the answer."""
        started = time.perf_counter()
        latency: float | None = None
        error: str | None = None
        try:
            self.store.check()
            latency = round((time.perf_counter() - started) * 1000, 3)
        except Exception as failure:  # a report never raises: whatever went wrong is its answer
            error = f"{type(failure).__name__}: {failure}"
        with self.lock:
            self.latest = (time.monotonic(), latency, error)
            self.running = None


_checks: dict[tuple[int, str], StoreCheck] = {}  # by process and store: a fork checks anew
_checks_lock = threading.Lock()


def _store_check(store: ArtifactStore) -> StoreCheck:
    """Return this process's check of a store."""
    key = (os.getpid(), repr(store))
    with _checks_lock:
        if key not in _checks:
            _checks[key] = StoreCheck(store)
        return _checks[key]


def _problems(workers: WorkerFigures, queues: list[QueueFigures]) -> tuple[str, ...]:
    """Say what keeps the queues from making progress, if anything."""
    problems = []
    if workers.live == 0:
        problems.append("no live worker serves the queues")
    unscheduled = [queue.name for queue in queues if not queue.scheduler]
    if unscheduled:
        problems.append(
            f"no worker runs the scheduler for {', '.join(unscheduled)}: retries would wait "
            "forever (start a worker with --with-scheduler)"
        )
    return tuple(problems)


def _where(connection: redis.Redis, settings: Settings) -> str:
    """Name the Redis the report is about, never with its password."""
    if settings.redis_url:
        return redact_url(settings.redis_url)
    options = connection.connection_pool.connection_kwargs
    if options.get("path"):
        return f"unix://{options['path']}"
    return f"redis://{options.get('host')}:{options.get('port')}/{options.get('db', 0)}"


def _scrub(message: str, settings: Settings) -> str:
    """Remove the Redis password from an error message, should a client library echo it."""
    secret = urlsplit(settings.redis_url or "").password
    for form in {secret, unquote(secret)} if secret else set():
        message = message.replace(form, "***")
    return message
