"""Webhooks: allowed hosts, signatures, and deliveries by real workers to a real receiver."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis
import trustme
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.registry import FailedJobRegistry

from preview_worker import keys, queueing, recovery
from preview_worker.embedded_redis import free_port
from preview_worker.errors import WebhookRefused
from preview_worker.observe.figures import read_picture
from preview_worker.observe.prometheus import QueueCollector
from preview_worker.settings import Settings, SettingsError, get_settings, load_settings
from preview_worker.web.openapi import openapi_document
from preview_worker.webhooks import HEADER, sign, verify
from preview_worker.webhooks.delivery import DeliveryFailed, deliver, post
from preview_worker.webhooks.hosts import is_public, parse_url, pinned_address, url_problem

from .conftest import API_TOKEN, ROOT, AppMaker, payload, service_environment
from .processes import running_worker, wait_until

SECRET = "test-webhook-secret-0123456789"


# --- the receiver ---------------------------------------------------------------------------


@dataclass
class Received:
    """One request a receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTP server on loopback that answers its POSTs with the codes given, the last one
    again and again, and keeps every request."""

    codes: list[int]
    requests: list[Received] = field(default_factory=list)
    port: int = 0

    def url(self, path: str = "/hooks/previews?from=tests") -> str:
        """Return a URL of this receiver."""
        return f"http://127.0.0.1:{self.port}{path}"


@contextlib.contextmanager
def receiving(*codes: int, tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    """Run a receiver in a thread for a block, on a free port of 127.0.0.1 (over TLS if given)."""
    receiver = Receiver(list(codes))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            """Keep the request, then answer with the next code."""
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            receiver.requests.append(Received(self.path, dict(self.headers.items()), body))
            code = receiver.codes[min(len(receiver.requests), len(receiver.codes)) - 1]
            self.send_response(code)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            """Keep the test output quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def webhook_environment(
    redis_url: str, data_dir: Path, hosts: str, retries: int = 2
) -> dict[str, str]:
    """Return a worker's environment with webhooks allowed to hosts and quick retries."""
    return service_environment(
        redis_url, data_dir, PREVIEW_WEBHOOK_HOSTS=hosts, PREVIEW_WEBHOOK_SECRET=SECRET,
        PREVIEW_WEBHOOK_RETRY_MAX=str(retries), PREVIEW_WEBHOOK_RETRY_BASE_DELAY="1",
    )


def assert_described(status: dict[str, Any]) -> None:
    """Check a status answer, or a webhook's body, against the OpenAPI JobStatus schema."""
    described = openapi_document()["components"]["schemas"]["JobStatus"]
    jsonschema.Draft202012Validator(described).validate(status)


def deliveries(connection: redis.Redis, job_id: str) -> dict[str, Any]:
    """Return the deliveries of a job's status answer."""
    found: dict[str, Any] = queueing.job_status(connection, job_id)["deliveries"]
    return found


def webhook_counts(connection: redis.Redis, settings: Settings) -> dict[str, int]:
    """Return the webhook attempts counted by outcome, as the JSON metrics give them."""
    counts: dict[str, int] = read_picture(connection, settings).as_dict()["webhooks"]["deliveries"]
    return counts


# --- deliveries by real worker processes ----------------------------------------------------


