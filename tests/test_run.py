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

from .conftest import payload
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

