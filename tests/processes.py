"""Real worker processes for tests: started in their own process group, always stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from preview_worker.embedded_redis import free_port

BIN = Path(sys.executable).parent


def launch(
    arguments: list[str], environment: Mapping[str, str], log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start `preview-worker ARGUMENTS` in a new process group; its output to a log if given."""
    with open(log or os.devnull, "ab") as output:
        return subprocess.Popen(
            [str(BIN / "preview-worker"), *arguments],
            env={**os.environ, **environment},
            start_new_session=True,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def start_worker(
    environment: Mapping[str, str], *args: str, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start `preview-worker worker ARGS` in a new process group; its output to a log if given."""
    return launch(["worker", *args], environment, log)


def start_stock_worker(environment: Mapping[str, str], *args: str) -> subprocess.Popen[bytes]:
    """Start a stock `rq worker` with the given settings and arguments."""
    return subprocess.Popen(
        [str(BIN / "rq"), "worker", "-u", environment["REDIS_URL"], *args],
        env={**os.environ, **environment},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def running_worker(
    environment: Mapping[str, str], *args: str, stock: bool = False, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `preview-worker worker ARGS` (or, stock, `rq worker ARGS`) for a block; then stop it."""
    worker = start_stock_worker(environment, *args) if stock else start_worker(
        environment, *args, log=log
    )
    try:
        yield worker
    finally:
        stop(worker)


def kill_group(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Send a signal to a worker's whole process group."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """Drain a worker with SIGTERM, kill its group if it will not exit; return its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    kill_group(process)
    return process.wait()


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll check() until it holds; return the seconds it took, or fail naming what."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def answers(url: str) -> bool:
    """Tell whether an HTTP URL answers at all."""
    try:
        urllib.request.urlopen(url, timeout=1).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def serving(
    environment: Mapping[str, str],
    workers: int,
    log: Path | None = None,
    options: tuple[str, ...] = (),
) -> Iterator[str]:
    """Run `preview-worker serve OPTIONS` on a free port; yield its base URL, then stop it."""
    port = free_port()
    server = launch(
        ["serve", "--bind", f"127.0.0.1:{port}", "--workers", str(workers), *options],
        environment,
        log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(base + "/api/preview/metrics"), 30, "preview-worker serve")
        yield base
    finally:
        stop(server)
