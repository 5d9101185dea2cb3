"""Connections to Redis, opened one way for the API, the workers and the command line."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.utils import SENTINEL

from preview_worker.settings import (
    SENTINEL_SCHEME,
    SentinelURL,
    Settings,
    SettingsError,
    parse_sentinel_url,
)

CONNECT_TIMEOUT = 2.0  # seconds to open a connection to Redis
SOCKET_TIMEOUT = 10.0  # seconds to wait for a reply (blocking pops ask for less)
HEALTH_CHECK_INTERVAL = 30  # seconds idle after which a pooled connection is PINGed first
SENTINEL_TIMEOUT = 1.0  # seconds to reach one sentinel and hear where the primary is


def connect(url: str) -> redis.Redis:
    """Open a Redis connection for RQ (bytes, not decoded strings) that fails fast when down.

    A redis+sentinel:// URL gives a client of the primary the sentinels name: each new
    connection asks them where it is, so after a failover the next command finds the new
    primary (redis-py's SentinelConnectionPool); until one is promoted, commands raise
    ConnectionError (MasterNotFoundError), which callers already treat as Redis being down.
    """
    # Two quick retries ride out a blip; more would keep an API request waiting for seconds.
    options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": SOCKET_TIMEOUT,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
    }
    if is_sentinel_url(url):
        address = parse_sentinel_url(url)
        sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            address.sentinels, **_sentinel_options(address)
        )
        primary: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            address.service, connection_class=SentinelConnection,
            connection_pool_class=SentinelPool, **options
        )
        return primary
    return redis.Redis.from_url(url, **options)


class SentinelConnection(redis.sentinel.SentinelManagedConnection):
    """A connection to the primary the sentinels name, dropped when a read is cut short.

    redis-py's own keeps a connection whose read was interrupted (RQ's SIGTERM raising
    StopRequested in a BLPOP, a job timeout's SIGALRM) and hands it out again, its reply
    still to come: the next command hangs or reads that reply as its own. Every other
    redis-py connection drops itself then; this one does too (redis/redis-py#4292).
    """

    def read_response(
        self,
        disable_decoding: Any = False,
        *,
        timeout: float | object = SENTINEL,
        disconnect_on_error: bool | None = True,
        push_request: bool | None = False,
    ) -> Any:
        """Read a reply as redis-py does, dropping the connection on any failure unless asked."""
        return super().read_response(
            disable_decoding,
            timeout=timeout,
            disconnect_on_error=disconnect_on_error,
            push_request=push_request,
        )


class SentinelPool(redis.sentinel.SentinelConnectionPool):
    """The primary's connections; closed, it closes the sentinels' too, which connect opened."""

    def close(self) -> None:
        """Disconnect from the primary, then from every sentinel."""
        super().close()
        self.sentinel_manager.close()


class AsyncSentinelPool(redis.asyncio.sentinel.SentinelConnectionPool):
    """SentinelPool for asyncio: closed, it closes the sentinels' connections too."""

    async def aclose(self) -> None:
        """Disconnect from the primary, then from every sentinel."""
        await super().aclose()
        await self.sentinel_manager.aclose()


def connect_async(url: str, socket_timeout: float = SOCKET_TIMEOUT) -> redis.asyncio.Redis:
    """Open an asyncio Redis client on a URL as connect() does, for the event streams."""
    if is_sentinel_url(url):
        address = parse_sentinel_url(url)
        sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            address.sentinels, **_sentinel_options(address)
        )
        primary: redis.asyncio.Redis = sentinel.master_for(
            address.service, connection_pool_class=AsyncSentinelPool,
            socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=socket_timeout,
        )
        return primary
    return redis.asyncio.Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=socket_timeout
    )


def is_sentinel_url(url: str) -> bool:
    """Tell whether a Redis URL names sentinels (redis+sentinel://) rather than a server."""
    return url.strip().lower().startswith(f"{SENTINEL_SCHEME}://")


def _sentinel_options(address: SentinelURL) -> dict[str, Any]:
    """Return how to log in to the primary, and how to ask the sentinels, for Sentinel()."""
    return {
        "sentinel_kwargs": {
            "socket_connect_timeout": SENTINEL_TIMEOUT,
            "socket_timeout": SENTINEL_TIMEOUT,
            "password": address.sentinel_password,
        },
        "db": address.db,
        "username": address.username,
        "password": address.password,
    }


class ReplicasBehind(redis.ResponseError):
    """Fewer replicas than PREVIEW_REPLICA_ACKS acknowledged a write in time.

    The write is on the primary, which may yet fail before any replica has it; the caller
    answers as for a refusal (503 and Retry-After), and a submit sent again is idempotent.
    Its message starts as Redis's own refusal for too few replicas, NOREPLICAS.
    """


def pipelined(
    connection: redis.Redis,
    fill: Callable[[Any], object],
    scripts: Iterable[str] = (),
    wait_for: tuple[int, int] = (0, 0),
) -> list[Any]:
    """Send the commands fill() queues on a pipeline in one round trip; return the replies.

    Our scripts go by EVALSHA: redis-py's own script objects would first ask, in a round
    trip of its own, whether Redis has them. A Redis that lost them (restarted, flushed)
    answers NOSCRIPT to those calls alone: the scripts are loaded and only those calls sent
    again. The first error left is raised, as a pipeline raises it.

    wait_for = (replicas, milliseconds) ends the pipeline with WAIT, in the same round trip:
    it returns once so many replicas hold every write so far, or raises ReplicasBehind.
    """
    replicas, timeout_ms = wait_for
    with connection.pipeline(transaction=False) as pipe:
        fill(pipe)
        commands = [args for args, _ in pipe.command_stack]
        if replicas:
            pipe.wait(replicas, timeout_ms)
        replies: list[Any] = pipe.execute(raise_on_error=False)
    acknowledged = replies.pop() if replicas else 0
    missing = [n for n, reply in enumerate(replies)
               if isinstance(reply, redis.exceptions.NoScriptError)]
    if missing:
        for script in scripts:
            connection.script_load(script)
        with connection.pipeline(transaction=False) as again:
            for n in missing:
                again.execute_command(*commands[n])  # type: ignore[no-untyped-call]
            if replicas:
                again.wait(replicas, timeout_ms)
            resent: list[Any] = again.execute(raise_on_error=False)
            acknowledged = resent.pop() if replicas else 0
            for n, reply in zip(missing, resent, strict=True):
                replies[n] = reply
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    if isinstance(acknowledged, Exception):
        raise acknowledged
    if acknowledged < replicas:
        raise ReplicasBehind(
            f"NOREPLICAS {acknowledged} of {replicas} replicas acknowledged the write "
            f"within {timeout_ms} ms"
        )
    return replies


# Replies of a Redis that takes no writes for now: out of memory, a failed snapshot, a
# replica or a primary without its peers (NOREPLICAS: Redis's min-replicas-to-write, or
# our ReplicasBehind, whose write is made but safe to send again). A transaction refused
# for one of them says so after "Transaction discarded because of: ".
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
