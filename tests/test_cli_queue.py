"""The queue commands and the one-shot render, through click against a real Redis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from preview_worker import queueing
from preview_worker.cli import cli
from preview_worker.settings import Settings

from .conftest import PAYLOADS, service_environment
from .processes import start_worker, stop, wait_until

MINIMAL = str(PAYLOADS / "preview_payload_minimal.json")
FULL = str(PAYLOADS / "preview_payload_full.json")
INVALID = str(PAYLOADS / "invalid" / "no-steps.json")


@pytest.fixture
def service(redis_url: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point the command at the test Redis and store, as an operator's shell would."""
    environment = service_environment(redis_url, data_dir)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return environment


def test_render_writes_artifacts_without_redis(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given no Redis, `render --out DIR` writes the three files into DIR itself; without
    --out they go to the store, where a second render is cached."""
    out = tmp_path / "out"
    result = runner.invoke(cli, ["render", FULL, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == f"{FULL}: {out}"
    assert sorted(path.name for path in out.iterdir()) == [
        "index.html", "manifest.json", "thumbnail.png"
    ]
    again = runner.invoke(cli, ["render", FULL, "--out", str(out)])
    assert again.exit_code == 0 and sorted(path.name for path in out.iterdir()) == [
        "index.html", "manifest.json", "thumbnail.png"
    ]
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    stored = runner.invoke(cli, ["render", FULL])
    directory = Path(stored.output.splitlines()[0].split(": ", 1)[1])
    assert directory.is_relative_to(tmp_path / "data" / "previews")
    assert "(cached)" in runner.invoke(cli, ["render", FULL]).output.splitlines()[0]


def test_render_exit_codes(runner: CliRunner, tmp_path: Path) -> None:
    """`render` exits 1 on an invalid payload and 2 on a missing file, writing nothing."""
    assert runner.invoke(cli, ["render", INVALID, "--out", str(tmp_path)]).exit_code == 1
    assert runner.invoke(cli, ["render", str(tmp_path / "none.json")]).exit_code == 2
    assert not (tmp_path / "previews").exists()


def test_dry_run_render_writes_nothing(runner: CliRunner, tmp_path: Path) -> None:
    """Given a dryRun payload, `render` lists the artifacts but writes none."""
    dry = tmp_path / "dry.json"
    dry.write_text(json.dumps({**json.loads(Path(MINIMAL).read_text()), "dryRun": True}))
    result = runner.invoke(cli, ["render", str(dry), "--out", str(tmp_path / "store")])
    assert result.exit_code == 0
    assert "dry run, nothing written" in result.output and "thumbnail.png" in result.output
    assert not (tmp_path / "store" / "previews").exists() or not any(
        (tmp_path / "store" / "previews").iterdir()
    )


def test_enqueue_status_cancel(
    runner: CliRunner, service: dict[str, str], redis_client: redis.Redis
) -> None:
    """`enqueue`, `status` and `cancel` act on a job; a second cancel or an unknown id exits 1."""
    result = runner.invoke(cli, ["enqueue", "--priority", "low", MINIMAL])
    assert result.exit_code == 0, result.output
    job_id = result.output.split(": ", 1)[1].split()[0]
    assert result.output.strip().endswith("queued on low")
    status = json.loads(runner.invoke(cli, ["status", job_id]).output)
    assert status["jobId"] == job_id and status["queue"] == "low"
    assert runner.invoke(cli, ["cancel", job_id]).output == f"{job_id}: canceled\n"
    ended = runner.invoke(cli, ["cancel", job_id])
    assert ended.exit_code == 1 and "already ended" in ended.output
    assert runner.invoke(cli, ["status", "missing"]).exit_code == 1


def test_enqueue_refuses_invalid_payloads_and_enqueues_nothing(
    runner: CliRunner, service: dict[str, str], redis_client: redis.Redis, settings: Settings
) -> None:
    """Given one valid and one invalid file, When enqueued together, Then neither is."""
    result = runner.invoke(cli, ["enqueue", MINIMAL, INVALID])
    assert result.exit_code == 1
    assert queueing.queued_count(redis_client, settings) == 0


def test_enqueue_wait_and_the_dead_letter_commands(
    runner: CliRunner, service: dict[str, str], redis_client: redis.Redis, settings: Settings
) -> None:
    """Given a worker, `enqueue --wait` sees its job finish; the dlq and recover commands work."""
    rejected = {**json.loads(Path(MINIMAL).read_text()), "tutorialId": "Bad Slug"}
    bad = queueing.submit(redis_client, settings, rejected).job_id  # the worker refuses it
    worker = start_worker(service, "--concurrency", "1")
    try:
        done = runner.invoke(cli, ["enqueue", "--wait", FULL],
                             env={"PREVIEW_API_URL": "https://previews.example.com"})
        assert done.exit_code == 0, done.output
        lines = done.stdout.splitlines()
        assert lines[-1] == "1 finished, 0 dead-lettered, 0 canceled"
        links = [line.split(": ", 1)[1] for line in lines if "/artifacts/" in line]
        assert len(links) == 2
        assert all(link.startswith("https://previews.example.com/api/preview/artifacts/")
                   for link in links)
        assert "rendering" in done.stderr  # the progress bar
        job_id = lines[0].split(": ", 1)[1].split()[0]
        shown = json.loads(runner.invoke(cli, ["status", job_id]).output)
        urls = [artifact["url"] for artifact in shown["result"]["artifacts"]]
        assert len(urls) == 2 and all(url.startswith("http://127.0.0.1:8000/api/preview/")
                                      for url in urls)
    finally:
        stop(worker)
    [letter] = json.loads(runner.invoke(cli, ["dlq", "list"]).output)
    assert letter["jobId"] == bad and letter["error"]["type"] == "InvalidPayload"
    usage = runner.invoke(cli, ["dlq", "purge"])
    assert usage.exit_code == 2 and "give exactly one of a job id or --all" in usage.output
    assert runner.invoke(cli, ["dlq", "requeue", "nope"]).exit_code == 1
    assert runner.invoke(cli, ["dlq", "requeue", bad]).output == f"requeued 1: {bad}\n"
    assert queueing.job_status(redis_client, bad)["status"] == "queued"
    report = runner.invoke(cli, ["recover"])
    assert report.exit_code == 0 and set(json.loads(report.output)) == {
        "requeued", "retried", "deadLettered", "forgotten"
    }


def test_queue_commands_without_redis_say_so(runner: CliRunner, tmp_path: Path) -> None:
    """Given no Redis or an unreachable one, `status` exits 1 and says which."""
    result = runner.invoke(cli, ["status", "x"], env={"DATA_DIR": str(tmp_path)})
    assert result.exit_code == 1 and "no Redis: set REDIS_URL" in result.output
    down = runner.invoke(cli, ["status", "x"], env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert down.exit_code == 1 and "Redis is unreachable" in down.output


def test_health_command_exits_1_without_workers_and_0_with_one(
    runner: CliRunner, service: dict[str, str], redis_client: redis.Redis
) -> None:
    """Given no worker, health exits 1 naming why; with a live worker pool it exits 0."""
    sick = runner.invoke(cli, ["health"])
    assert sick.exit_code == 1 and json.loads(sick.output)["ok"] is False
    worker = start_worker(service, "--concurrency", "1")
    try:
        wait_until(lambda: runner.invoke(cli, ["health"]).exit_code == 0, 30, "a healthy pool")
    finally:
        stop(worker)
    # A pool's last worker leaves the registry as it exits; on a loaded machine, a moment later.
    wait_until(
        lambda: json.loads(runner.invoke(cli, ["health"]).output)["ok"] is False,
        30, "the stopped pool seen as gone",
    )


def test_a_full_queue_refuses_files_in_enqueue_and_names_them(
    runner: CliRunner, service: dict[str, str], tmp_path: Path
) -> None:
    """Given room for one job, enqueueing three files says which two were not enqueued."""
    names = []
    for number in range(3):
        path = tmp_path / f"edit-{number}.json"
        path.write_text(json.dumps({**json.loads(Path(MINIMAL).read_text()), "revision": number}))
        names.append(str(path))
    stopped = runner.invoke(cli, ["enqueue", *names], env={"PREVIEW_QUEUE_MAX": "1"})
    assert stopped.exit_code == 1
    assert f"not enqueued: {names[1]} {names[2]}" in stopped.output


def test_enqueue_wait_follows_the_events_and_reads_each_status_once(
    runner: CliRunner, service: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Given a render of a few seconds, `enqueue --wait` learns of its end from its events:
    it reads the job's status once, at the end, where polling read it every 0.2 s."""
    from .test_workers import slow_payload

    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps(slow_payload(11)))
    reads: list[str] = []
    real = queueing.job_status

    def counted(connection: redis.Redis, job_id: str) -> dict[str, object]:
        reads.append(job_id)
        return real(connection, job_id)

    monkeypatch.setattr(queueing, "job_status", counted)
    worker = start_worker(service, "--concurrency", "1")
    try:
        done = runner.invoke(cli, ["enqueue", "--wait", str(slow)])
    finally:
        stop(worker)
    assert done.exit_code == 0, done.output
    assert done.stdout.splitlines()[-1] == "1 finished, 0 dead-lettered, 0 canceled"
    # The render takes seconds; a quiet spell of 2 s may add a look or two, never dozens.
    assert 1 <= len(reads) <= 4, len(reads)


def test_enqueue_refuses_a_webhook_host_the_service_does_not_allow(
    runner: CliRunner, service: dict[str, str], redis_client: redis.Redis, settings: Settings
) -> None:
    """Given a payload whose notify URL names a host not in PREVIEW_WEBHOOK_HOSTS, the command
    refuses it, as the API does, and enqueues nothing."""
    notify = str(PAYLOADS / "preview_payload_notify.json")
    refused = runner.invoke(cli, ["enqueue", notify], env={"PREVIEW_WEBHOOK_HOSTS": ""})
    assert refused.exit_code == 1, refused.output
    assert "/notify/url" in refused.stderr
    assert queueing.queued_count(redis_client, settings) == 0
