"""The preview-worker command line: one face over the same core as the HTTP API."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
import redis

from preview_worker import dead_letters, events, queueing, recovery
from preview_worker.connections import connect
from preview_worker.embedded_redis import known_redis_url
from preview_worker.payload_files import (
    EXIT_INVALID,
    EXIT_UNREADABLE,
    PayloadFile,
    exit_code_of,
    read_payload_file,
)
from preview_worker.settings import Settings, SettingsError, load_body_limit, load_settings
from preview_worker.signing import link_artifacts, signer_for
from preview_worker.supervisor import ServiceError, check_redis
from preview_worker.webhooks.hosts import payload_problems

FOLLOW_BLOCK_MS = 2000  # how long `enqueue --wait` waits for events before it reads statuses


class ConfigError(click.ClickException):
    """The environment holds a setting the service cannot use."""

    exit_code = EXIT_UNREADABLE


def print_results(results: list[PayloadFile]) -> None:
    """Print each file's verdict for people: one line per problem."""
    for result in results:
        if result.error:
            click.echo(f"{result.name}: {result.error}", err=True)
        for problem in result.first.problems:
            click.echo(f"{result.name}: {problem}")
        if result.first.more:
            click.echo(f"{result.name}: and {result.first.more} more problems")
        if result.valid:
            click.echo(f"{result.name}: valid")


@click.group()
@click.version_option(package_name="preview-worker", message="preview-worker %(version)s")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Render tutorial previews in the background: validate, enqueue, work, watch."""
    try:
        ctx.obj = load_settings()
    except SettingsError as error:
        if ctx.invoked_subcommand != "validate":
            raise ConfigError(str(error)) from None
        try:  # validating files offline needs the body limit alone: the rest may wait
            ctx.obj = load_body_limit()
        except SettingsError as limit_error:
            raise ConfigError(str(limit_error)) from None


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.pass_obj
def validate(settings: Settings, paths: tuple[str, ...], as_json: bool) -> None:
    """Validate payload files (or '-' for standard input) against the schema.

    Exits 0 when all are valid, 1 when any is invalid, 2 when any cannot be read.
    """
    results = [read_payload_file(path, settings) for path in paths]
    if as_json:
        document = {
            "valid": all(result.valid for result in results),
            "results": [result.as_dict() for result in results],
        }
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        print_results(results)
    sys.exit(exit_code_of(results))


def redis_url_of(settings: Settings) -> str:
    """Return REDIS_URL, else the URL of the development Redis a running service started."""
    url = known_redis_url(settings)
    if url:
        return url
    raise click.ClickException(
        "no Redis: set REDIS_URL, or start the service (preview-worker worker) first"
    )


def connection_of(settings: Settings, url: str | None = None) -> redis.Redis:
    """Connect to the service's Redis, or stop with a clear line when it is unreachable."""
    try:
        connection = check_redis(url or redis_url_of(settings))
    except ServiceError as error:
        raise click.ClickException(str(error)) from None
    click.get_current_context().call_on_close(connection.close)
    return connection


def echo_json(value: Any) -> None:
    """Print a value as indented JSON."""
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


@cli.command()
@click.argument("path")
@click.option(
    "--out", type=click.Path(file_okay=False),
    help="Folder to write the files into, as they are [the store under DATA_DIR].",
)
@click.pass_obj
def render(settings: Settings, path: str, out: str | None) -> None:
    """Render one payload file (or '-') into a folder, or the artifact store, with no Redis.

    Exits 0 when rendered, 1 when the payload is invalid, 2 when it cannot be read.
    """
    from preview_worker.errors import PreviewRefused
    from preview_worker.previews import store_preview
    from preview_worker.store import DirectoryStore, FileStore, StorageError

    result = read_payload_file(path, settings)
    if not result.valid:
        print_results([result])
        sys.exit(exit_code_of([result]))
    try:
        store = DirectoryStore(out) if out else FileStore(settings.data_dir)
        stored = store_preview(store, result.payload)  # read_payload_file validated it
    except (StorageError, PreviewRefused) as error:
        raise click.ClickException(str(error)) from None
    where = "dry run, nothing written" if stored.location is None else stored.location
    click.echo(f"{path}: {where}{' (cached)' if stored.cached else ''}")
    for artifact in stored.files:
        click.echo(f"  {artifact.name}  {artifact.size} bytes  {artifact.content_type}")


