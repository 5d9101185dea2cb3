"""Retry policy: how many more attempts a failed job gets, and when each comes."""

from __future__ import annotations

import random

from rq import Retry

from preview_worker.settings import Settings

_DRAW = random.Random()  # seeded once: seeding from the OS on every job costs more than the draw


def backoff_delays(settings: Settings, rng: random.Random | None = None) -> list[int]:
    """Return the gap before each retry of a render, as the retry settings shape them."""
    return exponential_delays(
        settings.retry_max, settings.retry_base_delay, settings.retry_max_delay, rng
    )


def exponential_delays(
    count: int, base: float, cap: float, rng: random.Random | None = None
) -> list[int]:
    """Return the gap before each of count retries: doubling from base, capped, jittered.

    Jitter is "equal jitter": each gap is drawn from [half, all] of its exponential value,
    so gaps still grow while retries of many jobs that failed together spread out.
    """
    draw = rng or _DRAW
    delays = []
    for attempt in range(count):
        ceiling = min(cap, base * 2**attempt)
        # RQ schedules in whole seconds; a zero gap would mean "retry at once".
        delays.append(max(1, round(draw.uniform(ceiling / 2, ceiling))))
    return delays


def retry_policy(settings: Settings, rng: random.Random | None = None) -> Retry | None:
    """Return the RQ Retry attached to a job at enqueue time, or None when retries are off."""
    if settings.retry_max == 0:
        return None
    # RQ picks intervals[len(intervals) - retries_left]; one gap per retry keeps them in order.
    return Retry(max=settings.retry_max, interval=backoff_delays(settings, rng))
