"""The API served by the real `preview-worker serve`, with a real worker, Redis stopped and
started again, a server process killed, and SIGTERM in the middle of a request."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from preview_worker.embedded_redis import EmbeddedRedis, free_port
from preview_worker.web.server import Message, ReadFirst, Scope

from .conftest import payload, service_environment
from .processes import answers, launch, serving, start_worker, stop, wait_until

TOKEN = "server-token-0123456789"


def call(
    base: str, method: str, path: str, body: Any = None, request_id: str | None = None
) -> tuple[int, dict[str, Any]]:
    """Make one HTTP call with the token; return the status and the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {TOKEN}")
    if request_id:
        request.add_header("X-Request-ID", request_id)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def scrape(base: str) -> str:
    """Return the Prometheus text of /metrics."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as answer:
        return str(answer.read().decode())


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """Give a persistent Redis of this test's own, which the test may stop and start."""
    server = EmbeddedRedis(data_dir=tmp_path / "redis", persistent=True).start()
    yield server
    server.stop()


@pytest.fixture
def served(redis_server: EmbeddedRedis, data_dir: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """Give the base URL of `preview-worker serve` (2 processes) and its settings."""
    environment = service_environment(
        redis_server.url, data_dir, PREVIEW_API_TOKENS=TOKEN, PREVIEW_RETRY_MAX="0"
    )
    with serving(environment, workers=2) as base:
        yield base, environment


@pytest.mark.file_store  # a worker with a DATA_DIR that cannot be made fails its job
def test_jobs_through_the_server_and_a_worker_show_in_metrics(
    served: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """Given one job dead-lettered and one finished by real workers, /metrics counts both."""
    base, environment = served
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory", "utf-8")
    code, doomed = call(base, "POST", "/api/preview/job", payload(revision=1))
    assert code == 202
    broken = start_worker({**environment, "DATA_DIR": str(blocked / "data")}, "--burst")
    assert broken.wait(60) == 0
    code, good = call(base, "POST", "/api/preview/job", payload(revision=2), "req-from-editor")
    assert code == 202
    worker_log = tmp_path / "worker.log"
    worker = start_worker(environment, "--concurrency", "1", log=worker_log)
    try:
        wait_until(lambda: call(base, "GET", f"/api/preview/job/{good['jobId']}")[1]
                   ["status"] == "finished", 60, "the job")
        assert call(base, "GET", "/api/preview/worker/health")[0] == 200
    finally:
        stop(worker)
    assert call(base, "GET", f"/api/preview/job/{doomed['jobId']}")[1]["deadLettered"]
    text = scrape(base)
    assert 'preview_jobs_total{outcome="succeeded",queue="normal"} 1.0' in text
    assert 'preview_jobs_total{outcome="dead_lettered",queue="normal"} 1.0' in text
    assert 'preview_job_duration_seconds_count{queue="normal"} 2.0' in text
    logged = worker_log.read_text().splitlines()
    lines = [json.loads(line) for line in logged if line.startswith("{")]
    mine = [line for line in lines if line.get("jobId") == good["jobId"]]
    assert mine and all(line["requestId"] == "req-from-editor" for line in mine)
    assert {"asctime", "level", "name", "message"} <= set(mine[0])


def test_production_without_tokens_refuses_to_serve(data_dir: Path) -> None:
    """Given PREVIEW_ENV=production without tokens, serve stops with one line, exit 2."""
    environment = {**os.environ, "PREVIEW_ENV": "production", "DATA_DIR": str(data_dir)}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "preview-worker"), "serve"],
        env=environment, capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "PREVIEW_API_TOKENS and PREVIEW_SIGNING_KEY" in done.stderr


def test_http_metrics_add_up_across_server_processes(
    served: tuple[str, dict[str, str]],
) -> None:
    """Given 30 calls spread over 2 server processes, every scrape counts all 30."""
    base, _ = served
    for _ in range(30):
        assert call(base, "GET", "/api/preview/job/none")[0] == 404
    line = 'flask_http_request_total{method="GET",status="404"} 30.0'
    assert all(line in scrape(base) for _ in range(6))


def test_redis_stopped_gives_503_and_service_recovers(
    served: tuple[str, dict[str, str]], redis_server: EmbeddedRedis
) -> None:
    """Given Redis stopped, health and POST answer 503; once it is back, both work again."""
    base, _ = served
    redis_server.stop()
    try:
        code, body = call(base, "GET", "/api/preview/worker/health")
        assert code == 503
        code, body = call(base, "POST", "/api/preview/job", payload())
        assert code == 503 and body["error"] == "unavailable" and body["requestId"]
    finally:
        redis_server.start()
    wait_until(lambda: call(base, "POST", "/api/preview/job", payload())[0] == 202, 30, "Redis")


