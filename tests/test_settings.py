"""Settings: read once from the environment; a bad value stops start-up with one clear line."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from preview_worker.settings import Settings, SettingsError, load_settings, redact_url


def test_defaults_need_no_environment() -> None:
    """Given an empty environment, settings are the defaults: no Redis, not production."""
    settings = load_settings({})
    assert settings == Settings()
    assert settings.redis_url is None and not settings.production


def test_every_variable_is_read() -> None:
    """Given every variable set, each lands in its field, and the settings are frozen."""
    settings = load_settings(
        {
            "REDIS_URL": "redis://cache.internal:6380/2",
            "DATA_DIR": "/srv/previews",
            "PREVIEW_QUEUE_NAME": "tutorials",
            "PREVIEW_WORKER_CONCURRENCY": "4",
            "PREVIEW_WORKER_MAX_JOBS": "50",
            "PREVIEW_QUEUE_MAX": "50",
            "PREVIEW_ENV": "production",
            "PREVIEW_API_TOKENS": "0123456789abcdef, fedcba9876543210",
            "PREVIEW_OPEN_PROBES": "false",
            "PREVIEW_SIGNING_KEY": "secret-key",
            "PREVIEW_RETRY_MAX": "5",
            "PREVIEW_RETRY_BASE_DELAY": "0.5",
            "PREVIEW_RETRY_MAX_DELAY": "60",
            "PREVIEW_JOB_TIMEOUT": "30",
            "PREVIEW_RESULT_TTL": "600",
            "PREVIEW_FAILURE_TTL": "3600",
            "PREVIEW_QUEUED_TTL": "900",
            "PREVIEW_MAX_BODY_BYTES": "65536",
            "PREVIEW_ARTIFACT_URL_TTL": "120",
            "PREVIEW_WEBHOOK_HOSTS": "hooks.example.com, 127.0.0.1:8123",
            "PREVIEW_WEBHOOK_SECRET": "webhook-secret-0123456789",
            "PREVIEW_WEBHOOK_RETRY_MAX": "8",
            "PREVIEW_WEBHOOK_RETRY_BASE_DELAY": "5",
            "PREVIEW_LOG_LEVEL": "debug",
        }
    )
    assert settings == Settings(
        redis_url="redis://cache.internal:6380/2",
        data_dir=Path("/srv/previews"),
        queue_name="tutorials",
        worker_concurrency=4,
        worker_max_jobs=50,
        queue_max=50,
        environment="production",
        api_tokens=("0123456789abcdef", "fedcba9876543210"),
        open_probes=False,
        signing_key="secret-key",
        retry_max=5,
        retry_base_delay=0.5,
        retry_max_delay=60.0,
        job_timeout=30,
        result_ttl=600,
        failure_ttl=3600,
        queued_ttl=900,
        max_body_bytes=65536,
        artifact_url_ttl=120,
        webhook_hosts=("hooks.example.com", "127.0.0.1:8123"),
        webhook_secret="webhook-secret-0123456789",
        webhook_retry_max=8,
        webhook_retry_base_delay=5.0,
        log_level="DEBUG",
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.queue_max = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PREVIEW_WORKER_CONCURRENCY", "abc"),
        ("PREVIEW_WORKER_CONCURRENCY", "0"),
        ("REDIS_URL", "notaurl"),
        ("REDIS_URL", "http://localhost:6379"),
        ("REDIS_URL", "redis://localhost:port/0"),
        ("REDIS_URL", "redis://"),
        ("PREVIEW_QUEUE_MAX", "-3"),
        ("PREVIEW_QUEUE_NAME", "bad name!"),
        ("PREVIEW_ENV", "staging"),
        ("PREVIEW_RETRY_BASE_DELAY", "soon"),
        ("PREVIEW_RETRY_MAX_DELAY", "inf"),
        ("PREVIEW_API_TOKENS", "short"),
        ("PREVIEW_LOG_LEVEL", "loud"),
        ("PREVIEW_OPEN_PROBES", "maybe"),
    ],
)
def test_bad_value_names_its_variable(name: str, value: str) -> None:
    """Given a bad value, the SettingsError message starts with the variable's name."""
    with pytest.raises(SettingsError, match=f"^{name} "):
        load_settings({name: value})


