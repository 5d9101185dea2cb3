"""Connections to Redis, opened one way for the API, the workers and the command line."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry


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


# Replies of a Redis that takes no writes for now: out of memory, a failed snapshot, a
# replica or a primary without its peers. A transaction refused for one of them says so
# after "Transaction discarded because of: ".
REFUSALS = ("OOM", "MISCONF", "READONLY", "MASTERDOWN", "NOREPLICAS")


def is_refusal(error: redis.RedisError) -> bool:
    """Tell whether Redis refused a write for a while, having changed nothing."""
    if isinstance(error, (redis.exceptions.OutOfMemoryError, redis.ReadOnlyError)):
        return True
    reason = str(error).removeprefix("Transaction discarded because of: ")
    return isinstance(error, redis.ResponseError) and reason.startswith(REFUSALS)
