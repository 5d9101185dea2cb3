"""Security with real parts: auth, secrets out of logs and answers, hostile paths, signatures.

Already covered elsewhere, so not repeated here: a missing or wrong token on POST /job,
GET /dlq and /rq/, closed probes, the dashboard's GET requeue and cross-site POST, unknown
job ids (a plain one, "..%2F..%2Fetc", 400 characters) on status, cancel, requeue and purge,
a tampered artifact name or signature and an expired link, the production start-up check
(tests/test_api.py); health hiding the password of an unreachable Redis (tests/test_health.py);
a bad REDIS_URL port hiding "user:password" and redact_url's plain forms
(tests/test_settings.py); bad hashes and file names refused by FileStore.path_of
and read_artifact (tests/test_previews_store.py).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
import redis
from flask import Flask
from itsdangerous import URLSafeTimedSerializer
from rq import SimpleWorker

from preview_worker import queueing
from preview_worker.embedded_redis import EmbeddedRedis
from preview_worker.previews import store_preview
from preview_worker.settings import SettingsError, load_settings
from preview_worker.signing import DEVELOPMENT_SIGNING_KEY, SALT, ArtifactSigner
from preview_worker.store import FileStore
from preview_worker.web.shared import preview_of

from .conftest import AppMaker, payload, service_environment
from .processes import BIN, serving, start_worker, stop, wait_until

TOKENS = ("security-token-first-0123456789", "security-token-second-9876543210")
WRONG = "wrong-token-never-valid-5555555555"
SIGNING_KEY = "security-signing-key-never-logged-4f1c"
REDIS_PASSWORD = "redis-pass-never-shown-7d2e"
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
# One <converter:name> or <name> placeholder of a werkzeug rule.
ARGUMENT = re.compile(r"<(?:(?P<converter>[^:<>]+):)?(?P<name>[^<>]+)>")
ARTIFACTS = "/api/preview/artifacts/"


@dataclass
class Answer:
    """One HTTP answer as read off the socket."""

    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        """Return the body parsed as JSON."""
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    target: str,
    headers: Mapping[str, str] | None = None,
    body: Any = None,
) -> Answer:
    """Send one HTTP/1.1 request with the target exactly as given: no client cleans it up."""
    data = b"" if body is None else json.dumps(body).encode()
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body is not None:
        lines.append("Content-Type: application/json")
    lines.append(f"Content-Length: {len(data)}")
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall("\r\n".join([*lines, "", ""]).encode("latin-1") + data)
        received = b"".join(iter(lambda: sock.recv(65536), b""))
    head, _, content = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields = (line.partition(":") for line in header_lines)
    return Answer(
        int(status_line.split()[1]),
        {name.strip().lower(): value.strip() for name, _, value in fields},
        content,
    )


def bearer(token: str) -> dict[str, str]:
    """Return the Authorization header of a bearer token."""
    return {"Authorization": f"Bearer {token}"}


def basic(user: str, password: str = "") -> str:
    """Return a Basic Authorization value, as `curl -u user:password` sends it."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def assert_envelope(status: int, body: bytes, request_id: str | None) -> dict[str, Any]:
    """Check that an error answer is the JSON envelope with its request id; return it."""
    envelope: dict[str, Any] = json.loads(body)
    assert isinstance(envelope["error"], str) and envelope["message"], (status, envelope)
    assert envelope["requestId"] and envelope["requestId"] == request_id, envelope
    return envelope


@contextlib.contextmanager
def serving_on_port(environment: Mapping[str, str], log: Path) -> Iterator[int]:
    """Run the server (one process) with its output logged; yield its port for raw requests."""
    with serving(environment, 1, log) as base:
        yield int(base.rpartition(":")[2])