def test_a_receiver_failing_twice_gets_the_third_attempt_signed(
    redis_client: redis.Redis, redis_url: str, data_dir: Path
) -> None:
    """Given a receiver that answers 500 twice, then 204, When a job with notify finishes,
    Then exactly three signed POSTs arrive, the third delivers, and status and metrics say so."""
    with receiving(500, 500, 204) as receiver:
        environment = webhook_environment(redis_url, data_dir, f"127.0.0.1:{receiver.port}")
        settings = load_settings(environment)
        job_id = queueing.submit(
            redis_client, settings, payload(notify={"url": receiver.url()})
        ).job_id
        with running_worker(environment, "--concurrency", "1"):
            wait_until(lambda: deliveries(redis_client, job_id)["outcome"] == "delivered",
                       40, "the third delivery")
        time.sleep(0.2)
        assert len(receiver.requests) == 3
        last = receiver.requests[-1]
    status = queueing.job_status(redis_client, job_id)
    sent = json.loads(last.body)
    assert_described(sent)
    assert_described(status)
    assert sent["jobId"] == job_id and sent["status"] == "finished"
    assert sent["result"] == status["result"] and sent["result"]["artifactHash"]
    assert "deliveries" not in sent
    assert last.path == "/hooks/previews?from=tests"
    assert last.headers["Content-Type"] == "application/json"
    header = last.headers["Preview-Signature"]
    assert verify(SECRET, header, last.body)
    assert not verify(SECRET, header, last.body.replace(b'"finished"', b'"failed"'))
    # Each attempt is signed anew, and all three are the one delivery.
    assert len({each.headers["Preview-Delivery"] for each in receiver.requests}) == 1
    assert all(verify(SECRET, each.headers["Preview-Signature"], each.body)
               for each in receiver.requests)
    assert status["deliveries"]["attempts"] == 3
    assert status["deliveries"]["lastCode"] == 204
    assert status["deliveries"]["outcome"] == "delivered"
    assert webhook_counts(redis_client, settings) == {
        "delivered": 1, "retried": 2, "failed": 0, "refused": 0
    }
    registry = CollectorRegistry(auto_describe=True)
    registry.register(QueueCollector(lambda: redis_client, settings))
    sample = "preview_webhook_deliveries_total"
    assert registry.get_sample_value(sample, {"outcome": "delivered"}) == 1
    assert registry.get_sample_value(sample, {"outcome": "retried"}) == 2


def test_a_receiver_that_always_fails_lands_the_delivery_in_the_dead_letter_queue(
    redis_client: redis.Redis, redis_url: str, data_dir: Path
) -> None:
    """Given a receiver that always answers 503, When the last retry fails too, Then the
    delivery is in the webhooks queue's failed registry and the status says failed."""
    with receiving(503) as receiver:
        environment = webhook_environment(
            redis_url, data_dir, f"127.0.0.1:{receiver.port}", retries=1
        )
        settings = load_settings(environment)
        job_id = queueing.submit(
            redis_client, settings, payload(notify={"url": receiver.url()})
        ).job_id
        with running_worker(environment, "--concurrency", "1"):
            wait_until(lambda: deliveries(redis_client, job_id)["outcome"] == "failed",
                       40, "the last attempt")
        assert len(receiver.requests) == 2
    found = deliveries(redis_client, job_id)
    assert found["attempts"] == 2 and found["lastCode"] == 503
    assert "503" in found["lastError"]
    webhooks = Queue(queueing.queue_name(settings, queueing.WEBHOOKS), connection=redis_client)
    [dead] = FailedJobRegistry(queue=webhooks).get_job_ids()
    assert dead.startswith(f"{job_id}-webhook-")
    assert queueing.job_status(redis_client, job_id)["status"] == "finished"
    assert webhook_counts(redis_client, settings) == {
        "delivered": 0, "retried": 1, "failed": 1, "refused": 0
    }


def test_a_name_that_resolves_to_loopback_is_never_called(
    redis_client: redis.Redis, redis_url: str, data_dir: Path
) -> None:
    """Given localhost listed by name, a webhook to it is accepted at submit, but at delivery
    the name resolves to loopback: refused for good, the receiver never called."""
    with receiving(204) as receiver:
        environment = webhook_environment(redis_url, data_dir, f"localhost:{receiver.port}")
        settings = load_settings(environment)
        url = f"http://localhost:{receiver.port}/hooks"
        job_id = queueing.submit(redis_client, settings, payload(notify={"url": url})).job_id
        with running_worker(environment, "--concurrency", "1"):
            wait_until(lambda: deliveries(redis_client, job_id)["outcome"] == "refused",
                       30, "the refusal")
            time.sleep(2.5)  # past the first retry's gap: no retry comes
        assert receiver.requests == []
    found = deliveries(redis_client, job_id)
    assert found["attempts"] == 1 and found["lastCode"] is None
    assert "WebhookRefused" in found["lastError"] and "127.0.0.1" in found["lastError"]
    webhooks = Queue(queueing.queue_name(settings, queueing.WEBHOOKS), connection=redis_client)
    [dead] = FailedJobRegistry(queue=webhooks).get_job_ids()
    assert Job.fetch(dead, connection=redis_client).retries_left == 0
    assert webhook_counts(redis_client, settings)["refused"] == 1