def test_redis_password_never_appears_in_an_error() -> None:
    """Given a bad REDIS_URL holding a password, the error does not show the password."""
    with pytest.raises(SettingsError) as raised:
        load_settings({"REDIS_URL": "redis://user:hunter2@host:notaport/0"})
    assert "hunter2" not in str(raised.value)


def test_redact_url_hides_only_the_password() -> None:
    """redact_url masks the password and leaves the rest of the URL as it was."""
    assert redact_url("redis://user:hunter2@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact_url("redis://:hunter2@host/0") == "redis://:***@host/0"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"


@pytest.mark.parametrize(
    ("name", "value"), [("PREVIEW_WORKER_CONCURRENCY", "abc"), ("REDIS_URL", "notaurl")]
)
def test_command_stops_with_one_line_and_no_traceback(name: str, value: str) -> None:
    """Given a bad setting, the command exits 2 with one stderr line naming it and no traceback."""
    env = {**os.environ, name: value}
    done = subprocess.run(
        [sys.executable, "-m", "preview_worker", "health"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert name in done.stderr


SECRETS = {
    "REDIS_URL": "redis://operator:redis-pass-6f1c@cache.internal:6379/0?password=query-pass-90ab",
    "PREVIEW_API_TOKENS": "api-token-one-4d2e9a,api-token-two-77c0f3",
    "PREVIEW_SIGNING_KEY": "signing-key-b85e1d33",
    "PREVIEW_WEBHOOK_SECRET": "webhook-secret-3a9c51e7",
}
SECRET_VALUES = ["redis-pass-6f1c", "query-pass-90ab", "api-token-one-4d2e9a",
                 "api-token-two-77c0f3", "signing-key-b85e1d33", "webhook-secret-3a9c51e7"]


def shown_forms(value: object) -> list[str]:
    """Return every way a value gets printed: repr, str, format, %-format, in a container."""
    logged = "%s %r" % (value, value)  # noqa: UP031 - how logging formats its arguments
    return [repr(value), str(value), f"{value}", f"{value!r}", logged, repr([value]),
            repr({"settings": value})]


def test_settings_never_print_a_secret() -> None:
    """Given every secret set, no printed form of the settings holds one; the rest is shown."""
    settings = load_settings(SECRETS)
    for shown in shown_forms(settings):
        assert not [secret for secret in SECRET_VALUES if secret in shown], shown
    text = repr(settings)
    assert "cache.internal:6379" in text and "operator" in text  # the URL, password hidden
    assert "api_tokens=('***', '***')" in text and "signing_key='***'" in text
    assert "webhook_secret='***'" in text
    assert all(f"{field.name}=" in text for field in dataclasses.fields(Settings))


def test_what_holds_a_secret_never_prints_it(tmp_path: Path) -> None:
    """The signer, the web app's shared parts and a password-protected Redis hide theirs."""
    from preview_worker.connections import connect
    from preview_worker.embedded_redis import EmbeddedRedis
    from preview_worker.signing import signer_for
    from preview_worker.store import store_for
    from preview_worker.web.shared import Preview

    settings = load_settings({**SECRETS, "DATA_DIR": str(tmp_path)})
    signer = signer_for(settings)
    assert signer.allows(signer.token("a" * 64, "index.html"), "a" * 64, "index.html")
    parts = Preview(settings, connect(SECRETS["REDIS_URL"]), store_for(settings), signer)
    server = EmbeddedRedis(password="redis-pass-6f1c")
    for holder in (signer, parts, server):
        for shown in shown_forms(holder):
            assert not [secret for secret in SECRET_VALUES if secret in shown], shown


@pytest.mark.parametrize(
    "value", ["*", "https://editor.example.com/path", "'none' https://x.example", "javascript:"]
)
def test_a_bad_frame_ancestors_list_is_refused(value: str) -> None:
    """PREVIEW_FRAME_ANCESTORS takes 'none' alone, or 'self' and origins."""
    with pytest.raises(SettingsError, match="PREVIEW_FRAME_ANCESTORS"):
        load_settings({"PREVIEW_FRAME_ANCESTORS": value})
