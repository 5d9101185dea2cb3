"""`preview-worker run`: the whole service from one command, and nothing left when it stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from preview_worker.embedded_redis import free_port

from .conftest import ROOT, payload
from .processes import answers, wait_until


def fetch(url: str, body: Any = None) -> Any:
    """Call the API without a token (development runs open); return the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def group_is_gone(leader: int) -> bool:
    """Tell whether no process of a process group is left."""
    try:
        os.killpg(leader, 0)
    except ProcessLookupError:
        return True
    return False


def test_one_command_runs_api_worker_and_redis_and_stops_cleanly(tmp_path: Path) -> None:
    """Given no REDIS_URL, run serves a job end to end; SIGTERM leaves no process behind."""
    port = free_port()
    environment = {key: value for key, value in os.environ.items()
                   if key != "REDIS_URL" and not key.startswith("PREVIEW_")}
    service = subprocess.Popen(
        [str(Path(sys.executable).parent / "preview-worker"), "run", "--bind", f"127.0.0.1:{port}"],
        env={**environment, "DATA_DIR": str(tmp_path / "data")},
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/api/preview"
    try:
        wait_until(lambda: answers(base + "/metrics"), 60, "the API")
        job = fetch(base + "/job", payload())
        wait_until(lambda: fetch(f"{base}/job/{job['jobId']}")["status"] == "finished", 60, "job")
        status = fetch(f"{base}/job/{job['jobId']}")
        link = status["result"]["artifacts"][0]["url"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{link}", timeout=10) as artifact:
            assert artifact.status == 200 and artifact.read()
        for bind, says in ((f"127.0.0.1:{free_port()}", "already runs on this DATA_DIR"),
                           (f"127.0.0.1:{port}", "already listens")):
            second = subprocess.run(
                [str(Path(sys.executable).parent / "preview-worker"), "run", "--bind", bind],
                env={**environment, "DATA_DIR": str(tmp_path / "data")},
                capture_output=True, text=True, timeout=30,
            )
            assert second.returncode == 1 and says in second.stderr
    finally:
        service.send_signal(signal.SIGTERM)
        assert service.wait(60) == 0
    wait_until(lambda: group_is_gone(service.pid), 30, "every process to exit")



def rq_workers(redis_client: Any) -> int:
    """Return how many workers RQ has registered."""
    return int(redis_client.scard("rq:workers"))


def test_ctrl_c_on_make_run_stops_everything_in_order(
    tmp_path: Path, redis_url: str, redis_client: Any
) -> None:
    """Given `make run`, SIGINT to its whole process group (what Ctrl-C sends) stops the API,
    then the workers once drained, with no traceback and no worker left registered."""
    port = free_port()
    log = tmp_path / "run.log"
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("PREVIEW_") and key != "REDIS_URL"}
    environment |= {"REDIS_URL": redis_url, "DATA_DIR": str(tmp_path / "data")}
    with open(log, "wb") as output:
        make = subprocess.Popen(
            ["make", "-s", "run", f"BIND=127.0.0.1:{port}"], cwd=ROOT, env=environment,
            start_new_session=True, stdout=output, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}/api/preview"
    try:
        wait_until(lambda: answers(base + "/metrics"), 60, "the API")
        wait_until(lambda: rq_workers(redis_client) == 2, 30, "two registered workers")
        job = fetch(base + "/job", payload(revision=81))
        wait_until(lambda: fetch(f"{base}/job/{job['jobId']}")["status"] == "finished", 60, "job")
        os.killpg(make.pid, signal.SIGINT)
        make.wait(60)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
    wait_until(lambda: group_is_gone(make.pid), 30, "every process to exit")
    text = log.read_text("utf-8", "replace")
    assert "Traceback" not in text, text
    said = [line for line in text.splitlines() if line.startswith("preview-worker run:")]
    assert said == [
        "preview-worker run: stopping the API",
        "preview-worker run: the API is stopped; the workers finish their jobs",
        "preview-worker run: the workers are stopped",
        "preview-worker run: stopped",
    ], text
    assert rq_workers(redis_client) == 0
    assert not answers(base + "/metrics")


def test_run_stops_the_rest_when_the_api_dies(
    tmp_path: Path, redis_url: str, redis_client: Any
) -> None:
    """Given the API process killed, run says so, stops the workers and exits 1."""
    port = free_port()
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("PREVIEW_") and key != "REDIS_URL"}
    environment |= {"REDIS_URL": redis_url, "DATA_DIR": str(tmp_path / "data")}
    service = subprocess.Popen(
        [str(Path(sys.executable).parent / "preview-worker"), "run", "--bind",
         f"127.0.0.1:{port}"], env=environment, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/api/preview/metrics"), 60, "API")
        wait_until(lambda: rq_workers(redis_client) == 2, 30, "two registered workers")
        api = next(pid for pid in children(service.pid) if b"serve" in cmdline(pid))
        os.killpg(api, signal.SIGKILL)  # the API's own session: the server and its workers
        out, _ = service.communicate(timeout=60)
    finally:
        if service.poll() is None:
            os.killpg(service.pid, signal.SIGKILL)
    text = out.decode("utf-8", "replace")
    assert service.returncode == 1
    assert "the API exited with -9" in text and "Traceback" not in text
    assert rq_workers(redis_client) == 0


def children(pid: int) -> list[int]:
    """Return the ids of a process's children, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def cmdline(pid: int) -> bytes:
    """Return a process's command line, or nothing once it is gone."""
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""
