"""The embedded Redis: a real server found, started on a free port, and stopped cleanly."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
import redis

from preview_worker.embedded_redis import EmbeddedRedis, RedisUnavailable, find_redis_server


def port_is_open(port: int) -> bool:
    """Tell whether something listens on a loopback port."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_server_starts_serves_and_stops_cleanly() -> None:
    """A started server serves from its data dir; stopped, its process, port and dir are gone."""
    server = EmbeddedRedis().start()
    process, data_dir = server.process, server.data_dir
    assert process is not None and process.poll() is None
    client = redis.Redis.from_url(server.url)
    client.set("preview", "ready")
    assert client.get("preview") == b"ready"
    assert client.config_get("dir")["dir"] == str(data_dir.resolve())
    client.close()

    server.stop()
    assert process.poll() is not None
    assert not port_is_open(server.port)
    assert not data_dir.exists()


def test_persistent_server_keeps_data_across_restarts(tmp_path: Path) -> None:
    """Given a persistent data dir, a key set before a restart is read after it; the dir stays."""
    with EmbeddedRedis(data_dir=tmp_path, persistent=True) as first:
        client = redis.Redis.from_url(first.url)
        client.set("job", "accepted")
        client.close()
    with EmbeddedRedis(data_dir=tmp_path, persistent=True) as second:
        client = redis.Redis.from_url(second.url)
        assert client.get("job") == b"accepted"
        client.close()
    assert tmp_path.exists(), "a data directory given by the caller is kept"


def test_redis_server_on_path_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a redis-server on PATH, find_redis_server returns it."""
    binary = tmp_path / "redis-server"
    binary.write_text("#!/bin/sh\n", "utf-8")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert find_redis_server() == binary


def test_no_binary_anywhere_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given no redis-server on PATH nor installed, find_redis_server raises RedisUnavailable."""
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(RedisUnavailable, match="no redis-server found"):
        find_redis_server()


def test_fixture_gives_a_flushed_database(redis_client: redis.Redis) -> None:
    """The redis_client fixture starts each test with an empty database."""
    assert redis_client.dbsize() == 0
    redis_client.set("left-over", 1)
