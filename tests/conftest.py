"""Shared fixtures: a private real Redis for the session, flushed around every test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from preview_worker.embedded_redis import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent
PAYLOADS = ROOT / "payloads"

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
