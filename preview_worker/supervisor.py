"""The supervisor of `preview-worker run` and `worker`: Redis for development, API, worker pool."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import redis

from preview_worker.connections import connect, require_persistence
from preview_worker.embedded_redis import (
    EmbeddedRedis,
    development_url_file,
    running_development_url,
)
from preview_worker.queueing import register_queues
from preview_worker.settings import Settings, SettingsError
from preview_worker.worker import PoolOptions, WorkerPool

API_STOP_TIMEOUT = 30  # seconds the server may take to drain its requests on SIGTERM


class ServiceError(RuntimeError):
    """The service cannot start: its port or its development Redis is taken."""


@contextlib.contextmanager
def service_redis(settings: Settings) -> Iterator[str]:
    """Yield REDIS_URL, or start an embedded persistent Redis under DATA_DIR for development."""
    if settings.redis_url:
        yield settings.redis_url
        return
    if settings.production:
        raise ServiceError(
            "PREVIEW_ENV=production needs REDIS_URL: the embedded Redis is for development"
        )
    url_file = development_url_file(settings.data_dir)
    running = running_development_url(settings.data_dir)
    if running and answers(running):
        raise ServiceError(
            f"a development service already runs on this DATA_DIR (Redis at {running}); "
            "stop it first, or set REDIS_URL to share its Redis"
        )
    with EmbeddedRedis(data_dir=url_file.parent, persistent=True) as server:
        url_file.write_text(server.url, "utf-8")
        print(f"started an embedded Redis at {server.url} (set REDIS_URL to use your own)",
              flush=True)
        try:
            yield server.url
        finally:
            url_file.unlink(missing_ok=True)


def answers(url: str) -> bool:
    """Tell whether a Redis answers at a URL."""
    with connect(url) as connection:
        try:
            return bool(connection.ping())
        except redis.RedisError:
            return False


def port_is_free(bind: str) -> bool:
    """Tell whether nothing listens on a host:port yet."""
    host, _, port = bind.rpartition(":")
    with socket.socket() as probe:
        return probe.connect_ex((host or "127.0.0.1", int(port))) != 0


def check_redis(url: str) -> redis.Redis:
    """Return a connection to a Redis that answers, or raise ServiceError saying why not."""
    connection = connect(url)
    try:
        connection.ping()
    except redis.RedisError as error:
        connection.close()
        # The error names the cause (refused, wrong password), never the URL's password.
        raise ServiceError(f"Redis is unreachable: {error}") from None
    return connection


def run_workers(settings: Settings, options: PoolOptions) -> None:
    """Run a worker pool until it is told to stop, on a Redis that answers first."""
    with service_redis(settings) as url:
        # A wrong password or address, or a volatile Redis: one line, not a crash loop.
        connection = check_redis(url)
        try:
            require_persistence(connection, settings)
            register_queues(connection, settings)
        except SettingsError as error:
            raise ServiceError(str(error)) from None
        except redis.RedisError as error:  # a full Redis: the pool starts, and backs off
            print(f"could not list the queues in Redis: {error}", file=sys.stderr, flush=True)
        finally:
            connection.close()
        WorkerPool.for_settings(url, settings, options).run()


def local_origins(bind: str) -> list[str]:
    """Return the origins a browser on this machine opens the service by, for its dashboard."""
    host, _, port = bind.rpartition(":")
    if host in ("", "0.0.0.0", "127.0.0.1", "localhost", "[::]", "[::1]"):
        return [f"http://localhost:{port}", f"http://127.0.0.1:{port}", f"http://[::1]:{port}"]
    return [f"http://{host}:{port}"]


def run_service(settings: Settings, bind: str) -> None:
    """Run the whole service: the API (granian), a worker pool, and Redis if none is set."""
    if not port_is_free(bind):
        raise ServiceError(f"something already listens on {bind}: is the service running?")
    with service_redis(settings) as url:
        environment = {**os.environ, "REDIS_URL": url}
        if not settings.allowed_origins:
            environment["PREVIEW_ALLOWED_ORIGINS"] = ",".join(local_origins(bind))
        api = subprocess.Popen(
            [sys.executable, "-m", "preview_worker", "serve", "--bind", bind],
            env=environment,
            start_new_session=True,  # Ctrl-C reaches run alone, which stops all in order
        )
        base = f"http://{bind}"
        print(f"API        {base}/api/preview/job\n"
              f"dashboard  {base}/rq/\n"
              f"metrics    {base}/metrics\n"
              f"health     {base}/api/preview/worker/health\n"
              "Ctrl-C stops it all.", flush=True)
        died: list[int] = []  # the exit code of an API that stopped without being asked

        def api_gone() -> str | None:
            if api.poll() is None:
                return None
            died.append(api.returncode)
            return f"the API exited with {api.returncode}"

        pool = WorkerPool.for_settings(url, settings)
        pool.on_stop = lambda: stop_api(api)
        pool.stop_when = api_gone
        try:
            pool.run()
        finally:
            stop_api(api)
            say("the workers are stopped; stopping Redis" if not settings.redis_url else
                "the workers are stopped")
    say("stopped")
    if died:
        raise ServiceError(f"the API exited with {died[0]}; everything else was stopped")


def say(line: str) -> None:
    """Tell the person at the terminal what run is doing."""
    print(f"preview-worker run: {line}", flush=True)


def stop_api(api: subprocess.Popen[bytes]) -> None:
    """Stop the API first, letting it answer the requests it holds (SIGTERM drains them)."""
    if api.poll() is not None:
        return
    say("stopping the API")
    api.terminate()
    try:
        api.wait(API_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        api.kill()
        api.wait()
    say("the API is stopped; the workers finish their jobs")
