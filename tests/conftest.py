"""Shared fixtures: a private real Redis for the session, flushed around every test."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from preview_worker import queueing
from preview_worker.connections import connect
from preview_worker.embedded_redis import EmbeddedRedis
from preview_worker.queueing import Submission
from preview_worker.settings import Settings, get_settings, load_settings
from preview_worker.web.app import create_app
from preview_worker.web.shared import preview_of

from .object_store import moto_server, object_store  # noqa: F401 - fixtures of a real S3 API

ROOT = Path(__file__).resolve().parent.parent
PAYLOADS = ROOT / "payloads"
MINIMAL = "preview_payload_minimal.json"

API_TOKEN = "test-token-0123456789abcdef"  # the one token of the app fixture
# A Redis the tests may flush; never REDIS_URL, which may hold someone's real data.
TEST_REDIS_URL = os.environ.get("PREVIEW_TEST_REDIS_URL")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """Give the URL of a real Redis: PREVIEW_TEST_REDIS_URL, else a private server."""
    if TEST_REDIS_URL:
        yield TEST_REDIS_URL
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """Give a client of the test Redis, whose database is empty before and after the test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def runner() -> CliRunner:
    """Give a click runner for the preview-worker command."""
    return CliRunner()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's own service settings out of the tests."""
    for name in list(os.environ):
        if name == "REDIS_URL" or name == "DATA_DIR" or name.startswith("PREVIEW_"):
            if name != "PREVIEW_TEST_REDIS_URL":
                monkeypatch.delenv(name)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """Give an empty artifact store directory."""
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def settings(redis_url: str, data_dir: Path) -> Settings:
    """Give settings on the test Redis with short retry gaps, as the workers will read them."""
    return load_settings(service_environment(redis_url, data_dir))


@pytest.fixture
def worker_environment(
    redis_url: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Give jobs run in this process the test Redis and store, as a worker's environment would."""
    for name, value in service_environment(redis_url, data_dir).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def service_environment(redis_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """Return the environment variables of a worker process under test."""
    return {
        "REDIS_URL": redis_url,
        "DATA_DIR": str(data_dir),
        "PREVIEW_RETRY_MAX": "3",
        "PREVIEW_RETRY_BASE_DELAY": "1",
        "PREVIEW_RETRY_MAX_DELAY": "8",
        "PREVIEW_JOB_TIMEOUT": "60",
        "PREVIEW_ALLOWED_ORIGINS": "http://localhost",  # the test client's own origin
        **extra,
    }


AppMaker = Callable[..., Flask]  # environment variables as keywords -> a test application


@pytest.fixture
def make_app(redis_url: str, data_dir: Path, redis_client: redis.Redis) -> Iterator[AppMaker]:
    """Give a maker of test applications on the empty test Redis and store, with extra settings.

    make_app(PREVIEW_QUEUE_MAX="1") sets variables on top of the worker environment's;
    every application made is closed after the test.
    """
    made: list[Flask] = []

    def make(**environment: str) -> Flask:
        """Build a test application with these settings."""
        settings = load_settings(service_environment(redis_url, data_dir, **environment))
        application = create_app({"TESTING": True, "SETTINGS": settings})
        made.append(application)
        return application

    yield make
    for application in made:
        preview_of(application).connection.close()


@pytest.fixture
def app(make_app: AppMaker) -> Flask:
    """Give a test application with one API token (API_TOKEN)."""
    return make_app(PREVIEW_API_TOKENS=API_TOKEN)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """Give a test client of the app fixture that sends its bearer token."""
    test_client = app.test_client()
    test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {API_TOKEN}"
    return test_client


def load_payload(name: str) -> dict[str, Any]:
    """Read an example payload from payloads/."""
    loaded: dict[str, Any] = json.loads((PAYLOADS / name).read_text("utf-8"))
    return loaded


def payload(**changes: Any) -> dict[str, Any]:
    """Return the minimal example payload with some top-level fields changed."""
    return {**load_payload(MINIMAL), **changes}


def submit_together(
    redis_url: str, settings: Settings, submitted: dict[str, Any], count: int
) -> list[Submission]:
    """Submit one payload from count threads at once, each on a connection of its own."""
    barrier = threading.Barrier(count)
    submissions: list[Submission] = []

    def submit() -> None:
        """Wait for every thread, then submit."""
        with connect(redis_url) as connection:
            barrier.wait()
            submissions.append(queueing.submit(connection, settings, submitted))

    threads = [threading.Thread(target=submit) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return submissions
