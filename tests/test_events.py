"""A job's events: appended by whoever causes them, served as Server-Sent Events."""

from __future__ import annotations

import http.client
import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from preview_worker import events, keys, queueing
from preview_worker.settings import Settings
from preview_worker.worker import PreviewWorker

from .conftest import payload, service_environment
from .processes import running_worker, serving, wait_until

TOKEN = "events-token-0123456789"


def work(connection: redis.Redis, settings: Settings) -> None:
    """Run every queued job with a real worker in this process."""
    PreviewWorker(queueing.queues(connection, settings), connection=connection).work(burst=True)


def kinds(connection: redis.Redis, job_id: str) -> list[str]:
    """Return the kinds of a job's events, in order, but progress, which comes only for a
    stage that lasts (half a second), so a cold first render may or may not tell it."""
    return [event.kind for event in events.history(connection, job_id)
            if event.kind != "progress"]


def test_a_rendered_job_tells_queued_started_and_finished_with_its_answer(
    redis_client: redis.Redis, settings: Settings, worker_environment: None
) -> None:
    """Given a job run by our worker, its stream holds queued, started, finished, in order."""
    job_id = queueing.submit(redis_client, settings, payload()).job_id
    assert kinds(redis_client, job_id) == ["queued"]  # written by the submit script itself
    work(redis_client, settings)
    found = [event for event in events.history(redis_client, job_id) if event.kind != "progress"]
    assert [event.kind for event in found] == ["queued", "started", "finished"]
    assert found[1].data == {"attempt": 1}
    answer = found[-1].data["status"]
    assert answer["status"] == "finished" and answer["jobId"] == job_id
    assert answer["result"]["artifactHash"] and answer["progress"]["percent"] == 100
    assert found[-1].final and not found[0].final
    ttl = redis_client.ttl(keys.events_key(job_id))
    assert settings.result_ttl < ttl <= events.lifetime(settings.result_ttl, settings.failure_ttl)


def test_a_job_that_fails_for_good_tells_why(
    redis_client: redis.Redis, settings: Settings, worker_environment: None
) -> None:
    """Given a payload the worker refuses, the stream ends dead-lettered with the reason."""
    broken = payload(content={"title": "", "steps": []})  # invalid: the worker checks again
    job_id = queueing.submit(redis_client, settings, broken).job_id
    work(redis_client, settings)
    found = events.history(redis_client, job_id)
    assert [event.kind for event in found] == ["queued", "started", "dead-lettered"]  # fast
    assert found[-1].data["reason"]["type"] == "InvalidPayload"


def test_a_canceled_job_tells_it(redis_client: redis.Redis, settings: Settings) -> None:
    """Given a waiting job that is canceled, its stream ends canceled."""
    job_id = queueing.submit(redis_client, settings, payload()).job_id
    queueing.cancel(redis_client, job_id)
    assert kinds(redis_client, job_id) == ["queued", "canceled"]


def test_a_stock_rq_worker_produces_the_events_too(
    redis_client: redis.Redis, settings: Settings, redis_url: str, data_dir: Path
) -> None:
    """Given a job run by a stock `rq worker`, its stream still tells started and finished."""
    job_id = queueing.submit(redis_client, settings, payload()).job_id
    environment = service_environment(redis_url, data_dir)
    with running_worker(environment, "--burst", "high", "normal", "low", stock=True) as worker:
        worker.wait(60)
    assert kinds(redis_client, job_id) == ["queued", "started", "finished"]


class EventReader:
    """A client of one event stream over HTTP, reading SSE messages as they come."""

    def __init__(self, base: str, path: str, last_id: str = "", bearer: bool = True) -> None:
        address = urllib.parse.urlsplit(base)
        self.connection = http.client.HTTPConnection(
            str(address.hostname), address.port, timeout=30
        )
        headers = {"Authorization": f"Bearer {TOKEN}"} if bearer else {}
        if last_id:
            headers["Last-Event-ID"] = last_id
        self.connection.request("GET", path, headers=headers)
        self.answer = self.connection.getresponse()

    def messages(self) -> Iterator[dict[str, str]]:
        """Yield each message (id, event, data) until the server closes the stream."""
        message: dict[str, str] = {}
        while True:
            line = self.answer.readline()
            if not line:
                return
            text = line.decode().rstrip("\n")
            if not text:
                if "event" in message:
                    yield message
                message = {}
            elif not text.startswith(":"):
                name, _, value = text.partition(": ")
                message[name] = value

    def close(self) -> None:
        """Hang up."""
        self.connection.close()


