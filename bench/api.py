"""Accepted jobs per second over HTTP against the real server, beside a raw enqueue loop.

The load generator runs on the same machine (threads with keep-alive connections), so its
own cost is part of every figure, as it would be for any client on these 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rq import Queue

from preview_worker.connections import connect
from preview_worker.embedded_redis import EmbeddedRedis, free_port

PAYLOADS = Path(__file__).resolve().parent.parent / "payloads"
TOKEN = "bench-token-0123456789abcdef"
MINIMAL: dict[str, Any] = json.loads((PAYLOADS / "preview_payload_minimal.json").read_text())


def body(number: int) -> bytes:
    """Return a distinct minimal payload, so every submission is a new job."""
    return json.dumps({**MINIMAL, "revision": number}).encode()


def post(connection: http.client.HTTPConnection, data: bytes) -> float:
    """Submit one payload; return the seconds the answer took."""
    start = time.perf_counter()
    connection.request("POST", "/api/preview/job", data, {
        "Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}",
    })
    answer = connection.getresponse()
    answer.read()
    if answer.status != 202:
        raise RuntimeError(f"answer {answer.status}")
    return time.perf_counter() - start


def post_batch(connection: http.client.HTTPConnection, numbers: list[int]) -> int:
    """Submit distinct payloads in one batch; return how many were accepted."""
    jobs = ",".join(body(number).decode() for number in numbers)
    connection.request("POST", "/api/preview/jobs", f'{{"jobs": [{jobs}]}}'.encode(), {
        "Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}",
    })
    answer = connection.getresponse()
    data = json.loads(answer.read())
    if answer.status != 200:
        raise RuntimeError(f"answer {answer.status}: {data}")
    return int(data["counts"]["accepted"])


def batch_rate(port: int, batches: int, size: int, threads: int,
               numbers: itertools.count[int]) -> float:
    """Send batches of distinct payloads from some threads; return jobs accepted per second."""
    accepted: list[int] = []
    lock = threading.Lock()
    shares = [[[next(numbers) for _ in range(size)] for _ in range(batches // threads)]
              for _ in range(threads)]

    def run(share: list[list[int]]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        done = sum(post_batch(connection, numbers) for numbers in share)
        with lock:
            accepted.append(done)

    workers = [threading.Thread(target=run, args=(share,)) for share in shares]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(accepted) / (time.perf_counter() - start)


def closed_loop(port: int, count: int, threads: int, numbers: itertools.count[int]) -> list[float]:
    """Send count submissions as fast as threads allow; return each one's latency."""
    latencies: list[float] = []
    lock = threading.Lock()

    def run(share: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = [post(connection, body(next(numbers))) for _ in range(share)]
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=run, args=(count // threads,)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return latencies


def request_bytes(number: int) -> bytes:
    """Return one whole HTTP request submitting a distinct payload, ready for a socket."""
    data = body(number)
    head = (f"POST /api/preview/job HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n")
    return head.encode() + data


async def paced_connection(port: int, schedule: list[float], numbers: itertools.count[int],
                           latencies: list[float]) -> None:
    """Send one submission at each due moment on one kept-alive connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for due in schedule:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        writer.write(request_bytes(next(numbers)))
        status = await reader.readline()
        length = 0
        while (line := await reader.readline()) != b"\r\n":
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        if b" 202 " not in status:
            raise RuntimeError(f"answer {status!r}")
        # From when it was due, not when it went: a late send counts as waiting.
        latencies.append(time.perf_counter() - due)
    writer.close()


def open_loop(port: int, rate: float, seconds: float, connections: int,
              numbers: itertools.count[int]) -> list[float]:
    """Send submissions at a fixed rate over some connections; return latencies.

    One asyncio thread sends them all: Python threads would take a large share of the
    2 cores from the server being measured.
    """
    latencies: list[float] = []
    start = time.perf_counter() + 0.2
    gap = connections / rate

    async def run() -> None:
        schedules = [
            [start + (offset / connections + beat) * gap for beat in range(int(seconds / gap))]
            for offset in range(connections)
        ]
        await asyncio.gather(*(paced_connection(port, schedule, numbers, latencies)
                               for schedule in schedules))

    asyncio.run(run())
    return latencies


def percentile(values: list[float], share: float) -> float:
    """Return a percentile of some latencies, in milliseconds."""
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def raw_enqueue_rate(url: str, count: int) -> float:
    """Return raw `Queue.enqueue` calls per second from one process, the baseline."""
    connection = connect(url)
    queue = Queue("raw", connection=connection)
    start = time.perf_counter()
    for number in range(count):
        queue.enqueue("preview_worker.jobs.render_preview", json.loads(body(number)))
    rate = count / (time.perf_counter() - start)
    connection.delete(queue.key)
    return rate


# wrk's script: every request a new job. Revisions are made of the run, the wrk thread and
# a counter, so no two requests of any run are duplicates (which would answer 200).
WRK_SCRIPT = """
local prefix, suffix = %s, %s
local base, counter, next_id = 0, 0, 0
function setup(thread)
  next_id = next_id + 1
  thread:set("id", next_id)
end
function init(args)
  base = tonumber(args[1]) * 1000000000 + tonumber(wrk.thread:get("id")) * 10000000
end
function request()
  counter = counter + 1
  return wrk.format("POST", "/api/preview/job",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer %s"},
    prefix .. tostring(base + counter) .. suffix)
end
"""
UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk_script(folder: str) -> str:
    """Write wrk's Lua script into a folder; return its path."""
    marker = 987654321
    prefix, suffix = json.dumps({**MINIMAL, "revision": marker}).split(str(marker))
    path = os.path.join(folder, "submit.lua")
    with open(path, "w", encoding="utf-8") as script:
        script.write(WRK_SCRIPT % (json.dumps(prefix), json.dumps(suffix), TOKEN))
    return path


def wrk_run(port: int, script: str, connections: int, seconds: int, run: int) -> dict[str, float]:
    """Load the API with wrk (a C client, 2 threads); return accepted/s, p50 and p99 in ms."""
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script,
         f"http://127.0.0.1:{port}", "--", str(run)],
        capture_output=True, text=True, check=True,
    ).stdout
    if "Non-2xx" in output:
        raise RuntimeError(f"wrk saw answers other than 2xx:\n{output}")
    figures = {"rate": float(found(r"Requests/sec:\s+([\d.]+)", output)[1])}
    for name, share in (("p50", "50"), ("p99", "99")):
        value, unit = found(rf"{share}%\s+([\d.]+)(us|ms|s)", output).groups()
        figures[name] = float(value) * UNITS[unit]
    return figures


