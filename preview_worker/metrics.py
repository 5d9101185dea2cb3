"""Job outcomes and durations recorded in Redis, so every worker on every host adds up."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis

from preview_worker import keys

log = logging.getLogger(__name__)

OUTCOMES = (
    "enqueued", "duplicate", "rejected", "succeeded", "retried", "dead_lettered", "canceled"
)
# Upper bounds of the duration histogram's buckets, in seconds.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, math.inf)


def _bound_name(bound: float) -> str:
    """Name a bucket bound the way Prometheus does."""
    return "+Inf" if bound == math.inf else repr(bound)


# One round trip per job end: claim it (when asked), count it, add its duration.
RECORD = """
if ARGV[4] ~= '' and redis.call('HSETNX', KEYS[3], ARGV[4], 1) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
if ARGV[2] ~= '' then
  redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
  redis.call('HINCRBYFLOAT', KEYS[2], 'sum', ARGV[3])
  redis.call('HINCRBY', KEYS[2], 'count', 1)
end
return 1
"""


def record_outcome(
    connection: redis.Redis,
    queue: str,
    outcome: str,
    duration: float | None = None,
    settle: str | None = None,
) -> bool:
    """Count one outcome of a job on a queue (and its duration); never raise.

    With settle=the key of a job's end, the outcome counts only if nobody counted that
    end before: each end is counted once, whoever sees it (a hook, cancel, recovery).
    """
    bucket, seconds = "", ""
    if duration is not None:
        seconds = repr(max(duration, 0.0))
        bucket = f"le:{_bound_name(next(b for b in DURATION_BUCKETS if float(seconds) <= b))}"
    try:
        script = connection.register_script(RECORD)
        counted = script(
            keys=[keys.OUTCOMES, keys.durations_key(queue), keys.COUNTED],
            args=[f"{queue}|{outcome}", bucket, seconds, settle or ""],
        )
        return bool(counted)
    except Exception:  # a recorder observes: its failure must never fail a job
        log.exception("could not record outcome %s of a job on %s", outcome, queue)
        return False


@dataclass
class DurationHistogram:
    """A queue's recorded job durations: cumulative bucket counts (as Prometheus), sum, count."""

    buckets: list[tuple[float, int]] = field(default_factory=list)
    total: float = 0.0
    count: int = 0


def read_outcomes(connection: redis.Redis) -> dict[tuple[str, str], int]:
    """Return the recorded count of every (queue, outcome)."""
    raw = connection.hgetall(keys.OUTCOMES)
    counts: dict[tuple[str, str], int] = {}
    for name, value in raw.items():
        queue, _, outcome = keys.text(name).partition("|")
        counts[(queue, outcome)] = int(value)
    return counts


def read_durations(connection: redis.Redis, queues: Iterable[str]) -> dict[str, DurationHistogram]:
    """Return the recorded duration histogram of each queue."""
    histograms = {}
    for queue in queues:
        recorded = connection.hgetall(keys.durations_key(queue))
        raw = {keys.text(name): value for name, value in recorded.items()}
        counts = [int(raw.get(f"le:{_bound_name(bound)}", 0)) for bound in DURATION_BUCKETS]
        histograms[queue] = DurationHistogram(
            buckets=list(zip(DURATION_BUCKETS, itertools.accumulate(counts), strict=True)),
            total=float(raw.get("sum", 0.0)),
            count=int(raw.get("count", 0)),
        )
    return histograms
