"""Batch submit and the one-round-trip submit, against a real Redis and a real server."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from redis.connection import Connection

from preview_worker import queueing
from preview_worker.connections import connect
from preview_worker.settings import Settings, load_settings
from preview_worker.web.shared import preview_of

from .conftest import API_TOKEN, AppMaker, payload, service_environment
from .processes import serving


def batch(client: FlaskClient, jobs: Any) -> Any:
    """Post a batch and return the response."""
    return client.post("/api/preview/jobs", json={"jobs": jobs})


def job_ids_on_queues(connection: redis.Redis) -> list[bytes | str]:
    """Return every job id waiting on the three queues."""
    waiting: list[bytes | str] = []
    for name in ("high", "normal", "low"):
        waiting += connection.lrange(f"rq:queue:{name}", 0, -1)
    return waiting


def test_a_batch_answers_each_item_in_order_and_one_bad_item_refuses_no_other(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    """Accepted, invalid, duplicate and conflicting items get their own answer, in order."""
    queueing.submit(redis_client, load_settings_of(client), payload(idempotencyKey="k-1"))
    items = [
        payload(revision=1),
        {"tutorialId": "Not A Slug\n"},
        payload(revision=1),  # the same content again: the job above
        payload(revision=2, idempotencyKey="k-1"),  # key reused for other content
        payload(revision=3, priority="high"),
    ]
    response = batch(client, items)
    assert response.status_code == 200
    answered = response.get_json()
    outcomes = [item["outcome"] for item in answered["jobs"]]
    assert outcomes == ["accepted", "invalid", "duplicate", "conflict", "accepted"]
    first, invalid, again, conflict, high = answered["jobs"]
    assert again["jobId"] == first["jobId"] and conflict["jobId"] == "k-1"
    assert {problem["path"] for problem in invalid["problems"]} >= {"/tutorialId", "/content"}
    assert high["queue"] == "high"
    assert answered["counts"] == {
        "accepted": 2, "duplicate": 1, "invalid": 1, "conflict": 1, "refused": 0
    }
    assert sorted(job_ids_on_queues(redis_client)) == sorted(
        [b"k-1", first["jobId"].encode(), high["jobId"].encode()]
    )


def load_settings_of(client: FlaskClient) -> Settings:
    """Return the settings of the app a test client talks to."""
    app: Flask = client.application
    return preview_of(app).settings


def test_backpressure_holds_per_item(make_app: AppMaker, redis_client: redis.Redis) -> None:
    """With room for three jobs, a batch of five has three accepted and two refused."""
    client = make_app(PREVIEW_QUEUE_MAX="3").test_client()
    response = batch(client, [payload(revision=number) for number in range(5)])
    outcomes = [item["outcome"] for item in response.get_json()["jobs"]]
    assert outcomes == ["accepted"] * 3 + ["refused"] * 2
    assert response.get_json()["jobs"][3]["reason"] == "queue_full"
    assert len(job_ids_on_queues(redis_client)) == 3


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"jobs": []}, 422, "invalid_batch"),
        ({"jobs": {}}, 422, "invalid_batch"),
        ([payload()], 422, "invalid_batch"),
        ({"jobs": [payload()], "more": 1}, 422, "invalid_batch"),
    ],
)
def test_a_malformed_batch_is_refused_whole_and_changes_nothing(
    client: FlaskClient, redis_client: redis.Redis, body: Any, status: int, code: str
) -> None:
    """A body that is not {"jobs": [...]} with 1 to PREVIEW_BATCH_MAX items enqueues nothing."""
    response = client.post("/api/preview/jobs", json=body)
    assert response.status_code == status and response.get_json()["error"] == code
    assert job_ids_on_queues(redis_client) == []


def test_a_batch_past_its_count_is_refused(make_app: AppMaker, redis_client: redis.Redis) -> None:
    """PREVIEW_BATCH_MAX=3 refuses a batch of 4 whole, and takes a batch of 3."""
    client = make_app(PREVIEW_BATCH_MAX="3").test_client()
    refused = batch(client, [payload(revision=number) for number in range(4)])
    assert refused.status_code == 422 and job_ids_on_queues(redis_client) == []
    assert batch(client, [payload(revision=number) for number in range(3)]).status_code == 200
    assert len(job_ids_on_queues(redis_client)) == 3


class RoundTrips:
    """Counts the requests sent to Redis: a pipeline is sent as one."""

    def __init__(self) -> None:
        self.count = 0


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[RoundTrips]:
    """Count every packed send to Redis from this process from now on."""
    counter = RoundTrips()
    real = Connection.send_packed_command

    def counted(self: Connection, command: Any, check_health: bool = True) -> None:
        counter.count += 1
        real(self, command, check_health)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(Connection, "send_packed_command", counted)
    yield counter


def test_a_single_submit_costs_one_round_trip(
    redis_client: redis.Redis, settings: Settings, round_trips: RoundTrips
) -> None:
    """Once the script is loaded, a new job, a duplicate and a refusal cost one trip each."""
    queueing.submit(redis_client, settings, payload(revision=0))  # loads the script
    for submitted in (payload(revision=1), payload(revision=1)):
        round_trips.count = 0
        queueing.submit(redis_client, settings, submitted)
        assert round_trips.count == 1


def test_a_batch_costs_the_same_round_trips_whatever_its_size(
    redis_client: redis.Redis, settings: Settings, round_trips: RoundTrips
) -> None:
    """Ten payloads and five hundred cost the same number of trips to Redis."""
    queueing.submit_many(redis_client, settings, [payload(revision=-1)])  # loads the script
    counts = []
    for size, start in ((10, 0), (500, 100)):
        round_trips.count = 0
        outcomes = queueing.submit_many(
            redis_client, settings, [payload(revision=start + n) for n in range(size)]
        )
        assert all(isinstance(outcome, queueing.Submission) for outcome in outcomes)
        counts.append(round_trips.count)
    assert counts[0] == counts[1] <= 2, counts


def test_concurrent_batches_make_each_job_once_within_the_limit(
    redis_url: str, data_dir: Path
) -> None:
    """Four threads send overlapping batches at once: one job per content, never past the cap."""
    settings = load_settings(service_environment(redis_url, data_dir, PREVIEW_QUEUE_MAX="30"))
    results: list[list[Any]] = []

    def send(offset: int) -> None:
        connection = connect(redis_url)
        try:
            results.append(queueing.submit_many(
                connection, settings, [payload(revision=offset + n) for n in range(20)]
            ))
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(offset,)) for offset in (0, 5, 10, 15)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    connection = connect(redis_url)
    try:
        queued = job_ids_on_queues(connection)
    finally:
        connection.close()
    accepted = [
        outcome.job_id for outcomes in results for outcome in outcomes
        if isinstance(outcome, queueing.Submission) and not outcome.duplicate
    ]
    assert len(queued) == len(set(queued)) == len(accepted) == 30  # 35 contents, room for 30
    refused = [o for outcomes in results for o in outcomes if isinstance(o, queueing.QueueFull)]
    assert len(refused) >= 5


def test_the_server_takes_a_batch_larger_than_one_payload_may_be(
    redis_url: str, data_dir: Path
) -> None:
    """Past PREVIEW_MAX_BODY_BYTES, a single submit is 413 and a batch of that size is taken."""
    environment = service_environment(
        redis_url, data_dir, PREVIEW_API_TOKENS=API_TOKEN, PREVIEW_MAX_BODY_BYTES="65536"
    )
    padding = b" " * 100_000  # JSON may hold any amount of whitespace
    single = json.dumps(payload()).encode()[:-1] + padding + b"}"
    many = b'{"jobs": [' + json.dumps(payload()).encode() + b"]" + padding + b"}"
    with serving(environment, workers=1) as base:
        answers = [post(f"{base}/api/preview/job", single), post(f"{base}/api/preview/jobs", many)]
    assert answers == [413, 200]


def post(url: str, body: bytes) -> int:
    """POST a JSON body with the token and return the status code."""
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {API_TOKEN}"
    })
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
