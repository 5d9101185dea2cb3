"""Production refuses a Redis that would lose accepted jobs on a restart, unless told it may."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from preview_worker.embedded_redis import EmbeddedRedis
from preview_worker.settings import SettingsError

from .conftest import AppMaker, service_environment
from .processes import BIN

PRODUCTION = {
    "PREVIEW_ENV": "production",
    "PREVIEW_API_TOKENS": "persistence-token-0123456789",
    "PREVIEW_SIGNING_KEY": "persistence-signing-key-0123456789",
}


def test_the_api_refuses_a_volatile_redis_in_production(make_app: AppMaker) -> None:
    """Given the test Redis (no AOF, no RDB), production is not built; the setting allows it."""
    with pytest.raises(SettingsError, match="PREVIEW_ALLOW_VOLATILE_REDIS"):
        make_app(**PRODUCTION)
    make_app(**PRODUCTION, PREVIEW_ALLOW_VOLATILE_REDIS="true")
    make_app()  # development never asks


def test_the_api_starts_on_a_persistent_redis(make_app: AppMaker, tmp_path: Path) -> None:
    """Given a Redis with its append-only file on, production starts."""
    with EmbeddedRedis(data_dir=tmp_path / "redis", persistent=True) as server:
        app = make_app(**PRODUCTION, REDIS_URL=server.url)
        assert app.test_client().get("/api/preview/worker/health").status_code in (200, 503)


def test_workers_refuse_a_volatile_redis_in_production(redis_url: str, data_dir: Path) -> None:
    """Given production on a volatile Redis, `preview-worker worker` stops with one line."""
    environment = service_environment(redis_url, data_dir, **PRODUCTION)
    done = subprocess.run(
        [str(BIN / "preview-worker"), "worker", "--burst"], env=environment,
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert "PREVIEW_ALLOW_VOLATILE_REDIS" in done.stderr and "Traceback" not in done.stderr


def test_production_never_starts_an_embedded_redis(data_dir: Path) -> None:
    """Given production and no REDIS_URL, `preview-worker worker` stops with one line."""
    environment = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(data_dir), **PRODUCTION}
    done = subprocess.run(
        [str(BIN / "preview-worker"), "worker", "--burst"], env=environment,
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1 and "needs REDIS_URL" in done.stderr
    assert "Traceback" not in done.stderr and not (data_dir / "redis").exists()