def found(pattern: str, text: str) -> re.Match[str]:
    """Return the first match of a pattern in wrk's output, or stop saying what is missing."""
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"no {pattern!r} in wrk's output:\n{text}")
    return match


def serve(url: str, data: str, port: int) -> subprocess.Popen[bytes]:
    """Start `preview-worker serve` with 2 server processes and wait until it answers."""
    environment = {**os.environ, "REDIS_URL": url, "DATA_DIR": data, "PREVIEW_API_TOKENS": TOKEN,
                   "PREVIEW_QUEUE_MAX": "1000000", "PREVIEW_LOG_LEVEL": "WARNING"}
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "preview-worker"), "serve", "--workers", "2",
         "--bind", f"127.0.0.1:{port}"],
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/metrics")
            return server
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the server did not start")


def main() -> None:
    """Print HTTP throughput and latency next to the raw enqueue loop."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=1000)
    options = parser.parse_args()
    numbers = itertools.count()
    with EmbeddedRedis() as redis_server, tempfile.TemporaryDirectory() as data:
        port = free_port()
        server = serve(redis_server.url, data, port)
        try:
            closed_loop(port, 200, options.threads, numbers)  # warm up every process
            start = time.perf_counter()
            latencies = closed_loop(port, options.requests, options.threads, numbers)
            rate = len(latencies) / (time.perf_counter() - start)
            began = time.perf_counter()
            paced = open_loop(port, options.rate, options.seconds, options.threads, numbers)
            paced_rate = len(paced) / (time.perf_counter() - began)
            # A C client takes far less of the 2 cores than the Python threads above.
            script = wrk_script(data) if shutil.which("wrk") else None
            by_wrk = {
                connections: wrk_run(port, script, connections, 8, run)
                for run, connections in enumerate((8, 16, 32), start=1)
            } if script else {}
            batch_rate(port, 2, options.batch_size, 2, numbers)  # warm up
            batched = batch_rate(port, options.batches, options.batch_size, 2, numbers)
        finally:
            server.terminate()
            server.wait(30)
        raw = raw_enqueue_rate(redis_server.url, options.requests)
    print(f"as fast as possible, {options.threads} client threads, {len(latencies)} jobs:")
    print(f"  accepted/s {rate:7.0f}   p50 {percentile(latencies, 0.5):6.1f} ms"
          f"   p99 {percentile(latencies, 0.99):6.1f} ms")
    print(f"paced at {options.rate:.0f}/s for {options.seconds:.0f} s ({len(paced)} jobs, "
          f"{paced_rate:.0f}/s achieved), latency counted from when each was due:")
    print(f"  p50 {percentile(paced, 0.5):6.1f} ms   p99 {percentile(paced, 0.99):6.1f} ms"
          f"   mean {1000 * statistics.fmean(paced):6.1f} ms")
    for connections, figures in by_wrk.items():
        print(f"wrk, {connections} connections, 8 s: accepted/s {figures['rate']:7.0f}"
              f"   p50 {figures['p50']:6.1f} ms   p99 {figures['p99']:6.1f} ms")
    if not by_wrk:
        print("wrk is not installed (apt-get install wrk): no figures from a C client")
    print(f"batches of {options.batch_size} over HTTP, 2 client threads, {options.batches} "
          f"batches: {batched:7.0f} jobs/s ({batched / raw:.1f}x the raw loop)")
    print(f"raw Queue.enqueue loop, one process: {raw:7.0f}/s")
    if by_wrk:
        print(f"wrk at 8 connections / raw loop: {by_wrk[8]['rate'] / raw:.2f}x")


if __name__ == "__main__":
    main()