@pytest.fixture
def served_events(redis_url: str, data_dir: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """Give the base URL of `preview-worker serve` and the environment of its workers."""
    environment = service_environment(
        redis_url, data_dir, PREVIEW_API_TOKENS=TOKEN, PREVIEW_RETRY_MAX="0"
    )
    with serving(environment, workers=1) as base:
        yield base, environment


def submit_over_http(base: str, submitted: dict[str, Any]) -> dict[str, Any]:
    """Submit a payload to the server; return its answer."""
    address = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(str(address.hostname), address.port, timeout=30)
    connection.request("POST", "/api/preview/job", json.dumps(submitted), {
        "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    answer = connection.getresponse()
    body: dict[str, Any] = json.loads(answer.read())
    connection.close()
    assert answer.status == 202, body
    return body


def test_a_stream_follows_a_job_live_and_a_reconnect_misses_and_repeats_nothing(
    served_events: tuple[str, dict[str, str]], redis_client: redis.Redis
) -> None:
    """Given a stream opened before the job runs, read in two connections (the second with
    Last-Event-ID), every event arrives once, in order, ending with finished."""
    base, environment = served_events
    submitted = submit_over_http(base, payload(revision=1))
    job_id = submitted["jobId"]
    path = f"/api/preview/job/{job_id}/events"
    first = EventReader(base, path)
    assert first.answer.status == 200
    assert first.answer.getheader("Content-Type", "").startswith("text/event-stream")
    seen = [next(first.messages())]  # queued, before any worker runs
    first.close()
    assert seen[0]["event"] == "queued"
    second = EventReader(base, path, last_id=seen[0]["id"])
    with running_worker(environment, "--burst"):
        seen += list(second.messages())  # live, until the server closes after finished
    second.close()
    assert [m["event"] for m in seen if m["event"] != "progress"] == [
        "queued", "started", "finished"]
    assert [message["id"] for message in seen] == [
        event.id for event in events.history(redis_client, job_id)
    ]
    finished = json.loads(seen[-1]["data"])["status"]
    assert all("token=" in artifact["url"] for artifact in finished["result"]["artifacts"])


def test_a_stream_of_an_ended_job_gives_the_history_at_once_and_the_signed_url_opens_it(
    served_events: tuple[str, dict[str, str]], redis_client: redis.Redis
) -> None:
    """Given a job that already ended, its signed eventsUrl (no bearer token) gives every
    event and closes; a bad token is refused."""
    base, environment = served_events
    submitted = submit_over_http(base, payload(revision=2))
    job_id = submitted["jobId"]
    with running_worker(environment, "--burst") as worker:
        worker.wait(60)
    wait_until(lambda: "finished" in kinds(redis_client, job_id), 30, "the job's end")
    reader = EventReader(base, submitted["eventsUrl"], bearer=False)
    assert reader.answer.status == 200
    messages = list(reader.messages())
    told = [m["event"] for m in messages]
    assert [kind for kind in told if kind != "progress"] == ["queued", "started", "finished"]
    # An EventSource reconnects after the end: 204 tells it to stop.
    after_end = EventReader(base, submitted["eventsUrl"], last_id=messages[-1]["id"],
                            bearer=False)
    assert after_end.answer.status == 204
    after_end.close()
    forged = EventReader(base, f"/api/preview/job/{job_id}/events?token=forged", bearer=False)
    assert forged.answer.status == 401
    other = EventReader(base, submitted["eventsUrl"].replace(job_id, "other-job"), bearer=False)
    assert other.answer.status == 401  # a token opens its own job's stream only
    for opened in (reader, forged, other):
        opened.close()


def test_an_unknown_job_or_a_bad_last_event_id_is_refused(
    served_events: tuple[str, dict[str, str]]
) -> None:
    """Given no such job, 404; given a Last-Event-ID that is not an event id, 400."""
    base, _ = served_events
    unknown = EventReader(base, "/api/preview/job/nothing-here/events")
    assert unknown.answer.status == 404
    job_id = submit_over_http(base, payload(revision=3))["jobId"]
    bad = EventReader(base, f"/api/preview/job/{job_id}/events", last_id="12; DROP")
    assert bad.answer.status == 400
    unknown.close()
    bad.close()


def open_streams(base: str) -> float:
    """Return the server's gauge of open event streams."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = [line for line in text.splitlines() if line.startswith("preview_event_streams_open")]
    return float(found[0].split()[-1]) if found else 0.0


def test_open_streams_are_counted_while_they_are_open(
    served_events: tuple[str, dict[str, str]]
) -> None:
    """Given two streams open on a waiting job, the gauge says 2; once closed, 0."""
    base, _ = served_events
    job_id = submit_over_http(base, payload(revision=4))["jobId"]
    readers = [EventReader(base, f"/api/preview/job/{job_id}/events") for _ in range(2)]
    for reader in readers:
        next(reader.messages())  # queued: the stream is being served
    assert open_streams(base) == 2
    for reader in readers:
        reader.close()
    wait_until(lambda: open_streams(base) == 0, 20, "the streams to close")


def test_a_redis_that_lost_our_scripts_still_gets_each_event_once(
    redis_client: redis.Redis, settings: Settings, worker_environment: None
) -> None:
    """Given Redis's scripts flushed (as by a restart), a job's end is told and counted once:
    only the script calls that Redis refused are sent again."""
    job_id = queueing.submit(redis_client, settings, payload()).job_id
    redis_client.script_flush()
    work(redis_client, settings)
    assert kinds(redis_client, job_id) == ["queued", "started", "finished"]
    counts = redis_client.hgetall(keys.OUTCOMES)
    assert counts[b"normal|succeeded"] == b"1"