@contextlib.contextmanager
def working(environment: Mapping[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run `preview-worker worker` (one worker, with the scheduler) with its output logged."""
    worker = start_worker(environment, "--concurrency", "1", log=log)
    try:
        yield worker
    finally:
        stop(worker)


def cli(environment: Mapping[str, str], *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run one `preview-worker` command to its end; return what it printed and its exit code."""
    return subprocess.run(
        [str(BIN / "preview-worker"), *arguments],
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        timeout=60,
    )


def lines_with(text: str, secret: str) -> list[str]:
    """Return the lines of a text that hold a secret, for a failure message."""
    return [line for line in text.splitlines() if secret in line]


def finished_job(port: int, token: str, request_id: str) -> dict[str, Any]:
    """Submit the minimal payload and wait until a worker has finished it; return its status."""
    headers = {**bearer(token), "X-Request-ID": request_id}
    submitted = request(port, "POST", "/api/preview/job", headers, payload())
    assert submitted.status == 202, submitted.body
    path = f"/api/preview/job/{submitted.json()['jobId']}"
    wait_until(
        lambda: request(port, "GET", path, bearer(token)).json()["status"] == "finished",
        60,
        "the job to finish",
    )
    status: dict[str, Any] = request(port, "GET", path, bearer(token)).json()
    return status


# 1. Auth on every mutating route and every dashboard route, from the app's own url_map.


@pytest.fixture
def guarded_app(make_app: AppMaker, worker_environment: None) -> Flask:
    """Give a test application with two tokens on the empty test Redis."""
    return make_app(PREVIEW_API_TOKENS=",".join(TOKENS))


def guarded_calls(app: Flask, queued: str, dead: str) -> list[tuple[str, str]]:
    """Return (method, path) of every mutating rule and every /rq rule, arguments filled in."""
    calls = []
    for rule in app.url_map.iter_rules():
        methods = set(rule.methods or ()) - {"HEAD", "OPTIONS"}
        if not rule.rule.startswith("/rq"):
            methods &= MUTATING
        # Real job ids, so that a call which got past auth would cancel, requeue or delete.
        values = {
            "job_id": queued if rule.rule.startswith("/api/preview/job/") else dead,
            "queue_name": "normal",
            "registry_name": "failed",
            "order": "asc",
            "filename": "favicon.ico",
        }

        def fill(match: re.Match[str], values: dict[str, str] = values) -> str:
            """Put a sample value in place of one argument."""
            if match["converter"] == "int":
                return "0" if match["name"] == "instance_number" else "1"
            return values.get(match["name"], "1")

        path = ARGUMENT.sub(fill, rule.rule)
        calls += [(method, path) for method in sorted(methods)]
    return calls


def snapshot(client: redis.Redis) -> dict[Any, Any]:
    """Return every key of the database with its serialized value."""
    return {key: client.dump(key) for key in sorted(client.keys("*"))}


def test_every_guarded_route_refuses_missing_and_wrong_tokens_and_changes_nothing(
    guarded_app: Flask, redis_client: redis.Redis
) -> None:
    """Given a queued and a dead-lettered job, no guarded call without the token touches Redis."""
    shared = preview_of(guarded_app)
    dead = queueing.submit(redis_client, shared.settings, payload(tutorialId="Bad")).job_id
    SimpleWorker(queueing.queues(redis_client, shared.settings), connection=redis_client).work(
        burst=True
    )
    queued = queueing.submit(redis_client, shared.settings, payload(revision=7)).job_id
    calls = guarded_calls(guarded_app, queued, dead)
    # The derivation itself must find the routes we know of, or it could find none at all.
    assert {
        ("POST", "/api/preview/job"),
        ("DELETE", f"/api/preview/job/{queued}"),
        ("POST", f"/api/preview/dlq/{dead}/requeue"),
        ("DELETE", f"/api/preview/dlq/{dead}"),
        ("GET", "/rq/"),
        ("POST", f"/rq/job/{dead}/delete"),
    } <= set(calls)
    before = snapshot(redis_client)
    refused = [
        {},
        bearer(WRONG),
        bearer(TOKENS[0][:-1]),  # a prefix of a real token
        {"Authorization": f"Basic {TOKENS[0]}"},  # a real token under another scheme
        {"Authorization": TOKENS[1]},  # a real token with no scheme at all
        {"Authorization": basic("ops", WRONG)},  # the dashboard's Basic, a wrong password
        {"Authorization": basic(TOKENS[0], "")},  # a real token as the user name
    ]
    client = guarded_app.test_client()
    # Same-origin, so that the dashboard's CSRF guard could not be what stops a write.
    origin = {"Origin": "http://localhost"}
    failures = []
    for method, path in calls:
        for headers in refused:
            sent = {**headers, **origin, "X-Request-ID": "auth-check"}
            with client.open(path, method=method, headers=sent, json=payload(revision=9)) as got:
                challenge = got.headers.get("WWW-Authenticate", "")
                # The dashboard asks a browser for Basic; the API asks for a bearer token.
                wanted = "Basic" if path.startswith("/rq/") else "Bearer"
                if got.status_code != 401 or not challenge.startswith(wanted):
                    failures.append(f"{method} {path} {headers}: {got.status_code}")
                    continue
                assert assert_envelope(401, got.data, "auth-check")["error"] == "unauthorized"
    assert failures == []
    assert snapshot(redis_client) == before
    # The same calls with a token do get past auth, so the 401s above were the token's doing.
    passed = []
    for method, path in calls:
        with client.open(path, method=method, headers={**bearer(TOKENS[1]), **origin}) as got:
            passed.append(got.status_code)
    assert 401 not in passed
    assert snapshot(redis_client) != before


# 2. Tokens and the signing key never reach a log line.


def test_tokens_and_signing_key_never_reach_the_logs(tmp_path: Path, data_dir: Path) -> None:
    """Given the server and a worker logging at DEBUG, no token nor the signing key is logged."""
    log = tmp_path / "service.log"
    server = EmbeddedRedis().start()
    environment = service_environment(
        server.url,
        data_dir,
        PREVIEW_API_TOKENS=",".join(TOKENS),
        PREVIEW_SIGNING_KEY=SIGNING_KEY,
        PREVIEW_LOG_LEVEL="DEBUG",
    )
    try:
        with serving_on_port(environment, log) as port, working(environment, log):
            status = finished_job(port, TOKENS[0], "sec-authorised")
            link = status["result"]["artifacts"][0]["url"]
            assert request(port, "GET", link).status == 200
            assert request(port, "GET", "/rq/", bearer(TOKENS[1])).status == 200
            signature = link.partition("?token=")[2]
            refused = [
                ("GET", "/api/preview/dlq", bearer(WRONG)),
                ("POST", "/api/preview/job", bearer(WRONG)),
                ("GET", "/api/preview/dlq", {"Authorization": "Bearer"}),
                ("GET", "/api/preview/dlq", {"Authorization": f"Bearer {WRONG} {TOKENS[0]}"}),
                ("GET", "/api/preview/dlq", {"Authorization": TOKENS[0]}),
                ("GET", "/api/preview/dlq", {"Authorization": basic(TOKENS[0])}),
                ("GET", "/api/preview/dlq", {"Authorization": basic("ops", TOKENS[1])}),
                ("GET", "/api/preview/dlq", {"Authorization": basic(WRONG)}),
                ("GET", f"/api/preview/dlq?token={TOKENS[0]}", {}),
                ("GET", f"/api/preview/dlq?access_token={WRONG}", {}),
                ("GET", f"{link.partition('?')[0]}?token={TOKENS[1]}", {}),
            ]
            for method, target, headers in refused:
                answer = request(port, method, target, headers, payload(revision=3))
                assert answer.status in (401, 403), (target, headers, answer.status)
            erring = [
                ("POST", "/api/preview/job", {"tutorialId": "Not Valid"}, 422),
                ("PUT", "/api/preview/job", payload(), 405),
            ]
            for method, target, body, expected in erring:
                assert request(port, method, target, bearer(TOKENS[0]), body).status == expected
            # A request line the server cannot parse: it may log the line, query and all.
            unparsable = f"/api/preview/dlq?token={TOKENS[0]}\x01"
            assert request(port, "GET", unparsable, bearer(TOKENS[0])).status == 400
            server.stop()  # from here on, every call that reaches Redis fails
            down = request(port, "POST", "/api/preview/job", bearer(TOKENS[1]), payload())
            assert down.status == 503
            job_path = f"/api/preview/job/{status['jobId']}"
            assert request(port, "GET", job_path, bearer(TOKENS[0])).status == 503
            assert request(port, "GET", "/api/preview/worker/health").status == 503
            time.sleep(1)  # time for the worker to log its own complaints about the lost Redis
    finally:
        server.stop()
    text = log.read_text("utf-8", errors="replace")
    # The capture must hold what we did, or an empty log would pass.
    logged = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(line.get("requestId") == "sec-authorised" and line.get("jobId") for line in logged)
    assert any("Redis is unreachable" in line["message"] for line in logged)
    assert any(line.get("method") == "GET" and line.get("path") == "/api/preview/dlq"
               and line.get("status") == 401 and line.get("requestId") for line in logged)
    secrets = {
        "first token": TOKENS[0],
        "second token": TOKENS[1],
        "wrong token": WRONG,
        "signing key": SIGNING_KEY,
        "artifact signature": signature,
        "Basic credentials": basic(TOKENS[0]).split()[1],
    }
    leaks = {name: lines_with(text, secret) for name, secret in secrets.items()}
    assert {name: found for name, found in leaks.items() if found} == {}


# 3. A Redis password is never logged nor shown.


@pytest.fixture
def guarded_redis() -> Iterator[EmbeddedRedis]:
    """Give a real Redis of this test's own that requires a password."""
    with EmbeddedRedis(password=REDIS_PASSWORD) as server:
        yield server


def test_redis_password_is_never_logged_nor_shown(
    guarded_redis: EmbeddedRedis, tmp_path: Path, data_dir: Path
) -> None:
    """Given REDIS_URL with a password, logs, health, dashboard and CLI never show it."""
    assert f":{REDIS_PASSWORD}@" in guarded_redis.url
    log = tmp_path / "service.log"
    environment = service_environment(
        guarded_redis.url, data_dir, PREVIEW_API_TOKENS=TOKENS[0], PREVIEW_LOG_LEVEL="DEBUG"
    )
    wrong = {**environment, "REDIS_URL": guarded_redis.url.replace(REDIS_PASSWORD, WRONG)}
    with serving_on_port(environment, log) as port, working(environment, log):
        wait_until(
            lambda: request(port, "GET", "/api/preview/worker/health").status == 200,
            30,
            "a healthy service",
        )
        finished_job(port, TOKENS[0], "sec-password")
        shown = {
            path: request(port, "GET", path, bearer(TOKENS[0]))
            for path in (
                "/api/preview/worker/health",
                "/api/preview/metrics",
                "/metrics",
                "/rq/",
                "/rq/0/data/workers.json",
                "/rq/0/data/queues.json",
            )
        }
        healthy = cli(environment, "health")
    assert {path: answer.status for path, answer in shown.items()} == dict.fromkeys(shown, 200)
    health = shown["/api/preview/worker/health"].json()
    assert health["redis"]["url"] == f"redis://:***@127.0.0.1:{guarded_redis.port}/0"
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert json.loads(healthy.stdout)["redis"]["url"] == health["redis"]["url"]
    # With a wrong password, every command says so in its own words, the password unsaid.
    refused = {
        "health": cli(wrong, "health"),
        "status": cli(wrong, "status", "some-job"),
        "worker": cli(wrong, "worker", "--burst", "--concurrency", "1"),
    }
    assert refused["health"].returncode == 1
    report = json.loads(refused["health"].stdout)["redis"]
    assert report["ok"] is False and "invalid username-password" in report["error"]
    assert "Redis is unreachable" in refused["status"].stderr
    assert refused["worker"].returncode == 1
    assert "Redis is unreachable: invalid username-password" in refused["worker"].stderr
    assert "Traceback" not in refused["worker"].stderr
    outputs = {
        "service log": log.read_text("utf-8", errors="replace"),
        **{path: answer.body.decode() for path, answer in shown.items()},
        "health command": healthy.stdout + healthy.stderr,
        **{
            f"{name} command, wrong password": done.stdout + done.stderr
            for name, done in refused.items()
        },
    }
    assert '"path": "/rq/", "status": 200' in outputs["service log"]  # the capture is real
    for secret in (REDIS_PASSWORD, WRONG):
        leaks = {where: lines_with(text, secret) for where, text in outputs.items()}
        assert {where: found for where, found in leaks.items() if found} == {}


@pytest.mark.parametrize(
    "url",
    [
        "redis://:{password}@127.0.0.1:{port}/0",
        "redis://default:{password}@127.0.0.1:{port}/0",
        "redis://127.0.0.1:{port}/0?password={password}",
    ],
    ids=["password only", "user and password", "password as a query argument"],
)
def test_health_names_redis_without_its_password(
    guarded_redis: EmbeddedRedis, make_app: AppMaker, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Given any URL form redis-py takes a password in, health and dashboard never show it."""
    for password, healthy in ((REDIS_PASSWORD, True), (WRONG, False)):
        given = url.format(password=password, port=guarded_redis.port)
        app = make_app(REDIS_URL=given, PREVIEW_API_TOKENS=TOKENS[0])
        health = app.test_client().get("/api/preview/worker/health")
        submitted = app.test_client().post(
            "/api/preview/job", json=payload(), headers=bearer(TOKENS[0])
        )
        dashboard = app.test_client().get("/rq/", headers=bearer(TOKENS[0]))
        report = health.get_json()["redis"]
        assert report["ok"] is healthy and (report["error"] is None) is healthy
        assert submitted.status_code == (202 if healthy else 503)
        # A wrong password gets rq-dashboard's own "Connection Error" page, with no URL on it.
        assert dashboard.status_code == 200 and (b"rq-instances" in dashboard.data) is healthy
        shown = [answer.get_data(as_text=True) for answer in (health, submitted, dashboard)]
        assert password not in "".join(shown)
    assert REDIS_PASSWORD not in caplog.text and WRONG not in caplog.text


@pytest.mark.parametrize(
    "url",
    [
        "http://:{password}@cache.internal:6379/0",  # a wrong scheme
        "redis://:{password}@/0",  # no host
        "redis://cache.internal:port/0?password={password}",  # a bad port, password in query
        "redis://:pass/{password}@cache.internal:6379/0",  # an unencoded '/' in the password
        "redis://:pass#{password}@cache.internal:6379/0",  # an unencoded '#'
        "redis://:pass?{password}@cache.internal:6379/0",  # an unencoded '?'
    ],
)
def test_a_bad_redis_url_is_refused_without_its_password(url: str) -> None:
    """Given a bad REDIS_URL holding a password, the error names the URL but not the password."""
    with pytest.raises(SettingsError, match="^REDIS_URL ") as raised:
        load_settings({"REDIS_URL": url.format(password=REDIS_PASSWORD)})
    assert REDIS_PASSWORD not in str(raised.value) and "***" in str(raised.value)


def test_the_command_line_refuses_a_bad_redis_url_without_its_password() -> None:
    """Given a REDIS_URL whose password holds an unencoded '/', the one error line hides it."""
    done = cli({"REDIS_URL": f"redis://:pass/{REDIS_PASSWORD}@127.0.0.1:6379/0"}, "health")
    assert done.returncode == 2 and "REDIS_URL" in done.stderr
    assert REDIS_PASSWORD not in done.stdout + done.stderr


# 4. Hostile artifact paths and job ids: 4xx with the envelope, nothing from outside the store.

SECRET = f"planted-secret-{uuid.uuid4().hex}"


def hostile_artifact_paths(digest: str, outside: Path) -> list[str]:
    """Return artifact request targets that try to leave the store, as sent on the wire."""
    absolute = str(outside)
    return [
        f"{ARTIFACTS}../../secret.txt",
        f"{ARTIFACTS}../index.html",
        f"{ARTIFACTS}{digest}/..",
        f"{ARTIFACTS}{digest}/../../../secret.txt",
        f"{ARTIFACTS}{digest}/..%2f..%2f..%2fsecret.txt",
        f"{ARTIFACTS}{digest}/%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt",
        f"{ARTIFACTS}%2e%2e%2f%2e%2e%2fsecret.txt/index.html",
        f"{ARTIFACTS}%2e%2e/secret.txt",
        f"{ARTIFACTS}{digest}/%252e%252e%252f%252e%252e%252fsecret.txt",
        f"{ARTIFACTS}{digest}%252f..%252f..%252fsecret.txt/index.html",
        f"{ARTIFACTS}{digest}/{quote(absolute, safe='')}",
        f"{ARTIFACTS}{digest}/{absolute}",
        f"{ARTIFACTS}/{absolute}",
        f"{ARTIFACTS}/etc/passwd",
        f"{ARTIFACTS}{digest}//secret.txt",
        f"{ARTIFACTS}{digest}/..\\..\\..\\secret.txt",
        f"{ARTIFACTS}{digest}/..%5c..%5c..%5csecret.txt",
        f"{ARTIFACTS}{digest}/index.html%00",
        f"{ARTIFACTS}{digest}/secret.txt%00index.html",
        f"{ARTIFACTS}{digest}%00/index.html",
        f"{ARTIFACTS}{'a' * 3000}/index.html",
        f"{ARTIFACTS}{digest}/{'a' * 3000}",
        f"{ARTIFACTS}{digest}/%ef%bc%8e%ef%bc%8e%ef%bc%8fsecret.txt",  # fullwidth ./
        f"{ARTIFACTS}{digest}/%e2%80%a5%2fsecret.txt",  # two dot leader
        f"{ARTIFACTS}{digest}/%c0%ae%c0%ae%c0%afsecret.txt",  # overlong UTF-8 ../
        f"{ARTIFACTS}{digest}/secret.txt",  # a valid hash with a foreign file name
        f"{ARTIFACTS}{digest.upper()}/index.html",
        f"{ARTIFACTS}{digest[:2]}/{digest}",
    ]


HOSTILE_IDS = [
    "..",
    "..%2f..%2fsecret.txt",
    "%2e%2e%2f%2e%2e%2fsecret.txt",
    "%252e%252e%252fsecret.txt",
    "..\\..\\secret.txt",
    "..%5c..%5csecret.txt",
    "%00",
    "job%00id",
    "a" * 3000,
    "%ef%bc%8e%ef%bc%8e%ef%bc%8fsecret.txt",
    "%c0%ae%c0%ae%c0%af",
    "*",
    "rq%3Aqueue%3Anormal",
]


def hostile_job_calls(outside: Path) -> list[tuple[str, str]]:
    """Return (method, target) of every job route with every hostile id."""
    ids = [*HOSTILE_IDS, quote(str(outside), safe="")]
    routes = [
        ("GET", "/api/preview/job/{}"),
        ("GET", "/api/preview/job/{}/status"),
        ("DELETE", "/api/preview/job/{}"),
        ("POST", "/api/preview/dlq/{}/requeue"),
        ("DELETE", "/api/preview/dlq/{}"),
    ]
    calls = [(method, route.format(job_id)) for method, route in routes for job_id in ids]
    # The only routes with a path converter, where '/' inside the argument is routed.
    calls += [
        ("GET", "/static/..%2f..%2fsettings.py"),
        ("GET", f"/rq/static/..%2f..%2f..%2f..%2f{quote(str(outside), safe='')}"),
        ("GET", "/rq/static/../../web.py"),
    ]
    return calls


def signed(signer: ArtifactSigner, target: str) -> str:
    """Return a target with a genuine signature for the digest and name the view will see."""
    digest, _, name = unquote(target[len(ARTIFACTS) :], errors="replace").partition("/")
    return f"{target}?token={signer.token(digest, name)}"


@pytest.mark.file_store  # a secret planted beside DATA_DIR must stay out of reach
def test_hostile_paths_get_a_4xx_envelope_and_nothing_outside_the_store(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, data_dir: Path
) -> None:
    """Given files planted outside the store, no hostile path reaches one or a 5xx."""
    stored = store_preview(FileStore(data_dir), payload())
    outside = tmp_path / "secret.txt"
    for planted in (
        outside,
        data_dir / "secret.txt",
        data_dir / "previews" / "secret.txt",
        data_dir / "previews" / stored.hash[:2] / "secret.txt",
        data_dir / "previews" / stored.hash[:2] / stored.hash / "secret.txt",
    ):
        planted.write_text(SECRET, "utf-8")
    environment = service_environment(
        redis_url, data_dir, PREVIEW_API_TOKENS=TOKENS[0], PREVIEW_SIGNING_KEY=SIGNING_KEY
    )
    signer = ArtifactSigner(SIGNING_KEY, 3600)
    log = tmp_path / "service.log"
    artifacts = hostile_artifact_paths(stored.hash, outside)
    calls = [("GET", target) for target in artifacts]
    calls += [("GET", signed(signer, target)) for target in artifacts]
    calls += hostile_job_calls(outside)
    with serving_on_port(environment, log) as port:
        genuine = request(port, "GET", signed(signer, f"{ARTIFACTS}{stored.hash}/index.html"))
        # With a valid token, so that only the route itself can refuse a job call.
        sent = {**bearer(TOKENS[0]), "X-Request-ID": "hostile"}
        answered = [
            (method, target, request(port, method, target, sent)) for method, target in calls
        ]
        # Past the server's request-target limit, the server refuses before the app.
        too_long = request(port, "GET", f"{ARTIFACTS}{'a' * 5000}/index.html")
    assert genuine.status == 200 and b"<h1" in genuine.body  # the signer and store are real
    bad = [
        (method, target[:150], answer.status, answer.body[:100])
        for method, target, answer in answered
        if not 400 <= answer.status < 500 or answer.status == 401 or SECRET.encode() in answer.body
    ]
    assert bad == []
    for _method, _target, answer in answered:
        assert_envelope(answer.status, answer.body, "hostile")
    assert too_long.status == 414 and SECRET.encode() not in too_long.body
    assert redis_client.keys("rq:job:*") == []


# 5. Artifact signatures: the forgeries tests/test_api.py does not try.


def test_forged_artifact_signatures_are_refused(make_app: AppMaker) -> None:
    """Given a stored preview, only a token signed with the configured key and salt opens it."""
    app = make_app(PREVIEW_API_TOKENS=TOKENS[0], PREVIEW_SIGNING_KEY=SIGNING_KEY)
    client = app.test_client()
    store = preview_of(app).store
    digest = store_preview(store, payload()).hash
    other = store_preview(store, payload(content={**payload()["content"], "title": "Other"})).hash
    assert other != digest
    path = f"{ARTIFACTS}{digest}/index.html"
    genuine = ArtifactSigner(SIGNING_KEY, 3600)
    other_salt = URLSafeTimedSerializer(SIGNING_KEY, salt=f"{SALT}-other")
    forged = {
        "no token": "",
        "an empty token": "?token=",
        "the API token": f"?token={TOKENS[0]}",
        "the development key, public in the source": "?token="
        + ArtifactSigner(DEVELOPMENT_SIGNING_KEY, 3600).token(digest, "index.html"),
        "another key": "?token=" + ArtifactSigner(WRONG, 3600).token(digest, "index.html"),
        "the right key with another salt": "?token="
        + str(other_salt.dumps(f"{digest}/index.html")),
        "another preview's token": "?token=" + genuine.token(other, "index.html"),
    }
    with client.get(f"{path}?token={genuine.token(digest, 'index.html')}") as opened:
        assert opened.status_code == 200  # the genuine link works
    refused = {}
    for name, query in forged.items():
        with client.get(path + query, headers={"X-Request-ID": "forged"}) as response:
            refused[name] = response.status_code
            if response.status_code == 403:
                assert_envelope(403, response.data, "forged")
    assert refused == dict.fromkeys(forged, 403)