@cli.command()
@click.option("--concurrency", type=click.IntRange(1), help="Workers [PREVIEW_WORKER_CONCURRENCY].")
@click.option("--burst", is_flag=True, help="Stop once the queues are empty.")
@click.option(
    "--kind",
    type=click.Choice(["simple", "fork"]),
    default="simple",
    show_default=True,
    help="Run jobs in the worker process (simple) or in a forked process per job (fork).",
)
@click.option(
    "--max-jobs",
    type=click.IntRange(1),
    help="Jobs a worker runs before a fresh process replaces it [PREVIEW_WORKER_MAX_JOBS].",
)
@click.pass_obj
def worker(
    settings: Settings, concurrency: int | None, burst: bool, kind: str, max_jobs: int | None
) -> None:
    """Run a pool of workers on high, normal and low, with the retry scheduler and recovery."""
    from preview_worker.supervisor import run_workers
    from preview_worker.worker import PoolOptions

    try:
        run_workers(settings, PoolOptions(concurrency, kind, burst, max_jobs))
    except ServiceError as error:
        raise click.ClickException(str(error)) from None


@cli.command()
@click.option("--max-concurrency", type=click.IntRange(1),
              help="Largest concurrency to try [twice the cores this process may use].")
@click.option("--seconds", type=click.FloatRange(0, min_open=True), default=5.0,
              show_default=True, help="Seconds of rendering at each concurrency, after a warm-up.")
@click.option("--payload", "path",
              help="Payload file to render [payloads/preview_payload_full.json of the checkout].")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.pass_obj
def tune(
    settings: Settings, max_concurrency: int | None, seconds: float, path: str | None,
    as_json: bool,
) -> None:
    """Time real renders at concurrency 1 up to twice the cores; advise a concurrency.

    Prints renders/s, p50 and p95 latency and peak memory at each, then the
    PREVIEW_WORKER_CONCURRENCY to run on this host and why. Needs no Redis.
    """
    from preview_worker import tune as tuning

    if path is None and not tuning.FULL_PAYLOAD.is_file():
        raise click.UsageError("no payload to render here: give --payload FILE")
    result = read_payload_file(path or str(tuning.FULL_PAYLOAD), settings)
    if not result.valid:
        print_results([result])
        sys.exit(exit_code_of([result]))
    top = max_concurrency or 2 * tuning.cores()
    available = tuning.available_mib()  # read before the renders take any
    warning = tuning.busy_warning(os.getloadavg()[0])
    if not as_json:
        click.echo(f"{result.name}: fresh renders, {seconds:g} s at each concurrency from 1 to "
                   f"{top} ({tuning.cores()} cores)")
        click.echo(tuning.HEADER)
    steps = []
    try:
        for step in tuning.sweep(result.payload, top, seconds):
            steps.append(step)
            if not as_json:
                click.echo(step.as_row())
    except tuning.TuneError as error:
        raise click.ClickException(str(error)) from None
    advice = tuning.recommend(steps, available)
    if warning:
        click.echo(warning, err=True)
    if as_json:
        echo_json({"payload": result.name, "cores": tuning.cores(), "seconds": seconds,
                   "availableMiB": available, "warning": warning,
                   "steps": [step.as_dict() for step in steps], "recommended": advice.as_dict()})
    else:
        click.echo(f"recommended PREVIEW_WORKER_CONCURRENCY={advice.concurrency}: {advice.reason}")


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--priority", type=click.Choice(queueing.PRIORITIES), help="Override the payload's.")
@click.option("--wait", is_flag=True, help="Wait until every job has ended.")
@click.pass_obj
def enqueue(settings: Settings, paths: tuple[str, ...], priority: str | None, wait: bool) -> None:
    """Submit payload files as preview jobs; exit 1 if any is invalid, refused or fails."""
    results = [read_payload_file(path, settings) for path in paths]
    if not all(result.valid for result in results):
        print_results([result for result in results if not result.valid])
        sys.exit(exit_code_of(results))
    # A webhook host the service does not allow is refused here, as the API refuses it.
    refused_hosts = [(result.name, problem) for result in results
                     for problem in payload_problems(result.payload, settings)]
    for name, problem in refused_hosts:
        click.echo(f"{name}: {problem}", err=True)
    if refused_hosts:
        sys.exit(EXIT_INVALID)
    connection = connection_of(settings)
    submissions: list[queueing.Submission] = []
    refused: list[str] = []
    payloads = [
        {**result.payload, "priority": priority} if priority else result.payload
        for result in results
    ]
    # Batches of PREVIEW_BATCH_MAX: one Redis round trip each, every file answered on its own.
    for start in range(0, len(payloads), settings.batch_max):
        chunk = payloads[start : start + settings.batch_max]
        try:
            outcomes = queueing.submit_many(connection, settings, chunk)
        except redis.RedisError as error:  # down, full, or too few replicas acknowledged
            raise click.ClickException(f"Redis did not take the jobs: {error}") from None
        for result, outcome in zip(results[start:], outcomes, strict=False):
            if isinstance(outcome, queueing.Submission):
                submissions.append(outcome)
                click.echo(f"{result.name}: {outcome.job_id} {outcome.status}"
                           f"{' (duplicate)' if outcome.duplicate else ''} on {outcome.queue}")
            else:
                refused.append(result.name)
                click.echo(f"{result.name}: refused: {outcome}", err=True)
    if refused:
        raise click.ClickException(f"not enqueued: {' '.join(refused)}")
    if wait:
        statuses = wait_for_all(connection, settings, [s.job_id for s in submissions])
        print_summary(settings, statuses)
        if any(status["status"] != "finished" for status in statuses.values()):
            sys.exit(EXIT_INVALID)


