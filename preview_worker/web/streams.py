"""A job's event stream served as Server-Sent Events: on the server's event loop, or plainly.

Under `preview-worker serve`, Flask checks the request (token, job) and hands the stream to
the event loop. There one EventHub per process follows the news stream (every append
names its job there) with one blocking XREAD, and reads a job's own stream only when that
job has news and followers: a thousand open streams cost a thousand coroutines and one
Redis connection, not a thousand threads, and nothing while they are quiet. Any other
WSGI server gets the same events from sync_stream(), which holds its thread for as long
as the stream is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio

from preview_worker import events, keys
from preview_worker.connections import connect_async
from preview_worker.signing import ArtifactSigner, link_artifacts

log = logging.getLogger(__name__)

KEEP_ALIVE = 15.0  # seconds between comments on a quiet stream, so proxies keep it open
LONGEST = 3600.0  # seconds a stream stays open; the client reconnects with Last-Event-ID
NEWS_BLOCK_MS = 5000  # the hub's longest wait for news before it looks again
READ_COUNT = 1000  # words of news read at once
GATHER = 0.01  # seconds the hub lets news gather between two reads
RETRY = b"retry: 2000\n\n"  # milliseconds a browser waits before reconnecting


def present(event: events.Event, signer: ArtifactSigner) -> bytes:
    """Return an event as SSE bytes, the artifacts of a finished job's answer signed now."""
    if event.kind == "finished" and isinstance(event.data.get("status"), dict):
        link_artifacts(event.data["status"], signer)
    return events.sse(event)


def sync_stream(connection: redis.Redis, job_id: str, after: str,
                signer: ArtifactSigner) -> Iterator[bytes]:
    """Yield a job's events after id after, then follow them until the job ends."""
    yield RETRY
    found = events.history(connection, job_id, after)
    deadline = time.monotonic() + LONGEST
    while time.monotonic() < deadline:
        for event in found:
            after = event.id
            yield present(event, signer)
            if event.final:
                return
        found = events.follow(connection, job_id, after, int(KEEP_ALIVE * 1000))
        if not found:
            yield b": keep-alive\n\n"


@dataclass(eq=False)  # each follower is itself, kept in a set
class Follower:
    """One open stream: the id of the last event it was given, and its mailbox."""

    after: str
    mailbox: asyncio.Queue[list[events.Event]] = field(default_factory=asyncio.Queue)


class EventHub:
    """Follows the news of every job for one process and brings each followed job's new
    events to its followers: one blocking XREAD on one stream, however many followers."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.followers: dict[str, set[Follower]] = {}
        self.reader: asyncio.Task[None] | None = None
        self.client: redis.asyncio.Redis | None = None
        self.news_id = "0-0"  # the last word of news the hub has read
        self.ready: asyncio.Future[None] | None = None  # set once the hub has its place

    @property
    def open_streams(self) -> int:
        """Return how many streams this process serves now."""
        return sum(len(found) for found in self.followers.values())

    def _client(self) -> redis.asyncio.Redis:
        """Return the hub's own connection pool, opened on first use."""
        if self.client is None:
            # A Sentinel URL too: connect_async asks the sentinels for the primary.
            self.client = connect_async(self.redis_url, socket_timeout=NEWS_BLOCK_MS / 1000 + 10)
        return self.client

    async def history(self, job_id: str, after: str) -> list[events.Event]:
        """Return a job's events after id after."""
        start = f"({after}" if after else "-"
        entries: Any = await self._client().xrange(keys.events_key(job_id), start, "+")
        return [events.read_entry(entry) for entry in entries]

    @contextlib.asynccontextmanager
    async def following(self, job_id: str, after: str) -> AsyncIterator[Follower]:
        """Follow a job's stream from id after while the context lasts."""
        follower = Follower(after)
        self.followers.setdefault(job_id, set()).add(follower)
        try:
            if self.reader is None or self.reader.done():
                self.ready = asyncio.get_running_loop().create_future()
                self.reader = asyncio.create_task(self.read(self.ready))
            # The hub has its place in the news before this follower reads the history:
            # whatever is written after it reaches the follower through the news.
            await asyncio.shield(self.ready)  # type: ignore[arg-type]
            yield follower
        finally:
            found = self.followers.get(job_id)
            if found is not None:
                found.discard(follower)
                if not found:
                    del self.followers[job_id]

    async def _latest_news(self) -> str:
        """Return the id of the newest word on the news stream ("0-0" when there is none)."""
        newest: Any = await self._client().xrevrange(keys.NEWS, "+", "-", count=1)
        return keys.text(newest[0][0]) if newest else "0-0"

    async def read(self, ready: asyncio.Future[None]) -> None:
        """Take a place in the news, then deliver new events to their followers until
        nobody follows any job."""
        client = self._client()
        try:
            self.news_id = await self._latest_news()
        except (redis.RedisError, OSError) as error:
            ready.set_exception(error)
            return
        ready.set_result(None)
        while self.followers:
            try:
                replies: Any = await client.xread(
                    {keys.NEWS: self.news_id}, count=READ_COUNT, block=NEWS_BLOCK_MS
                )
            except (redis.RedisError, OSError) as error:
                log.warning("could not read job events: %s", error)
                await asyncio.sleep(1)
                continue
            news: set[str] = set()
            for _, entries in replies or []:
                for raw_id, fields in entries:
                    self.news_id = keys.text(raw_id)
                    news.add(keys.text(fields.get(b"job", b"")))
            await self._deliver(sorted(news & set(self.followers)))
            # Let a few more words come: one read for several events costs less, and a
            # follower waits at most this much longer.
            await asyncio.sleep(GATHER)

    async def _deliver(self, job_ids: list[str]) -> None:
        """Read the new events of followed jobs (one round trip) and hand each follower
        what it has not had."""
        if not job_ids:
            return
        oldest = {job_id: min((f.after for f in self.followers.get(job_id, ())),
                              key=events.order, default="") for job_id in job_ids}
        try:
            async with self._client().pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    after = oldest[job_id]
                    pipe.xrange(keys.events_key(job_id), f"({after}" if after else "-", "+")
                replies: Any = await pipe.execute()
        except (redis.RedisError, OSError) as error:
            log.warning("could not read job events: %s", error)
            return
        for job_id, entries in zip(job_ids, replies, strict=True):
            news = [events.read_entry(entry) for entry in entries]
            for follower in list(self.followers.get(job_id, ())):
                mine = [event for event in news if _later(event.id, follower.after)]
                if mine:
                    follower.after = mine[-1].id
                    follower.mailbox.put_nowait(mine)


def _later(event_id: str, after: str) -> bool:
    """Tell whether a stream id comes after another (an empty one comes before all)."""
    return events.order(event_id) > events.order(after)


async def hub_stream(hub: EventHub, job_id: str, after: str,
                     signer: ArtifactSigner) -> AsyncGenerator[bytes, None]:
    """Yield a job's events after id after, then follow them until the job ends."""
    yield RETRY
    deadline = time.monotonic() + LONGEST
    async with hub.following(job_id, after) as follower:
        # Read the history after joining: nothing written in between is missed, and the
        # hub's copy of anything read here is dropped as already given.
        found = await hub.history(job_id, after)
        while time.monotonic() < deadline:
            for event in found:
                if not _later(event.id, after):
                    continue
                after = event.id
                follower.after = max(follower.after, after, key=events.order)
                yield present(event, signer)
                if event.final:
                    return
            try:
                found = await asyncio.wait_for(follower.mailbox.get(), KEEP_ALIVE)
            except asyncio.TimeoutError:
                found = []
                yield b": keep-alive\n\n"

