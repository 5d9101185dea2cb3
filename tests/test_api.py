"""The HTTP API through Flask's test client, against a real Redis: every row of the contract."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from preview_worker import queueing
from preview_worker.settings import Settings, SettingsError
from preview_worker.store import FileStore
from preview_worker.store.s3 import S3Store
from preview_worker.web.openapi import openapi_document
from preview_worker.web.shared import preview_of
from preview_worker.worker import PreviewWorker

from .conftest import API_TOKEN as TOKEN
from .conftest import AppMaker, load_payload, payload
from .object_store import ObjectStore

AUTH = {"Authorization": f"Bearer {TOKEN}"}


# Jobs run in this process (by PreviewWorker) read the test Redis and store.
pytestmark = pytest.mark.usefixtures("worker_environment")


def queued(connection: redis.Redis, settings: Settings) -> int:
    """Return how many jobs wait on the queues."""
    return queueing.queued_count(connection, settings)


def run_jobs(app: Flask) -> None:
    """Run every queued job with a real worker in this process."""
    shared = preview_of(app)
    queues = queueing.queues(shared.connection, shared.settings)
    PreviewWorker(queues, connection=shared.connection).work(burst=True)


def assert_envelope(response: Any, status: int, code: str) -> dict[str, Any]:
    """Check an error answer's status and JSON envelope; return its body."""
    assert response.status_code == status, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    assert body["error"] == code and body["message"]
    assert body["requestId"] == response.headers["X-Request-ID"]
    return body


def test_submit_answers_202_with_location_then_200_for_a_duplicate(
    client: FlaskClient, redis_client: redis.Redis, app: Flask
) -> None:
    """Given a valid payload, the first POST enqueues it and the second finds it."""
    first = client.post("/api/preview/job", json=payload(priority="high"))
    assert first.status_code == 202
    body = first.get_json()
    assert body == {"jobId": body["jobId"], "status": "queued", "queue": "high",
                    "duplicate": False, "eventsUrl": body["eventsUrl"]}
    assert body["eventsUrl"].startswith(f"/api/preview/job/{body['jobId']}/events?token=")
    assert first.headers["Location"] == f"/api/preview/job/{body['jobId']}"
    second = client.post("/api/preview/job", json=payload(priority="high"))
    assert second.status_code == 200 and second.get_json()["duplicate"] is True
    assert queued(redis_client, preview_of(app).settings) == 1


def test_dry_run_validates_and_enqueues_nothing(
    client: FlaskClient, redis_client: redis.Redis, app: Flask
) -> None:
    """Given ?dryRun=true, a valid payload gets its verdict and no job."""
    response = client.post("/api/preview/job?dryRun=true", json=payload())
    assert response.status_code == 200
    assert response.get_json() == {
        "valid": True, "jobId": queueing.job_id_for(payload()), "queue": "normal"
    }
    assert queued(redis_client, preview_of(app).settings) == 0


BAD_BODIES = [
    ("malformed", b'{"tutorialId": ', "application/json", 400, "bad_json"),
    ("not utf-8", b"\xff\xfe", "application/json", 400, "bad_json"),
    ("NaN", b'{"tutorialId": NaN}', "application/json", 400, "bad_json"),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "bad_json"),
    ("oversize", b'{"x": "' + b"a" * 2_000_000 + b'"}', "application/json", 413,
     "payload_too_large"),
    ("wrong content type", json.dumps(payload()).encode(), "text/plain", 415,
     "unsupported_media_type"),
    ("form", b"tutorialId=x", "application/x-www-form-urlencoded", 415,
     "unsupported_media_type"),
    ("an array", b"[]", "application/json", 422, "invalid_payload"),
    ("wrong types", json.dumps({**payload(), "revision": "7"}).encode(), "application/json",
     422, "invalid_payload"),
    ("unknown field", json.dumps({**payload(), "author": "ada"}).encode(), "application/json",
     422, "invalid_payload"),
]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [case[1:] for case in BAD_BODIES],
    ids=[case[0] for case in BAD_BODIES],
)
def test_bad_bodies_get_an_envelope_and_enqueue_nothing(
    client: FlaskClient,
    redis_client: redis.Redis,
    app: Flask,
    body: bytes,
    content_type: str,
    status: int,
    code: str,
) -> None:
    """Given a bad body, the answer is its error code in the envelope and nothing is queued."""
    response = client.post("/api/preview/job", data=body, content_type=content_type)
    assert_envelope(response, status, code)
    assert queued(redis_client, preview_of(app).settings) == 0
    assert redis_client.keys("rq:job:*") == []


