"""The API served by a real gunicorn, with a real worker, and Redis stopped and started again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from preview_worker.embedded_redis import EmbeddedRedis

from .conftest import payload, service_environment
from .processes import serving, start_worker, stop, wait_until

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
    """Give the base URL of `preview-worker serve` (gunicorn, 2 processes) and its settings."""
    environment = service_environment(
        redis_server.url, data_dir, PREVIEW_API_TOKENS=TOKEN, PREVIEW_RETRY_MAX="0"
    )
    with serving(environment, workers=2) as base:
        yield base, environment


def test_jobs_through_gunicorn_and_a_worker_show_in_metrics(
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


def test_http_metrics_add_up_across_gunicorn_processes(
    served: tuple[str, dict[str, str]],
) -> None:
    """Given 30 calls spread over 2 gunicorn processes, every scrape counts all 30."""
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