# --- every final end schedules one delivery --------------------------------------------------


@pytest.fixture
def webhooks_in_process(
    worker_environment: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Receiver]:
    """Give a receiver that answers 204, allowed to the deliveries run in this process."""
    with receiving(204) as receiver:
        monkeypatch.setenv("PREVIEW_WEBHOOK_HOSTS", f"127.0.0.1:{receiver.port}")
        monkeypatch.setenv("PREVIEW_WEBHOOK_SECRET", SECRET)
        get_settings.cache_clear()
        yield receiver


def run_in_process(connection: redis.Redis, settings: Settings) -> None:
    """Run every queued job and delivery with a real worker in this process."""
    names = queueing.worker_queue_names(settings)
    SimpleWorker([Queue(name, connection=connection) for name in names],
                 connection=connection).work(burst=True)


def sent_statuses(receiver: Receiver) -> list[dict[str, Any]]:
    """Return the bodies a receiver got, each checked against its signature."""
    assert all(verify(SECRET, each.headers["Preview-Signature"], each.body)
               for each in receiver.requests)
    return [json.loads(each.body) for each in receiver.requests]


def test_a_dead_letter_and_a_canceled_job_are_each_delivered_once(
    redis_client: redis.Redis, settings: Settings, webhooks_in_process: Receiver
) -> None:
    """Given two jobs with notify, one invalid for the worker and one canceled while waiting,
    each one's final status is delivered once; a job without notify sends nothing."""
    url = webhooks_in_process.url()
    bad = queueing.submit(redis_client, settings,
                          payload(tutorialId="Not A Slug", notify={"url": url})).job_id
    waiting = queueing.submit(redis_client, settings, payload(revision=2, notify={"url": url}))
    quiet = queueing.submit(redis_client, settings, payload(revision=3)).job_id
    assert queueing.cancel(redis_client, waiting.job_id) == "canceled"
    assert deliveries(redis_client, waiting.job_id)["outcome"] == "pending"
    assert deliveries(redis_client, bad)["outcome"] == "waiting"
    run_in_process(redis_client, settings)
    statuses = {sent["jobId"]: sent for sent in sent_statuses(webhooks_in_process)}
    for job_id in (bad, waiting.job_id, quiet):
        assert_described(statuses.get(job_id) or queueing.job_status(redis_client, job_id))
        assert_described(queueing.job_status(redis_client, job_id))
    assert set(statuses) == {bad, waiting.job_id}
    assert statuses[bad]["status"] == "failed" and statuses[bad]["deadLettered"]
    assert statuses[bad]["error"]["type"] == "InvalidPayload"
    assert statuses[waiting.job_id]["status"] == "canceled"
    assert deliveries(redis_client, bad)["outcome"] == "delivered"
    assert queueing.job_status(redis_client, quiet)["deliveries"] is None


def test_a_job_recovery_dead_letters_is_delivered(
    redis_client: redis.Redis, redis_url: str, data_dir: Path, webhooks_in_process: Receiver
) -> None:
    """Given a job with notify that waits past PREVIEW_QUEUED_TTL, recovery dead-letters it
    and its webhook says why."""
    settings = load_settings(service_environment(redis_url, data_dir, PREVIEW_QUEUED_TTL="1"))
    job_id = queueing.submit(
        redis_client, settings, payload(notify={"url": webhooks_in_process.url()})
    ).job_id
    time.sleep(1.2)
    assert recovery.recover(redis_client).dead_lettered == [job_id]
    run_in_process(redis_client, settings)
    [sent] = sent_statuses(webhooks_in_process)
    assert sent["jobId"] == job_id and sent["deadLettered"]
    assert sent["error"]["type"] == "QueuedTooLong"