def test_invalid_payload_lists_every_problem_with_a_pointer(client: FlaskClient) -> None:
    """Given a payload breaking three rules, 422 lists all three as JSON Pointers."""
    bad = {**payload(priority="urgent"), "extra": 1}
    bad["content"] = {**bad["content"], "title": ""}
    body = assert_envelope(client.post("/api/preview/job", json=bad), 422, "invalid_payload")
    assert [item["path"] for item in body["details"]] == ["/content/title", "/extra", "/priority"]


def test_a_missing_or_wrong_token_is_refused(app: Flask) -> None:
    """Given no token or a wrong one, mutating and reading calls answer 401."""
    anonymous = app.test_client()
    assert_envelope(anonymous.post("/api/preview/job", json=payload()), 401, "unauthorized")
    wrong = {"Authorization": "Bearer not-the-token-at-all"}
    assert_envelope(anonymous.get("/api/preview/dlq", headers=wrong), 401, "unauthorized")
    assert_envelope(anonymous.get("/rq/", headers=wrong), 401, "unauthorized")
    assert anonymous.get("/api/preview/metrics").status_code == 200  # public for scrapers


def test_probes_can_be_closed_too(make_app: AppMaker) -> None:
    """Given PREVIEW_OPEN_PROBES=false, health and metrics also want the token."""
    client = make_app(PREVIEW_API_TOKENS=TOKEN, PREVIEW_OPEN_PROBES="false").test_client()
    for path in ("/api/preview/metrics", "/api/preview/worker/health", "/metrics"):
        assert_envelope(client.get(path), 401, "unauthorized")
    assert client.get("/api/preview/metrics", headers=AUTH).status_code == 200


def test_a_full_queue_answers_503_with_retry_after(
    make_app: AppMaker, redis_client: redis.Redis
) -> None:
    """Given PREVIEW_QUEUE_MAX jobs queued, another submission gets 503 and is not queued."""
    app = make_app(PREVIEW_API_TOKENS=TOKEN, PREVIEW_QUEUE_MAX="1")
    settings = preview_of(app).settings
    client = app.test_client()
    assert client.post("/api/preview/job", json=payload(), headers=AUTH).status_code == 202
    full = client.post("/api/preview/job", json=payload(revision=2), headers=AUTH)
    assert_envelope(full, 503, "queue_full")
    assert full.headers["Retry-After"] == "30"
    assert queued(redis_client, settings) == 1


def test_redis_down_answers_503_with_the_envelope(make_app: AppMaker) -> None:
    """Given an unreachable Redis, a submission gets a clear 503, not a crash."""
    client = make_app(PREVIEW_API_TOKENS=TOKEN, REDIS_URL="redis://127.0.0.1:1/0").test_client()
    response = client.post("/api/preview/job", json=payload(), headers=AUTH)
    body = assert_envelope(response, 503, "unavailable")
    assert "unreachable" in body["message"] and "Traceback" not in json.dumps(body)


