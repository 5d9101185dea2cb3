"""Connections to Redis, opened one way for the API, the workers and the command line."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from preview_worker.settings import Settings, SettingsError


def connect(url: str) -> redis.Redis:
    """Open a Redis connection for RQ (bytes, not decoded strings) that fails fast when down."""
    # Two quick retries ride out a blip; more would keep an API request waiting for seconds.
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=10,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
    )


def pipelined(
    connection: redis.Redis, fill: Callable[[Any], object], scripts: Iterable[str] = ()
) -> list[Any]:
    """Send the commands fill() queues on a pipeline in one round trip; return the replies.

    Our scripts go by EVALSHA: redis-py's own script objects would first ask, in a round
    trip of its own, whether Redis has them. A Redis that lost them (restarted, flushed)
    answers NOSCRIPT to those calls alone: the scripts are loaded and only those calls sent
    again. The first error left is raised, as a pipeline raises it.
    """
    with connection.pipeline(transaction=False) as pipe:
        fill(pipe)
        commands = [args for args, _ in pipe.command_stack]
        replies: list[Any] = pipe.execute(raise_on_error=False)
    missing = [n for n, reply in enumerate(replies)
               if isinstance(reply, redis.exceptions.NoScriptError)]
    if missing:
        for script in scripts:
            connection.script_load(script)
        with connection.pipeline(transaction=False) as again:
            for n in missing:
                again.execute_command(*commands[n])  # type: ignore[no-untyped-call]
            for n, reply in zip(missing, again.execute(raise_on_error=False), strict=True):
                replies[n] = reply
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


# Replies of a Redis that takes no writes for now: out of memory, a failed snapshot, a
# replica or a primary without its peers. A transaction refused for one of them says so
# after "Transaction discarded because of: ".
REFUSALS = ("OOM", "MISCONF", "READONLY", "MASTERDOWN", "NOREPLICAS")


def is_refusal(error: redis.RedisError) -> bool:
    """Tell whether Redis refused a write for a while, having changed nothing."""
    if isinstance(error, (redis.exceptions.OutOfMemoryError, redis.ReadOnlyError)):
        return True
    reason = str(error).removeprefix("Transaction discarded because of: ")
    # A pipeline names the command that failed: "Command # 1 (EVALSHA ...) of pipeline
    # caused error: <what Redis said>".
    reason = reason.partition(" of pipeline caused error: ")[2] or reason
    # A script's refused write comes wrapped: "Error running script (...): @user_script:24:
    # ... -OOM command not allowed...". Our scripts write only after every check, so a
    # refusal of their first write changed nothing either.
    if reason.startswith("Error running script"):
        reason = reason.rpartition(": -")[2]
    return isinstance(error, redis.ResponseError) and reason.startswith(REFUSALS)


def persists(connection: redis.Redis) -> bool | None:
    """Tell whether Redis writes its data to disk (AOF or RDB snapshots); None if it won't say."""
    try:
        appendonly = connection.config_get("appendonly").get("appendonly", "no")
        save = connection.config_get("save").get("save", "")
    except redis.ResponseError:  # CONFIG renamed or forbidden, as managed services do
        enabled = connection.info("persistence").get("aof_enabled")
        return True if enabled else None
    return str(appendonly) == "yes" or bool(str(save).strip())


def require_persistence(connection: redis.Redis, settings: Settings) -> None:
    """In production, refuse a Redis that keeps accepted jobs in memory only, unless allowed."""
    if not settings.production or settings.allow_volatile_redis:
        return
    if persists(connection) is False:
        raise SettingsError(
            "PREVIEW_ENV=production needs a Redis that persists (appendonly yes, or save "
            "rules): this one keeps accepted jobs in memory only and loses them on a restart; "
            "set PREVIEW_ALLOW_VOLATILE_REDIS=true if that is wanted"
        )