def test_workers_serve_deliveries_first_and_backpressure_ignores_them() -> None:
    """Our workers listen on the webhooks queue before the priorities; the queue limit counts
    the priorities alone; PREVIEW_QUEUE_NAME prefixes the webhooks queue too."""
    settings = load_settings({"PREVIEW_QUEUE_NAME": "docs"})
    assert queueing.worker_queue_names(settings) == [
        "docs-webhooks", "docs-high", "docs-normal", "docs-low"
    ]
    assert queueing.queue_names(settings) == ["docs-high", "docs-normal", "docs-low"]


def test_notify_is_not_part_of_a_jobs_identity(settings: Settings) -> None:
    """The same content with and without a webhook is the same job: notify says how to tell,
    not what to render."""
    plain = payload()
    notified = payload(notify={"url": "https://hooks.example.com/previews"})
    assert queueing.job_id_for(plain) == queueing.job_id_for(notified)
    assert queueing.content_digest(plain) == queueing.content_digest(notified)


# --- at submit: hosts not allowed are refused, nothing enqueued ------------------------------


@pytest.fixture
def hooks_client(make_app: AppMaker) -> FlaskClient:
    """Give a test client of an app that allows webhooks to hooks.example.com only."""
    app = make_app(PREVIEW_API_TOKENS=API_TOKEN, PREVIEW_WEBHOOK_HOSTS="hooks.example.com")
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {API_TOKEN}"
    return client


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://evil.example.com/hooks", "evil.example.com:443 is not an allowed webhook host"),
        ("https://hooks.example.com:8443/x", "hooks.example.com:8443 is not an allowed"),
        ("http://127.0.0.1/hooks", "127.0.0.1:80 is not an allowed webhook host"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254:80 is not an allowed"),
    ],
)
def test_submit_refuses_a_host_not_allowed_and_enqueues_nothing(
    hooks_client: FlaskClient, redis_client: redis.Redis, settings: Settings, url: str,
    message: str,
) -> None:
    """Given notify.url on a host not listed, POST /job answers 422 at /notify/url, dry run
    too, and nothing is queued."""
    for query in ("", "?dryRun=true"):
        answer = hooks_client.post(f"/api/preview/job{query}", json=payload(notify={"url": url}))
        assert answer.status_code == 422, answer.get_data(as_text=True)
        body = answer.get_json()
        assert body["error"] == "invalid_payload"
        [problem] = body["details"]
        assert problem["path"] == "/notify/url" and message in problem["message"]
    assert queueing.queued_count(redis_client, settings) == 0
    assert not redis_client.exists(keys.queue_key(queueing.WEBHOOKS))