def test_status_cancel_and_conflict(client: FlaskClient) -> None:
    """Given a queued job, status answers it, DELETE cancels it, a second DELETE is 409."""
    job_id = client.post("/api/preview/job", json=payload()).get_json()["jobId"]
    for path in (f"/api/preview/job/{job_id}", f"/api/preview/job/{job_id}/status"):
        status = client.get(path).get_json()
        assert status["jobId"] == job_id and status["status"] == "queued"
    canceled = client.delete(f"/api/preview/job/{job_id}")
    assert canceled.status_code == 200 and canceled.get_json()["status"] == "canceled"
    assert_envelope(client.delete(f"/api/preview/job/{job_id}"), 409, "already_ended")


@pytest.mark.parametrize("job_id", ["missing", "..%2F..%2Fetc", "a" * 400])
def test_unknown_jobs_are_404(client: FlaskClient, job_id: str) -> None:
    """Given an id no job has (or could have), status, cancel and requeue answer 404."""
    assert_envelope(client.get(f"/api/preview/job/{job_id}"), 404, "not_found")
    assert_envelope(client.delete(f"/api/preview/job/{job_id}"), 404, "not_found")
    assert_envelope(client.post(f"/api/preview/dlq/{job_id}/requeue"), 404, "not_found")
    assert_envelope(client.delete(f"/api/preview/dlq/{job_id}"), 404, "not_found")


