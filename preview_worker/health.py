"""One health report of the service: Redis, live workers, the scheduler and the queues."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis

from preview_worker.observe.figures import QueueFigures, WorkerFigures, read_queues, read_workers
from preview_worker.settings import Settings, redact_url


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
            "workers": self.workers.as_dict() if self.workers else None,
            "scheduler": self.scheduler,
            "queues": None if self.error else {q.name: q.as_dict() for q in self.queues},
        }


def health_report(connection: redis.Redis, settings: Settings) -> HealthReport:
    """Check Redis, workers, scheduler and queues; never raise, even when Redis is down."""
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
        return HealthReport(False, where, None, message, None, (), (problem,))
    problems = _problems(workers, queues)
    return HealthReport(not problems, where, latency, None, workers, tuple(queues), problems)


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