def wait_for_all(
    connection: redis.Redis, settings: Settings, job_ids: list[str]
) -> dict[str, dict[str, Any]]:
    """Follow every job's events with a progress bar until each has ended; return their
    final statuses.

    The bar moves with each job's own percent, so a single job fills it step by step. Every
    few quiet seconds the statuses are read too, for a job whose events expired.
    """
    ended: dict[str, dict[str, Any]] = {}
    percent = dict.fromkeys(job_ids, 0)
    after = dict.fromkeys(job_ids, "")
    shown = 0
    with click.progressbar(length=100 * len(job_ids), label="rendering", file=sys.stderr) as bar:
        while len(ended) < len(job_ids):
            waiting = {job_id: seen for job_id, seen in after.items() if job_id not in ended}
            news = events.follow_many(connection, waiting, FOLLOW_BLOCK_MS)
            for job_id, event in news:
                after[job_id] = event.id
                if event.kind == "progress":
                    percent[job_id] = int(event.data.get("percent", 0))
            finals = {job_id for job_id, event in news if event.final}
            for job_id in finals if news else set(waiting):  # quiet: look at every status
                status = queueing.job_status(connection, job_id)
                if queueing.has_ended(status):
                    ended[job_id] = status
                    percent[job_id] = 100
            done = sum(percent.values())
            bar.update(done - shown)
            shown = done
    return ended


def print_summary(settings: Settings, statuses: dict[str, dict[str, Any]]) -> None:
    """Print how the jobs ended: counts, then each job's artifacts or why it failed."""
    signer = signer_for(settings)
    counts = {"finished": 0, "dead-lettered": 0, "canceled": 0}
    for job_id, status in statuses.items():
        if status["status"] == "finished":
            counts["finished"] += 1
            link_artifacts(status, signer, settings.api_url)
            for artifact in status["result"]["artifacts"]:
                if "url" in artifact:
                    click.echo(f"{job_id}: {artifact['url']}")
        else:
            counts["dead-lettered" if status["deadLettered"] else "canceled"] += 1
            error = status["error"] or {}
            click.echo(f"{job_id}: {status['status']}: {error.get('type')}: {error.get('message')}")
    click.echo(", ".join(f"{count} {name}" for name, count in counts.items()))


@cli.command()
@click.argument("job_id")
@click.pass_obj
def status(settings: Settings, job_id: str) -> None:
    """Print a job's status as JSON, with its artifacts' URLs; exit 1 when there is none."""
    try:
        found = queueing.job_status(connection_of(settings), job_id)
    except queueing.JobNotFound as error:
        raise click.ClickException(str(error)) from None
    link_artifacts(found, signer_for(settings), settings.api_url)
    echo_json(found)


@cli.command()
@click.argument("job_id")
@click.pass_obj
def cancel(settings: Settings, job_id: str) -> None:
    """Cancel a waiting job or stop a running one; exit 1 when it already ended."""
    try:
        click.echo(f"{job_id}: {queueing.cancel(connection_of(settings), job_id)}")
    except (queueing.JobNotFound, queueing.JobAlreadyEnded) as error:
        raise click.ClickException(str(error)) from None


@cli.command()
@click.pass_obj
def recover(settings: Settings) -> None:
    """Run one recovery pass: bring back jobs that dead workers left behind."""
    echo_json(recovery.recover(connection_of(settings)).as_dict())


