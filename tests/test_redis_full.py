"""A Redis out of memory, for real (maxmemory on a server of the test's own): 503, no change."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from preview_worker.embedded_redis import EmbeddedRedis
from preview_worker.web.shared import preview_of

from .conftest import AppMaker, payload, service_environment
from .processes import running_worker, wait_until

TOKEN = "redis-full-token-0123456789"


class FullRedis:
    """A private Redis that a test fills to its maxmemory and empties again."""

    def __init__(self, server: EmbeddedRedis) -> None:
        self.server = server
        self.client = redis.Redis.from_url(server.url)

    def fill(self) -> None:
        """Write a filler, then set maxmemory below what is used: every write is refused."""
        self.client.config_set("maxmemory-policy", "noeviction")
        self.client.set("filler:0", "x" * (1 << 20))
        used = int(self.client.info("memory")["used_memory"])
        self.client.config_set("maxmemory", used // 2)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            self.client.set("filler:1", "x")

    def empty(self) -> None:
        """Drop the filler and the limit."""
        for key in self.client.scan_iter("filler:*"):
            self.client.delete(key)
        self.client.config_set("maxmemory", 0)

    def snapshot(self) -> dict[object, object]:
        """Return every key with a dump of its value."""
        return {key: self.client.dump(key) or b"" for key in sorted(self.client.keys("*"))}


@pytest.fixture
def full_redis() -> Iterator[FullRedis]:
    """Give a Redis of this test's own, which it may fill."""
    with EmbeddedRedis() as server:
        full = FullRedis(server)
        yield full
        full.client.close()


def test_submissions_to_a_full_redis_answer_503_and_change_nothing(
    full_redis: FullRedis, make_app: AppMaker
) -> None:
    """Given Redis at maxmemory, every submission is a 503 with Retry-After; no key changes."""
    app = make_app(REDIS_URL=full_redis.server.url, PREVIEW_API_TOKENS=TOKEN)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/api/preview/job", json=payload(), headers=headers).status_code == 202
    full_redis.fill()
    before = full_redis.snapshot()
    answers = [
        client.post("/api/preview/job", json=payload(revision=n), headers=headers)
        for n in range(1, 51)
    ]
    assert [answer.status_code for answer in answers] == [503] * 50
    assert all(answer.get_json()["error"] == "unavailable" for answer in answers)
    assert all(answer.headers["Retry-After"] == "5" for answer in answers)
    # A batch long enough for several script calls: refused whole, as one submission is.
    batch = client.post(
        "/api/preview/jobs", json={"jobs": [payload(revision=n) for n in range(100, 600)]},
        headers=headers,
    )
    assert batch.status_code == 503 and batch.get_json()["error"] == "unavailable"
    assert full_redis.snapshot() == before  # nothing accepted, nothing half-written
    # A duplicate of the accepted job still answers, as it writes nothing new.
    duplicate = client.post("/api/preview/job", json=payload(), headers=headers)
    assert duplicate.status_code in (200, 503)
    full_redis.empty()
    again = client.post("/api/preview/job", json=payload(revision=1), headers=headers)
    assert again.status_code == 202
    preview_of(app).connection.close()


def test_a_pool_whose_workers_die_at_once_waits_longer_each_time(
    full_redis: FullRedis, data_dir: Path, tmp_path: Path
) -> None:
    """Given workers that die on start (Redis full), the pool backs off; once emptied, it runs."""
    environment = service_environment(full_redis.server.url, data_dir)
    log = tmp_path / "pool.log"
    full_redis.fill()
    with running_worker(environment, "--concurrency", "2", log=log):
        time.sleep(10)
        restarts = len(re.findall(r"worker \d+ exited with", log.read_text("utf-8", "replace")))
        full_redis.empty()
        # The longest wait after ten seconds of backing off is a few seconds.
        wait_until(lambda: full_redis.client.scard("rq:workers") == 2, 30, "two live workers")
    # Without the back-off a slot restarts many times a second (3,500 in 50 s were seen).
    assert 2 <= restarts <= 2 * 6, f"{restarts} restarts in 10 s"