def test_submit_takes_an_allowed_host_and_refuses_any_when_webhooks_are_off(
    hooks_client: FlaskClient, make_app: AppMaker
) -> None:
    """Given the listed host, 202 and the status shows a waiting delivery; with no host
    listed at all, any notify is refused."""
    notified = payload(notify={"url": "https://hooks.example.com/previews?x=1"})
    answer = hooks_client.post("/api/preview/job", json=notified)
    assert answer.status_code == 202
    status = hooks_client.get(f"/api/preview/job/{answer.get_json()['jobId']}").get_json()
    assert status["deliveries"] == {"outcome": "waiting", "attempts": 0, "lastCode": None,
                                    "lastError": None, "lastAt": None}
    off = make_app(PREVIEW_API_TOKENS=API_TOKEN).test_client()
    refused = off.post("/api/preview/job", json=payload(revision=9, notify=notified["notify"]),
                       headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert refused.status_code == 422
    assert "webhooks are off" in refused.get_json()["details"][0]["message"]


def test_a_batch_item_with_a_host_not_allowed_is_invalid_alone(
    hooks_client: FlaskClient, redis_client: redis.Redis, settings: Settings
) -> None:
    """Given a batch of an allowed and a refused webhook, only the refused item is invalid."""
    answer = hooks_client.post("/api/preview/jobs", json={"jobs": [
        payload(revision=1, notify={"url": "https://hooks.example.com/a"}),
        payload(revision=2, notify={"url": "https://elsewhere.example.com/a"}),
    ]})
    assert answer.status_code == 200
    first, second = answer.get_json()["jobs"]
    assert first["outcome"] == "accepted"
    assert second["outcome"] == "invalid"
    assert second["problems"][0]["path"] == "/notify/url"
    assert queueing.queued_count(redis_client, settings) == 1


# --- the allowlist as a pure function --------------------------------------------------------


@pytest.mark.parametrize(
    ("hosts", "url", "allowed"),
    [
        ("hooks.example.com", "https://hooks.example.com/previews", True),
        ("hooks.example.com", "http://hooks.example.com/previews", True),  # port 80, http's own
        ("HOOKS.example.com", "https://Hooks.Example.COM/x", True),  # names are case-blind
        ("hooks.example.com", "https://hooks.example.com:8443/x", False),  # not the default port
        ("hooks.example.com:8443", "https://hooks.example.com:8443/x", True),
        ("hooks.example.com:8443", "https://hooks.example.com/x", False),
        ("hooks.example.com", "https://evil.example.com/x", False),
        ("hooks.example.com", "https://sub.hooks.example.com/x", False),  # no subdomains
        ("hooks.example.com", "https://hooks.example.com.evil.net/x", False),
        ("a.example.com, hooks.example.com", "https://hooks.example.com/x", True),
        ("127.0.0.1:8123", "http://127.0.0.1:8123/", True),  # a private address, listed
        ("127.0.0.1:8123", "http://127.0.0.1:8124/", False),
        ("127.0.0.1:8123", "http://localhost:8123/", False),  # a name is not its address
        ("127.0.0.1:8123", "http://[::ffff:127.0.0.1]:8123/", True),  # IPv4-mapped IPv6
        ("127.0.0.1:8123", "http://127.1:8123/", False),  # a short form is a name, not listed
        ("127.0.0.1:8123", "http://2130706433:8123/", False),
        ("localhost:8123", "http://127.0.0.1:8123/", False),
        ("10.0.0.5", "http://10.0.0.5/", True),
        ("10.0.0.5", "http://10.0.0.6/", False),
        ("192.168.1.1", "http://192.168.1.10/", False),
        ("169.254.169.254", "http://169.254.169.254/", True),  # only because listed as such
        ("hooks.example.com", "http://169.254.169.254/", False),
        ("[::1]:8123", "http://[::1]:8123/", True),
        ("[::1]:8123", "http://[0:0:0:0:0:0:0:1]:8123/", True),  # one address, two spellings
        ("[::1]:8123", "http://[::2]:8123/", False),
        ("[fe80::1]", "http://[fe80::2]/", False),
        ("[2001:db8::1]", "https://[2001:db8::1]/", True),
        ("", "https://hooks.example.com/x", False),  # none listed: webhooks are off
    ],
)
def test_the_allowlist_rules(hosts: str, url: str, allowed: bool) -> None:
    """An entry allows its host (names by name, addresses by address) on its port only."""
    settings = load_settings({"PREVIEW_WEBHOOK_HOSTS": hosts})
    assert (url_problem(url, settings) is None) == allowed


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("127.0.0.1", False),
        ("127.10.20.30", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("172.31.255.254", False),
        ("192.168.0.1", False),
        ("169.254.169.254", False),  # link-local: cloud metadata
        ("100.64.0.1", False),  # shared address space (carrier NAT)
        ("0.0.0.0", False),
        ("224.0.0.1", False),  # multicast
        ("240.0.0.1", False),  # reserved
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("fd12:3456::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("::ffff:10.0.0.1", False),
        ("::ffff:169.254.169.254", False),
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
    ],
)
def test_which_addresses_are_public(address: str, public: bool) -> None:
    """Only global unicast addresses are public, whatever IPv6 spelling hides an IPv4 one."""
    assert is_public(ipaddress.ip_address(address)) == public


def test_a_name_is_pinned_to_the_public_address_it_resolved_to() -> None:
    """A name is resolved once; any private address among its answers refuses it."""
    target = parse_url("https://hooks.example.com/previews")
    assert pinned_address(target, lambda host, port: ["93.184.216.34"]) == "93.184.216.34"
    with pytest.raises(WebhookRefused, match="10.0.0.7"):
        pinned_address(target, lambda host, port: ["93.184.216.34", "10.0.0.7"])
    with pytest.raises(WebhookRefused, match="::1"):
        pinned_address(target, lambda host, port: ["::1"])

    def never(host: str, port: int) -> list[str]:
        raise AssertionError("an address is not resolved")

    assert pinned_address(parse_url("http://127.0.0.1:8123/"), never) == "127.0.0.1"
    target = parse_url("https://[2001:db8::1]:8443/a?b=c")
    assert (target.host, target.port, target.path) == ("2001:db8::1", 8443, "/a?b=c")
    assert target.host_header == "[2001:db8::1]:8443"


def test_https_reaches_the_checked_address_in_the_urls_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a TLS receiver on 127.0.0.1 with a certificate for hooks.example.com, a POST to
    https://hooks.example.com pinned to 127.0.0.1 sends that name in SNI and Host, checks the
    certificate against it, and fails for a name the certificate does not hold."""
    authority = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("hooks.example.com").configure_cert(server)
    names: list[str | None] = []
    server.sni_callback = lambda _socket, name, _context: names.append(name)
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))  # trusted by the client
    with receiving(204, tls=server) as receiver:
        target = parse_url(f"https://hooks.example.com:{receiver.port}/hooks?x=1")
        assert post(target, "127.0.0.1", b"{}", {}) == 204
        [received] = receiver.requests
        assert received.headers["Host"] == f"hooks.example.com:{receiver.port}"
        assert received.path == "/hooks?x=1"
        other = parse_url(f"https://other.example.com:{receiver.port}/hooks")
        with pytest.raises(DeliveryFailed, match="other.example.com"):
            post(other, "127.0.0.1", b"{}", {})
    assert names == ["hooks.example.com", "other.example.com"]
    assert len(receiver.requests) == 1


@pytest.mark.parametrize(
    "value",
    ["https://hooks.example.com", "::1", "hooks.example.com:0", "hooks.example.com:99999",
     "[zz::1]", "hooks.example.com/path", "user@hooks.example.com"],
)
def test_a_bad_webhook_host_entry_names_its_variable(value: str) -> None:
    """Given an entry that is not host or host:port, start-up stops naming the variable."""
    with pytest.raises(SettingsError, match="^PREVIEW_WEBHOOK_HOSTS "):
        load_settings({"PREVIEW_WEBHOOK_HOSTS": value})


def test_the_webhook_secret_is_required_in_production_and_never_shown() -> None:
    """Production with hosts needs a secret; a short one is refused; repr hides it."""
    production = {"PREVIEW_ENV": "production", "PREVIEW_WEBHOOK_HOSTS": "hooks.example.com"}
    with pytest.raises(SettingsError, match="^PREVIEW_WEBHOOK_SECRET "):
        load_settings(production)
    with pytest.raises(SettingsError, match="^PREVIEW_WEBHOOK_SECRET "):
        load_settings({**production, "PREVIEW_WEBHOOK_SECRET": "short"})
    settings = load_settings({**production, "PREVIEW_WEBHOOK_SECRET": SECRET})
    assert settings.webhook_hosts == ("hooks.example.com",) and SECRET not in repr(settings)
    spelled = load_settings({"PREVIEW_WEBHOOK_HOSTS": " Hooks.Example.com, [0:0::1]:8123 "})
    assert spelled.webhook_hosts == ("hooks.example.com", "[::1]:8123")


# --- verify() ---------------------------------------------------------------------------------


BODY = b'{"jobId":"preview-1","status":"finished"}'


def test_verify_accepts_a_fresh_signature_of_the_body_as_received() -> None:
    """A signature made now over these bytes, with this secret, verifies."""
    header = sign(SECRET, BODY)
    assert verify(SECRET, header, BODY)
    assert verify(SECRET, header, BODY.decode())  # the same bytes, given as text
    assert verify(SECRET, f"{header},v1={'0' * 64}", BODY)  # several v1: one matching will do


AT = 1_700_000_000  # the moment the refused signatures below are made and checked at
SIGNED = sign(SECRET, BODY, timestamp=AT)


@pytest.mark.parametrize(
    ("secret", "header", "body", "now"),
    [
        (SECRET, SIGNED, BODY.replace(b"finished", b"failed"), AT),  # tampered
        (SECRET, SIGNED, BODY + b" ", AT),  # one byte more
        ("another-secret-0123456789", SIGNED, BODY, AT),  # wrong secret
        (SECRET, SIGNED, BODY, AT + 301),  # stale
        (SECRET, SIGNED, BODY, AT - 301),  # from the future
        (SECRET, "", BODY, AT),
        (SECRET, "garbage", BODY, AT),
        (SECRET, "t=abc,v1=" + SIGNED.split("v1=")[1], BODY, AT),
        (SECRET, SIGNED.split(",")[1], BODY, AT),  # no t
        (SECRET, SIGNED.split(",")[0], BODY, AT),  # no v1
        (SECRET, SIGNED + f",t={AT}", BODY, AT),  # two t
        (SECRET, SIGNED[:-1], BODY, AT),  # a digest cut short
        (SECRET, SIGNED + "," + "x" * 5000, BODY, AT),  # too long to read
        ("", sign("", BODY, timestamp=AT), BODY, AT),  # no secret verifies nothing
    ],
)
def test_verify_refuses(secret: str, header: str, body: bytes, now: float) -> None:
    """A tampered body, a wrong secret, a stale or future time, a malformed header: refused."""
    assert verify(SECRET, SIGNED, BODY, now=AT)  # the same, untouched, passes
    assert not verify(secret, header, body, now=now)


def test_verify_takes_the_tolerance_given() -> None:
    """A signature ten minutes old passes a tolerance of fifteen, not the default five."""
    header = sign(SECRET, BODY, timestamp=int(time.time()) - 600)
    assert not verify(SECRET, header, BODY)
    assert verify(SECRET, header, BODY, tolerance=900)


# --- the README's JavaScript receiver ---------------------------------------------------------


NODE = shutil.which("node")


def accepts_connections(port: int) -> bool:
    """Tell whether something listens on a port of 127.0.0.1."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


@pytest.mark.skipif(NODE is None, reason="no node on PATH")
def test_the_readme_javascript_receiver_takes_a_real_delivery(
    tmp_path: Path, worker_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's Node receiver, run as written, accepts what deliver() sends and refuses a
    changed body, another secret and an old signature."""
    blocks = re.findall(r"^```js\n(.*?)^```$", (ROOT / "README.md").read_text("utf-8"),
                        re.MULTILINE | re.DOTALL)
    [code] = [block for block in blocks if "preview-signature" in block]
    (tmp_path / "receiver.js").write_text(code, "utf-8")
    port = free_port()
    monkeypatch.setenv("PREVIEW_WEBHOOK_HOSTS", f"127.0.0.1:{port}")
    monkeypatch.setenv("PREVIEW_WEBHOOK_SECRET", SECRET)
    get_settings.cache_clear()
    receiver = subprocess.Popen(
        [str(NODE), str(tmp_path / "receiver.js")],
        env={**os.environ, "PORT": str(port)}, stdout=subprocess.PIPE, text=True,
    )
    try:
        wait_until(lambda: accepts_connections(port), 20, "the Node receiver")
        url = f"http://127.0.0.1:{port}/hooks"
        body = json.dumps({"jobId": "preview-1", "status": "finished"})
        assert deliver("preview-1", url, body) == {"code": 204}
        target = parse_url(url)
        data = body.encode()
        for header, sent in [
            (sign(SECRET, data), data.replace(b"finished", b"failed")),
            (sign("another-secret-0123456789", data), data),
            (sign(SECRET, data, timestamp=int(time.time()) - 400), data),
        ]:
            assert post(target, "127.0.0.1", sent, {HEADER: header}) == 401
        monkeypatch.setenv("PREVIEW_WEBHOOK_SECRET", "another-secret-0123456789")
        get_settings.cache_clear()
        with pytest.raises(DeliveryFailed, match="answered 401"):
            deliver("preview-1", url, body)  # signed with a secret the receiver does not hold
    finally:
        receiver.terminate()
        output, _ = receiver.communicate(timeout=10)
    assert output.splitlines() == ["preview-1 finished"]