@cli.command()
@click.pass_obj
def health(settings: Settings) -> None:
    """Print the health report as JSON; exit 0 when healthy, 1 when not."""
    from preview_worker.health import health_report

    with connect(redis_url_of(settings)) as connection:
        report = health_report(connection, settings)
    echo_json(report.as_dict())
    sys.exit(0 if report.ok else 1)


@cli.command()
@click.option("--bind", help="host:port to serve on [PREVIEW_BIND, 127.0.0.1:8000].")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True,
              help="Server processes (each runs Flask on 2 threads).")
@click.option("--header-timeout", type=click.FloatRange(0, 60, min_open=True), default=10.0,
              show_default=True, help="Seconds a client has to send a request's headers.")
@click.option("--body-timeout", type=click.FloatRange(0, min_open=True), default=20.0,
              show_default=True, help="Seconds a client has to send a request's body.")
@click.option("--dev", is_flag=True, help="Flask's development server instead of granian.")
@click.pass_obj
def serve(settings: Settings, bind: str | None, workers: int, header_timeout: float,
          body_timeout: float, dev: bool) -> None:
    """Serve the HTTP API: granian in production, Flask's server only with --dev.

    A request is read in full, its headers and its body each within their time limit,
    before it takes one of Flask's threads; a client that sends too slowly is cut off.
    """
    from preview_worker.logs import configure_logging
    from preview_worker.web.app import check_production, create_app

    configure_logging(settings.log_level)  # one format on the stream: JSON, like the server's
    bind = bind or settings.bind
    try:
        check_production(settings)
        if dev:
            host, _, port = bind.rpartition(":")
            create_app().run(host=host or "127.0.0.1", port=int(port))
            return
    except SettingsError as error:
        raise ConfigError(str(error)) from None
    from preview_worker.web.server import serve as serve_with_granian

    serve_with_granian(bind, workers, header_timeout, body_timeout)


@cli.command()
@click.option("--bind", help="host:port of the API [PREVIEW_BIND, 127.0.0.1:8000].")
@click.pass_obj
def run(settings: Settings, bind: str | None) -> None:
    """Run the whole service: the API (granian), a worker pool, and Redis if none is set.

    Ctrl-C stops it in order: the API, then the workers once their jobs end, Redis last.
    """
    from preview_worker.supervisor import run_service

    try:
        run_service(settings, bind or settings.bind)
    except ServiceError as error:
        raise click.ClickException(str(error)) from None


# `dev` is what `run` was first called; kept working, and out of --help where it was a twin.
cli.add_command(
    click.Command("dev", callback=run.callback, params=run.params, help=run.help, hidden=True)
)


@cli.group()
def dlq() -> None:
    """Inspect, requeue or purge the dead-letter queue."""


@dlq.command("list")
@click.pass_obj
def dlq_list(settings: Settings) -> None:
    """List dead-lettered jobs with why they failed."""
    echo_json(dead_letters.list_dead_letters(connection_of(settings), settings))


def run_on_dead_letters(
    settings: Settings,
    operation: dead_letters.Operation,
    job_id: str | None,
    every: bool,
    verb: str,
) -> None:
    """Apply a dead-letter operation to one job id or, with --all, to every dead letter."""
    if (job_id is None) == (not every):
        raise click.UsageError("give exactly one of a job id or --all")
    try:
        done = operation(connection_of(settings), settings, job_id)
    except dead_letters.NotDeadLettered as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{verb} {len(done)}: {' '.join(done)}")


@dlq.command("requeue")
@click.argument("job_id", required=False)
@click.option("--all", "every", is_flag=True, help="Requeue every dead-lettered job.")
@click.pass_obj
def dlq_requeue(settings: Settings, job_id: str | None, every: bool) -> None:
    """Put a dead-lettered job (or all) back on its queue with fresh retries."""
    run_on_dead_letters(settings, dead_letters.requeue, job_id, every, "requeued")


@dlq.command("purge")
@click.argument("job_id", required=False)
@click.option("--all", "every", is_flag=True, help="Purge every dead-lettered job.")
@click.pass_obj
def dlq_purge(settings: Settings, job_id: str | None, every: bool) -> None:
    """Delete a dead-lettered job (or all) for good."""
    run_on_dead_letters(settings, dead_letters.purge, job_id, every, "purged")


def main() -> None:
    """Run the command line."""
    cli(prog_name="preview-worker")