@pytest.fixture
def server_process(
    redis_server: EmbeddedRedis, data_dir: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Give a running `preview-worker serve` (2 processes) and its port; stop it after."""
    environment = service_environment(redis_server.url, data_dir, PREVIEW_API_TOKENS=TOKEN)
    port = free_port()
    server = launch(["serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"], environment)
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/api/preview/metrics"), 30, "serve")
        yield server, port
    finally:
        stop(server)


def children_of(pid: int) -> set[int]:
    """Return the ids of a process's server children, read from /proc.

    multiprocessing's resource tracker, a child too when workers are spawned, is left out.
    """
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue  # gone meanwhile
            if b"resource_tracker" in command:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.add(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_killed_server_process_is_replaced_and_its_counts_kept(
    server_process: tuple[subprocess.Popen[bytes], int],
) -> None:
    """Given one of 2 server processes killed, a new one serves, counts add up, stop is quick."""
    server, port = server_process
    base = f"http://127.0.0.1:{port}"
    for _ in range(10):
        assert call(base, "GET", "/api/preview/job/none")[0] == 404
    first = children_of(server.pid)
    assert len(first) == 2
    killed = min(first)
    os.kill(killed, signal.SIGKILL)
    wait_until(lambda: len(children_of(server.pid) - {killed}) == 2, 30, "a new server process")
    wait_until(lambda: answers(base + "/api/preview/metrics"), 30, "the server")
    for _ in range(10):
        assert call(base, "GET", "/api/preview/job/none")[0] == 404
    # The killed process's counts stay in the sum; only live gauges of a dead pid are dropped.
    assert 'flask_http_request_total{method="GET",status="404"} 20.0' in scrape(base)
    started = time.monotonic()
    assert stop(server) == 0
    # A process forked while another thread imported a module could hang here until killed.
    assert time.monotonic() - started < 10


def test_sigterm_lets_a_request_in_flight_finish(
    server_process: tuple[subprocess.Popen[bytes], int],
) -> None:
    """Given a submission half sent when SIGTERM comes, it is still answered; then the exit."""
    server, port = server_process
    body = json.dumps(payload(revision=77)).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"POST /api/preview/job HTTP/1.1\r\nHost: drain\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        time.sleep(0.5)  # the request is in: headers read, body under way
        server.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        sock.sendall(body[10:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 202"), answer[:200]
    assert server.wait(30) == 0
    assert not answers(f"http://127.0.0.1:{port}/api/preview/metrics")


# ReadFirst in this process: a fake WSGI application behind it, ASGI messages by hand.

Environ = dict[str, Any]


def http_scope(method: str = "POST", headers: Iterable[tuple[str, str]] = (),
               client: str = "127.0.0.1") -> Scope:
    """Return the ASGI scope granian gives a request to /x from a client."""
    return {
        "type": "http", "method": method, "path": "/x", "raw_path": b"/x", "query_string": b"",
        "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 8000),
        "client": (client, 40000), "root_path": "",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers],
    }


def exchange_with(app: ReadFirst, scope: Scope, messages: list[Message]) -> list[Message]:
    """Run one request through ReadFirst; the client stalls after its messages. Return sent."""
    sent: list[Message] = []

    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)  # a client that sends nothing more
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    try:
        asyncio.run(app(scope, receive, send))
    finally:
        app.pool.shutdown()
    return sent


def recording(seen: list[Environ], answer: Iterable[bytes] = (b"ok",),
              headers: list[tuple[str, str]] | None = None) -> Callable[..., Iterable[bytes]]:
    """Return a WSGI application that records each environ and gives a fixed answer."""

    def application(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        seen.append({**environ, "body": environ["wsgi.input"].read()})
        start_response("200 OK", headers if headers is not None else [("Content-Length", "2")])
        return answer

    return application


def test_read_first_hands_flask_a_whole_body_with_its_length() -> None:
    """Given a chunked body in three parts, the application gets it whole, with a length."""
    seen: list[Environ] = []
    scope = http_scope(headers=[("Transfer-Encoding", "chunked"), ("X-Odd_Name", "1"),
                                ("X-Forwarded-Proto", "https")])
    parts = [{"type": "http.request", "body": part, "more_body": True} for part in (b"ab", b"cd")]
    sent = exchange_with(ReadFirst(recording(seen), 5, 100), scope,
                         [*parts, {"type": "http.request", "body": b"e", "more_body": False}])
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"ok"
    environ = seen[0]
    assert environ["body"] == b"abcde" and environ["CONTENT_LENGTH"] == "5"
    assert "HTTP_TRANSFER_ENCODING" not in environ
    assert not any(key.startswith("HTTP_X_ODD") for key in environ)  # underscores dropped
    assert environ["wsgi.url_scheme"] == "https"  # from a proxy on this host


def test_read_first_keeps_a_large_body_whole_in_a_file() -> None:
    """Given a body past what is kept in memory, the application still reads every byte."""
    seen: list[Environ] = []
    chunk = bytes(range(256)) * 100
    messages: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": True} for _ in range(9)
    ]
    messages.append({"type": "http.request", "body": b"end", "more_body": False})
    scope = http_scope(headers=[("Content-Length", str(9 * len(chunk) + 3))])
    exchange_with(ReadFirst(recording(seen), 5, 1_000_000), scope, messages)
    assert seen[0]["body"] == chunk * 9 + b"end"
    assert seen[0]["wsgi.input"].closed  # the file is gone once the answer is made


def test_read_first_stops_reading_past_the_body_limit() -> None:
    """Given a chunked body past the limit, reading stops there; its length says too large."""
    seen: list[Environ] = []
    messages: list[Message] = [
        {"type": "http.request", "body": b"x" * 60, "more_body": True} for _ in range(5)
    ]
    exchange_with(ReadFirst(recording(seen), 5, 100), http_scope(), messages)
    assert int(seen[0]["CONTENT_LENGTH"]) == 120 and len(messages) == 3


def test_read_first_answers_408_to_a_body_that_stalls() -> None:
    """Given a body that stops coming, the answer is a 408 envelope; Flask never sees it."""
    seen: list[Environ] = []
    scope = http_scope(headers=[("Content-Length", "50"), ("X-Request-ID", "stalled-1"),
                                ("X-Forwarded-Proto", "https")], client="203.0.113.9")
    started = time.monotonic()
    sent = exchange_with(ReadFirst(recording(seen), 0.3, 100), scope,
                         [{"type": "http.request", "body": b"{", "more_body": True}])
    assert 0.3 <= time.monotonic() - started < 2
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"]) == {
        "error": "request_timeout",
        "message": "the request body did not arrive in time",
        "requestId": "stalled-1",
    }
    assert seen == []


def test_read_first_streams_an_answer_without_a_length_and_closes_it() -> None:
    """Given an answer of unknown length, each chunk goes out as it comes; then it is closed."""
    closed = []

    def chunks() -> Iterator[bytes]:
        try:
            yield from (b"data: 1\n\n", b"", b"data: 2\n\n")
        finally:
            closed.append(True)

    seen: list[Environ] = []
    app = ReadFirst(recording(seen, chunks(), [("Content-Type", "text/event-stream")]), 5, 100)
    sent = exchange_with(app, http_scope("GET"), [{"type": "http.request", "body": b""}])
    bodies = [(message["body"], message.get("more_body", False)) for message in sent[1:]]
    assert bodies == [(b"data: 1\n\n", True), (b"data: 2\n\n", True), (b"", False)]
    assert closed == [True] and seen[0]["wsgi.url_scheme"] == "http"


def test_read_first_answers_500_when_the_application_raises() -> None:
    """Given an application that raises, the answer is the 500 envelope, not a dropped line."""

    def broken(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        raise RuntimeError("boom")

    sent = exchange_with(ReadFirst(broken, 5, 100), http_scope("GET"),
                         [{"type": "http.request", "body": b""}])
    assert sent[0]["status"] == 500
    assert json.loads(sent[1]["body"])["error"] == "internal_error"


def test_every_line_the_server_logs_is_json_and_access_lines_carry_the_request_id(
    redis_url: str, data_dir: Path, tmp_path: Path
) -> None:
    """Given requests with and without an id, each access line is JSON with that id; no line
    of the server's stream is in another format."""
    log = tmp_path / "serve.log"
    environment = service_environment(redis_url, data_dir, PREVIEW_API_TOKENS=TOKEN)
    with serving(environment, workers=1, log=log) as base:
        assert call(base, "GET", "/api/preview/job/none", request_id="access-7")[0] == 404
        assert call(base, "POST", "/api/preview/job", payload(revision=71))[0] == 202
        time.sleep(0.5)  # the access lines are written after the answers
    lines = [line for line in log.read_text("utf-8").splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    access = [record for record in records if record["name"] == "preview_worker.access"]
    assert {(r["method"], r["path"], r["status"]) for r in access} >= {
        ("GET", "/api/preview/job/none", 404), ("POST", "/api/preview/job", 202)
    }
    mine = [r for r in access if r["path"] == "/api/preview/job/none"]
    assert [r["requestId"] for r in mine] == ["access-7"]
    assert all(r["requestId"] for r in access)
