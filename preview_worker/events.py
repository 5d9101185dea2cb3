"""A job's life as events in a Redis Stream of its own, appended by whoever causes each one.

The API appends "queued" (inside the submit script) and "canceled"; the render job appends
"started" and "progress"; the job's hooks append "retrying", "finished", "dead-lettered"
and "canceled", in any worker, a stock `rq worker` too; recovery appends what it decides.
Each append rides in the round trip that records the same change. A stream holds at most
MAX_EVENTS entries and expires with the job. Stream ids are the events' ids: a reader that
reconnects asks for what came after the last one it saw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis
from rq.job import Job

from preview_worker import keys

KINDS = ("queued", "started", "progress", "retrying", "finished", "dead-lettered", "canceled")
FINAL = frozenset({"finished", "dead-lettered", "canceled"})  # the last event of a job
EVENT_ID_PATTERN = r"^\d{1,20}-\d{1,20}$"  # an event's id: its Redis stream id
MAX_EVENTS = 200  # entries a stream keeps (trimmed approximately, the cheap way)
WAIT = 86_400  # seconds a job's events outlive its record at most
# Words kept on the news stream: a hub that falls this far behind misses news, and its
# followers see those events when they reconnect (Last-Event-ID).
MAX_NEWS = 10_000


@dataclass(frozen=True)
class Event:
    """One event of a job: its stream id, kind and data."""

    id: str
    kind: str
    data: dict[str, Any]

    @property
    def final(self) -> bool:
        """Whether the job ended with this event."""
        return self.kind in FINAL


def lifetime(result_ttl: int | None, failure_ttl: int | None) -> int:
    """Return how long a job's events are kept after the latest: longer than the job."""
    # Every append sets it anew: a stream outlives its job's record by a day at most.
    return max(result_ttl or 0, failure_ttl or 0) + WAIT


def lifetime_of(job: Job) -> int:
    """Return how long the events of a job are kept after the latest."""
    return lifetime(job.result_ttl, job.failure_ttl)


def append(pipe: Any, job_id: str, kind: str, data: dict[str, Any], ttl: int) -> None:
    """Queue one event's append on a pipeline (or a connection): the job's stream, its
    lifetime, and a word on the news stream that servers follow."""
    key = keys.events_key(job_id)
    pipe.xadd(key, {"type": kind, "data": json.dumps(data, separators=(",", ":"))},
              maxlen=MAX_EVENTS, approximate=True)
    pipe.expire(key, ttl)
    pipe.xadd(keys.NEWS, {"job": job_id}, maxlen=MAX_NEWS, approximate=True)


def tell(pipe: Any, job: Job, kind: str, data: dict[str, Any]) -> None:
    """Queue a job's meta and one event of it on a pipeline: a change and its telling."""
    pipe.hset(job.key, "meta", job.serializer.dumps(job.meta))
    append(pipe, job.id, kind, data, lifetime_of(job))


def read_entry(entry: tuple[Any, dict[Any, Any]]) -> Event:
    """Read one stream entry."""
    raw_id, fields = entry
    found = {keys.text(name): keys.text(value) for name, value in fields.items()}
    return Event(keys.text(raw_id), found.get("type", ""), json.loads(found.get("data", "{}")))


def history(connection: redis.Redis, job_id: str, after: str = "") -> list[Event]:
    """Return a job's events after the one with id after (all of them when empty)."""
    start = f"({after}" if after else "-"
    entries: list[Any] = connection.xrange(keys.events_key(job_id), start, "+")  # type: ignore[assignment]
    return [read_entry(entry) for entry in entries]


def ended_by(connection: redis.Redis, job_id: str, after: str) -> bool:
    """Tell whether a reader who has seen every event up to id after has seen the end."""
    newest: Any = connection.xrevrange(keys.events_key(job_id), "+", "-", count=1)
    if not newest:
        return False
    last = read_entry(newest[0])
    return last.final and order(last.id) <= order(after)


def order(event_id: str) -> tuple[int, int]:
    """Return a stream id's sort key; an empty id sorts first."""
    if not event_id:
        return (-1, -1)
    first, _, second = event_id.partition("-")
    return (int(first), int(second or 0))


def follow(connection: redis.Redis, job_id: str, after: str, block_ms: int) -> list[Event]:
    """Return the events after id after, waiting up to block_ms for the first to come."""
    return [event for _, event in follow_many(connection, {job_id: after}, block_ms)]


def follow_many(
    connection: redis.Redis, after: dict[str, str], block_ms: int
) -> list[tuple[str, Event]]:
    """Return the new events of several jobs, each after its own id, waiting up to block_ms
    for the first to come: (job id, event) in order for each job."""
    wanted: Any = {keys.events_key(job_id): seen or "0-0" for job_id, seen in after.items()}
    replies: Any = connection.xread(wanted, block=block_ms)
    prefix = keys.events_key("")
    return [(keys.text(key).removeprefix(prefix), read_entry(entry))
            for key, entries in replies or [] for entry in entries]


def sse(event: Event) -> bytes:
    """Return an event as a Server-Sent Events message."""
    data = json.dumps({"type": event.kind, **event.data}, separators=(",", ":"))
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n".encode()
