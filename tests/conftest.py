"""Shared fixtures: a private real Redis for the session, flushed around every test.

PREVIEW_TEST_STORE=s3 runs the tests against the object store: each test gets a bucket of
its own on a moto server of the session, which every worker and server it starts uses too.
Tests marked file_store are about files in DATA_DIR and are left out of that run.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Generator, Iterator
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

from .object_store import (  # noqa: F401 - fixtures of a real S3 API
    ObjectStore,
    moto_server,
    object_store,
)

ROOT = Path(__file__).resolve().parent.parent
PAYLOADS = ROOT / "payloads"
MINIMAL = "preview_payload_minimal.json"

API_TOKEN = "test-token-0123456789abcdef"  # the one token of the app fixture
# A Redis the tests may flush; never REDIS_URL, which may hold someone's real data.
TEST_REDIS_URL = os.environ.get("PREVIEW_TEST_REDIS_URL")
# The artifact store the tests run against: file (DATA_DIR) or s3 (a moto server's bucket).
TEST_STORE = os.environ.get("PREVIEW_TEST_STORE", "file")
TEST_STORES = ("file", "s3")
STORE_VARIABLES = ("PREVIEW_STORE_URL", "PREVIEW_S3_ENDPOINT_URL")  # the service's, for a bucket


def pytest_configure(config: pytest.Config) -> None:
    """Refuse a store the tests do not know."""
    if TEST_STORE not in TEST_STORES:
        raise pytest.UsageError(f"PREVIEW_TEST_STORE is {TEST_STORE!r}, not one of {TEST_STORES}")


def pytest_report_header(config: pytest.Config) -> str:
    """Say which artifact store the tests run against."""
    return f"artifact store under test: {TEST_STORE} (PREVIEW_TEST_STORE)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In the object-store run, leave out the tests about files on disk."""
    if TEST_STORE != "s3":
        return
    on_disk = [item for item in items if item.get_closest_marker("file_store")]
    if on_disk:
        config.hook.pytest_deselected(items=on_disk)
        items[:] = [item for item in items if not item.get_closest_marker("file_store")]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Fail an object-store test that skips: CI must never pass without running them."""
    report: pytest.TestReport = yield
    if report.skipped and "moto_server" in getattr(item, "fixturenames", ()):
        report.outcome = "failed"
        report.longrepr = f"an object-store test may not skip: {report.longrepr}"
    return report


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


@pytest.fixture(autouse=True)
def store_under_test(
    request: pytest.FixtureRequest, clean_environment: None, monkeypatch: pytest.MonkeyPatch
) -> ObjectStore | None:
    """In the object-store run, give the test a new bucket and put the service's variables for
    it in this process's environment, where workers and servers the test starts find them.
    """
    if TEST_STORE != "s3" or request.node.get_closest_marker("file_store"):
        return None
    bucket: ObjectStore = request.getfixturevalue("object_store")
    for name, value in bucket.environment().items():
        monkeypatch.setenv(name, value)
    return bucket


@pytest.fixture
def stored_previews(
    data_dir: Path, store_under_test: ObjectStore | None
) -> Callable[[], list[str]]:
    """Give a function that lists the hashes of the complete previews in the test's store."""

    def listed() -> list[str]:
        """Return the hash of each preview whose manifest is stored, sorted."""
        if store_under_test is not None:
            found = store_under_test.keys()
        else:
            found = [str(path) for path in (data_dir / "previews").glob("*/*/*")]
        return sorted(name.split("/")[-2] for name in found if name.endswith("/manifest.json"))

    return listed


@pytest.fixture
def refuse_writes(data_dir: Path, store_under_test: ObjectStore | None) -> Callable[[], None]:
    """Give a function that makes the test's store refuse every write from then on."""

    def refuse() -> None:
        """Deny the bucket's writes, or put a file where DATA_DIR's previews folder goes."""
        if store_under_test is not None:
            store_under_test.refuse("s3:PutObject")
        else:
            (data_dir / "previews").write_text("no folder can be made here", "utf-8")

    return refuse


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
        # The object-store run's bucket (see store_under_test); the extras may name another.
        **{name: os.environ[name] for name in STORE_VARIABLES if name in os.environ},
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