def test_request_id_is_echoed_stored_and_replaced_when_unsafe(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    """Given X-Request-ID, it is echoed and kept in the job's meta; an unsafe one is replaced."""
    response = client.post("/api/preview/job", json=payload(), headers={"X-Request-ID": "r-42"})
    assert response.headers["X-Request-ID"] == "r-42"
    job_id = response.get_json()["jobId"]
    assert queueing.job_status(redis_client, job_id)["requestId"] == "r-42"
    unsafe = client.get("/api/preview/dlq", headers={"X-Request-ID": "<script>"})
    assert unsafe.headers["X-Request-ID"] != "<script>" and len(unsafe.headers["X-Request-ID"])


@pytest.mark.both_stores
def test_finished_job_links_signed_artifacts(client: FlaskClient, app: Flask) -> None:
    """Given a finished job, its status links artifacts served with safe headers."""
    job_id = client.post("/api/preview/job", json=payload()).get_json()["jobId"]
    run_jobs(app)
    status = client.get(f"/api/preview/job/{job_id}").get_json()
    assert status["status"] == "finished"
    links = {item["name"]: item["url"] for item in status["result"]["artifacts"]}
    with app.test_client().get(links["index.html"]) as page:  # the link is the credential
        assert page.status_code == 200 and page.mimetype == "text/html"
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        assert "script-src 'none'" in page.headers["Content-Security-Policy"]
        assert b"<h1" in page.data
    with app.test_client().get(links["thumbnail.png"]) as image:
        assert image.mimetype == "image/png" and image.data.startswith(b"\x89PNG")
    tampered = links["index.html"].replace("index.html", "thumbnail.png")
    assert_envelope(app.test_client().get(tampered), 403, "forbidden")
    assert_envelope(app.test_client().get(links["index.html"][:-3] + "abc"), 403, "forbidden")


@pytest.mark.both_stores
def test_expired_artifact_links_are_refused(
    make_app: AppMaker, redis_client: redis.Redis
) -> None:
    """Given PREVIEW_ARTIFACT_URL_TTL=1, a link older than a second gets 403."""
    app = make_app(PREVIEW_API_TOKENS=TOKEN, PREVIEW_ARTIFACT_URL_TTL="1")
    settings = preview_of(app).settings
    job_id = queueing.submit(redis_client, settings, payload()).job_id
    run_jobs(app)
    status = app.test_client().get(f"/api/preview/job/{job_id}", headers=AUTH).get_json()
    link = status["result"]["artifacts"][0]["url"]
    with app.test_client().get(link) as fresh:
        assert fresh.status_code == 200
    time.sleep(2.1)
    assert_envelope(app.test_client().get(link), 403, "forbidden")


def test_dead_letters_over_http(client: FlaskClient, app: Flask) -> None:
    """Given a job the worker refuses, the DLQ lists it, requeues it and purges it."""
    shared = preview_of(app)
    bad = queueing.submit(shared.connection, shared.settings, payload(tutorialId="Bad")).job_id
    run_jobs(app)
    letters = client.get("/api/preview/dlq").get_json()
    assert letters["count"] == 1 and letters["jobs"][0]["jobId"] == bad
    assert client.post(f"/api/preview/dlq/{bad}/requeue").get_json()["status"] == "queued"
    run_jobs(app)
    assert client.delete(f"/api/preview/dlq/{bad}").get_json()["status"] == "purged"
    assert client.get("/api/preview/dlq").get_json()["count"] == 0


def test_flask_errors_and_crashes_answer_the_envelope(app: Flask, client: FlaskClient) -> None:
    """Given an unknown path, a wrong method and a crashing view, each answers the envelope."""

    def boom() -> str:
        raise RuntimeError("secret internals")

    app.add_url_rule("/boom", view_func=boom)
    assert_envelope(client.get("/api/preview/nothing-here"), 404, "not_found")
    wrong = client.put("/api/preview/job")
    assert_envelope(wrong, 405, "method_not_allowed")
    assert "POST" in wrong.headers["Allow"]
    crashed = assert_envelope(client.get("/boom"), 500, "internal_error")
    assert "secret internals" not in json.dumps(crashed)


def test_dashboard_is_behind_auth_and_refuses_unsafe_writes(client: FlaskClient) -> None:
    """Given the token, the dashboard opens; its GET requeue and cross-site POSTs are refused."""
    assert client.get("/rq/").status_code == 200
    assert_envelope(client.get("/rq/requeue/normal"), 405, "method_not_allowed")
    cross = client.post("/rq/requeue/normal", headers={"Origin": "https://evil.example"})
    assert_envelope(cross, 403, "forbidden")


def test_dashboard_requeue_of_a_job_that_is_gone_answers_404(client: FlaskClient) -> None:
    """Given a job id no longer in Redis, the dashboard's requeue answers 404, not 500."""
    gone = client.post("/rq/job/no-such-job/requeue", headers={"Origin": "http://localhost"})
    assert_envelope(gone, 404, "not_found")


def test_a_redis_command_error_is_a_500_not_an_unreachable_redis(client: FlaskClient) -> None:
    """Given Redis refusing a command, the answer is 500: only a lost connection is 503."""
    app = client.application

    def refused() -> str:
        raise redis.ResponseError("WRONGTYPE Operation against a key holding the wrong value")

    app.add_url_rule("/refused", view_func=refused)
    assert_envelope(client.get("/refused"), 500, "internal_error")


def test_production_without_tokens_refuses_to_start(make_app: AppMaker) -> None:
    """Given PREVIEW_ENV=production and no token or key, the app is not built."""
    with pytest.raises(SettingsError, match="PREVIEW_API_TOKENS and PREVIEW_SIGNING_KEY"):
        make_app(PREVIEW_ENV="production")


def test_prometheus_text_counts_outcomes(client: FlaskClient, app: Flask) -> None:
    """Given a finished job, /metrics shows it with the HTTP metrics beside it."""
    client.post("/api/preview/job", json=load_payload("preview_payload_minimal.json"))
    run_jobs(app)
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'preview_jobs_total{outcome="succeeded",queue="normal"} 1.0' in text
    assert "flask_http_request_total" in text


@pytest.mark.both_stores
def test_every_answer_matches_the_openapi_description(client: FlaskClient, app: Flask) -> None:
    """Given calls that reach every path and most answers, each answer fits the description."""
    from openapi_core import OpenAPI
    from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
    from werkzeug.test import EnvironBuilder

    document = client.get("/api/preview/openapi.json").get_json()
    spec = OpenAPI.from_dict(document)
    job_id = client.post("/api/preview/job", json=payload()).get_json()["jobId"]
    shared = preview_of(app)
    bad = queueing.submit(shared.connection, shared.settings, payload(tutorialId="Bad")).job_id
    answers = [
        client.post("/api/preview/job", json=payload()),
        client.post("/api/preview/job", json=payload(revision=5)),
        client.post("/api/preview/job?dryRun=true", json=payload(revision=3)),
        client.post("/api/preview/job", json={"tutorialId": 1}),
        client.post("/api/preview/job", data=b"{", content_type="application/json"),
        client.get(f"/api/preview/job/{job_id}"),
        client.get("/api/preview/job/none/status"),
        client.get("/api/preview/worker/health"),
        client.get("/api/preview/metrics"),
    ]
    run_jobs(app)
    status = client.get(f"/api/preview/job/{job_id}")
    link = status.get_json()["result"]["artifacts"][0]["url"]
    answers += [
        status,
        client.get(link),
        client.get(link.replace("token=", "token=x")),
        client.get("/api/preview/dlq"),
        client.post(f"/api/preview/dlq/{bad}/requeue"),
        client.delete(f"/api/preview/dlq/{job_id}"),
        client.delete(f"/api/preview/job/{job_id}"),
        app.test_client().get("/api/preview/dlq"),
    ]
    seen = set()
    for response in answers:
        response.get_data()  # read it whole first: openapi-core would drop a stream's close
        sent = response.request  # its body was read by the app: describe the call afresh
        call = EnvironBuilder(
            path=sent.path, method=sent.method, query_string=sent.query_string.decode()
        ).get_request()
        spec.validate_response(WerkzeugOpenAPIRequest(call), WerkzeugOpenAPIResponse(response))
        response.close()
        seen.add(response.status_code)
    assert {200, 202, 400, 401, 403, 404, 409, 422} <= seen


def test_the_description_asks_for_a_token_exactly_where_the_api_does(app: Flask) -> None:
    """Given no token, the calls whose description requires one answer 401, and only those."""
    # Found by the fuzz test: the description asked every call for the token, yet the
    # probes answer without one and artifacts take a signed link instead.
    document = openapi_document()
    anonymous = app.test_client()
    for template, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            security = operation.get("security", document["security"])
            required = bool(security) and {} not in security  # {}: the token is optional
            path = template.format(job_id="some-job", digest="0" * 64, name="index.html")
            response = anonymous.open(path, method=method.upper(), json=payload())
            assert (response.status_code == 401) == required, f"{method.upper()} {template}"


@pytest.mark.both_stores
def test_artifacts_are_served_from_the_store_under_test(
    app: Flask, store_under_test: ObjectStore | None
) -> None:
    """The object-store run (PREVIEW_TEST_STORE=s3) serves from its bucket, the other from files."""
    store = preview_of(app).store
    if store_under_test is None:
        assert isinstance(store, FileStore)
    else:
        assert isinstance(store, S3Store) and store.bucket == store_under_test.bucket


@pytest.mark.both_stores
def test_an_artifact_is_streamed_not_read_whole(app: Flask) -> None:
    """Given a 32 MiB stored page, serving it holds a few blocks in memory, not the file."""
    import tracemalloc

    shared = preview_of(app)
    digest = "ab" * 32
    page = b"<p>" + b"x" * (32 << 20) + b"</p>"
    shared.store.put(digest, {"index.html": page, "manifest.json": b"{}"})
    link = shared.signer.url(digest, "index.html")
    tracemalloc.start()
    try:
        with app.test_client().get(link, buffered=False) as response:
            assert response.status_code == 200
            assert response.content_length == len(page)
            received = sum(len(block) for block in response.response)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert received == len(page)
    assert peak < 4 << 20, f"serving held {peak >> 20} MiB"


def dead_letter_one(app: Flask) -> str:
    """Dead-letter one job through a real worker in this process; return its id."""
    shared = preview_of(app)
    job_id = queueing.submit(shared.connection, shared.settings, payload(tutorialId="Bad")).job_id
    run_jobs(app)
    return job_id


def test_head_on_the_dashboards_requeue_is_refused_like_get(
    client: FlaskClient, app: Flask
) -> None:
    """Given a dead letter, HEAD /rq/requeue/normal answers 405 and requeues nothing."""
    job_id = dead_letter_one(app)
    assert client.head("/rq/requeue/normal").status_code == 405
    assert queueing.job_status(preview_of(app).connection, job_id)["deadLettered"]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_dashboard_writes_come_only_from_allowed_origins(
    client: FlaskClient, app: Flask, method: str
) -> None:
    """Given every unsafe method, the Origin must be listed; the request's own Host counts for
    nothing (a rebound DNS name sends a matching Host and Origin)."""
    job_id = dead_letter_one(app)
    path = "/rq/requeue/normal"
    refused = [
        {},  # no Origin, no Referer
        {"Origin": "null"},
        {"Origin": "https://evil.example"},
        {"Origin": "http://evil.example", "Host": "evil.example"},  # DNS rebinding
        {"Referer": "http://evil.example/rq/"},
        {"Origin": "http://localhost.evil.example"},
    ]
    for headers in refused:
        answer = client.open(path, method=method, headers=headers)
        assert_envelope(answer, 403, "forbidden")
    assert queueing.job_status(preview_of(app).connection, job_id)["deadLettered"]
    if method == "POST":
        allowed = client.post(path, headers={"Referer": "http://localhost/rq/0/view/jobs"})
        assert allowed.status_code == 200 and allowed.get_json()["count"] == 1


def test_no_allowed_origin_means_no_dashboard_write(make_app: AppMaker) -> None:
    """Given PREVIEW_ALLOWED_ORIGINS empty, even the app's own origin cannot write."""
    client = make_app(PREVIEW_API_TOKENS=TOKEN, PREVIEW_ALLOWED_ORIGINS="").test_client()
    answer = client.post("/rq/requeue/normal", headers={**AUTH, "Origin": "http://localhost"})
    assert_envelope(answer, 403, "forbidden")
    assert client.get("/rq/", headers=AUTH).status_code == 200  # reading stays open


@pytest.mark.parametrize(
    "path", ["/rq/queue/missing/compact", "/rq/queue/missing/failed/empty", "/rq/requeue/missing"]
)
def test_dashboard_actions_on_a_queue_not_ours_are_404(client: FlaskClient, path: str) -> None:
    """Given a queue name that is not one of ours, the dashboard's action answers 404."""
    answer = client.post(path, headers={"Origin": "http://localhost"})
    assert_envelope(answer, 404, "not_found")


def test_an_invalid_payload_lists_its_first_hundred_problems(client: FlaskClient) -> None:
    """Given 80,000 unknown fields, the 422 lists 100 problems and says how many more."""
    body = payload(**{f"x{number}": 1 for number in range(80_000)})  # just under 1 MiB
    answer = client.post("/api/preview/job", json=body)
    envelope = assert_envelope(answer, 422, "invalid_payload")
    assert len(envelope["details"]) == 100 and envelope["moreProblems"] == 79_900
    assert "80000 problems, the first 100 listed" in envelope["message"]
    few = assert_envelope(client.post("/api/preview/job", json=payload(tutorialId="A")), 422,
                          "invalid_payload")
    assert few["moreProblems"] == 0 and len(few["details"]) == 1


@pytest.mark.both_stores
def test_every_content_type_names_its_charset_once(client: FlaskClient, app: Flask) -> None:
    """Artifacts, Prometheus text and JSON answers carry one charset at most, as sent."""
    shared = preview_of(app)
    digest = "cd" * 32
    shared.store.put(digest, {"index.html": b"<p>x</p>", "manifest.json": b"{}"})
    with client.get(shared.signer.url(digest, "index.html")) as page:
        assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    with client.get("/metrics") as scraped:
        assert scraped.headers["Content-Type"] == "text/plain; version=1.0.0; charset=utf-8"
    for path in ("/api/preview/metrics", "/api/preview/worker/health", "/api/preview/dlq"):
        with client.get(path) as answer:
            assert answer.headers["Content-Type"].count("charset") <= 1, path


def test_the_payloads_request_id_correlates_when_no_header_does(
    client: FlaskClient, app: Flask
) -> None:
    """Given requestId in the payload and no X-Request-ID, the payload's id is the request's."""
    answer = client.post("/api/preview/job", json=payload(requestId="editor-42", revision=61))
    assert answer.status_code == 202 and answer.headers["X-Request-ID"] == "editor-42"
    status = queueing.job_status(preview_of(app).connection, answer.get_json()["jobId"])
    assert status["requestId"] == "editor-42"
    headed = client.post("/api/preview/job", json=payload(requestId="editor-43", revision=62),
                         headers={"X-Request-ID": "header-wins"})
    assert headed.headers["X-Request-ID"] == "header-wins"
    invalid = client.post("/api/preview/job", json=payload(requestId="bad id", revision=63))
    assert invalid.status_code == 422 and invalid.headers["X-Request-ID"] != "bad id"


@pytest.mark.parametrize(
    ("setting", "ancestors"),
    [("", "'none'"), ("https://editor.example.com 'self'", "https://editor.example.com 'self'")],
)
@pytest.mark.both_stores
def test_who_may_frame_an_artifact_is_a_setting(
    make_app: AppMaker, setting: str, ancestors: str
) -> None:
    """Given PREVIEW_FRAME_ANCESTORS (none by default), the artifact's CSP lets those frame it."""
    app = make_app(PREVIEW_FRAME_ANCESTORS=setting)
    shared = preview_of(app)
    shared.store.put("ef" * 32, {"index.html": b"<p>x</p>", "manifest.json": b"{}"})
    with app.test_client().get(shared.signer.url("ef" * 32, "index.html")) as page:
        policy = page.headers["Content-Security-Policy"]
    assert policy.endswith(f"frame-ancestors {ancestors}")
    assert "default-src 'none'" in policy and "script-src 'none'" in policy


def test_an_idempotency_key_reused_for_other_content_is_a_conflict(
    client: FlaskClient, app: Flask
) -> None:
    """Given a key's job, other content under the same key is a 409 naming it; the same is 200."""
    first = client.post("/api/preview/job", json=payload(idempotencyKey="edit-7"))
    assert first.status_code == 202
    same = client.post("/api/preview/job", json=payload(idempotencyKey="edit-7", priority="high"))
    assert same.status_code == 200 and same.get_json()["duplicate"] is True
    edited = payload(idempotencyKey="edit-7")
    edited["content"] = {**edited["content"], "title": "An edit that must not be lost"}
    conflict = assert_envelope(client.post("/api/preview/job", json=edited), 409,
                               "idempotency_conflict")
    assert conflict["jobId"] == "edit-7"
    assert queued(preview_of(app).connection, preview_of(app).settings) == 1
    fresh = client.post("/api/preview/job", json={**edited, "idempotencyKey": "edit-8"})
    assert fresh.status_code == 202


def test_the_dashboard_knows_our_three_queues_before_any_job(
    client: FlaskClient, app: Flask
) -> None:
    """Given an empty Redis, the dashboard lists high, normal and low; its Jobs tab opens on
    normal, not on RQ's default; its icon is served to a browser without credentials."""
    listed = client.get("/rq/0/data/queues.json").get_json()
    assert sorted(queue["name"] for queue in listed["queues"]) == ["high", "low", "normal"]
    jobs = client.get("/rq/0/view/jobs")
    assert jobs.status_code == 302
    assert jobs.headers["Location"].endswith("/rq/0/view/jobs/normal/queued/8/asc/1")
    assert client.get(jobs.headers["Location"]).status_code == 200
    with app.test_client().get("/static/favicon.ico") as icon:  # no token at all
        assert icon.status_code == 200 and icon.data[:4] == b"\x00\x00\x01\x00"
