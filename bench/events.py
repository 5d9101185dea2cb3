"""Open event streams against submits, and how long an event takes to reach its followers.

`preview-worker serve` (2 processes) on a fresh Redis. wrk's submits alone; the same with
STREAMS event streams held open by one asyncio client; the same again while a writer
appends events to random streams at RATE/s, each stamped with the moment it was written,
and every follower that receives one notes its delay. The client and the writer share
the 2 cores with the server, as wrk does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

# Run as a script from the checkout, beside bench/api.py, whose server and wrk it shares.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.api import TOKEN, percentile, serve, wrk_run, wrk_script  # noqa: E402
from preview_worker import events  # noqa: E402
from preview_worker.embedded_redis import EmbeddedRedis, free_port  # noqa: E402


async def follow(port: int, job_id: str, delays: list[float], opened: list[int]) -> None:
    """Hold one event stream open until cancelled; note each stamped event's delay."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((f"GET /api/preview/job/{job_id}/events HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {TOKEN}\r\n\r\n").encode())
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"stream answer {status!r}")
    opened.append(1)
    try:
        while line := await reader.readline():
            if b'"sent":' in line:
                sent = json.loads(line.split(b"data: ", 1)[1])["sent"]
                delays.append(time.time() - sent)
    finally:
        writer.close()


async def hold_streams(port: int, job_ids: list[str], delays: list[float], opened: list[int],
                       stop: asyncio.Event) -> None:
    """Open every stream, a few at a time, and keep them until told to stop."""
    tasks = []
    for job_id in job_ids:
        tasks.append(asyncio.create_task(follow(port, job_id, delays, opened)))
        if len(tasks) % 50 == 0:
            await asyncio.sleep(0.05)
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def write_events(url: str, job_ids: list[str], rate: float, seconds: float) -> int:
    """Append stamped progress events to random streams at a rate; return how many."""
    connection = redis.Redis.from_url(url)
    written, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        events.append(connection, random.choice(job_ids), "progress",
                      {"stage": "page", "percent": 20, "sent": time.time()}, 3600)
        written += 1
        time.sleep(max(0.0, start + written / rate - time.perf_counter()))
    return written


def main() -> None:
    """Print submits/s with and without open streams, and the events' delays."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200.0, help="events written per second")
    parser.add_argument("--seconds", type=int, default=8)
    options = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed (apt-get install wrk)")
    with EmbeddedRedis() as redis_server, tempfile.TemporaryDirectory() as data:
        connection = redis.Redis.from_url(redis_server.url)
        job_ids = [f"bench-stream-{n}" for n in range(options.streams)]
        for job_id in job_ids:  # a stream exists once its job has an event
            events.append(connection, job_id, "queued", {"queue": "normal"}, 3600)
        port = free_port()
        server = serve(redis_server.url, data, port)
        try:
            script = wrk_script(data)
            wrk_run(port, script, 8, 3, 0)  # warm up
            alone = wrk_run(port, script, 8, options.seconds, 1)
            delays: list[float] = []
            opened: list[int] = []
            loop = asyncio.new_event_loop()
            stop = asyncio.Event()
            holder = threading.Thread(target=loop.run_until_complete, args=(
                hold_streams(port, job_ids, delays, opened, stop),))
            holder.start()
            deadline = time.monotonic() + 60
            while len(opened) < options.streams and time.monotonic() < deadline:
                time.sleep(0.1)
            quiet = wrk_run(port, script, 8, options.seconds, 2)
            writer = threading.Thread(target=write_events, args=(
                redis_server.url, job_ids, options.rate, options.seconds + 1))
            writer.start()
            busy = wrk_run(port, script, 8, options.seconds, 3)
            writer.join()
            time.sleep(1)
            loop.call_soon_threadsafe(stop.set)
            holder.join(30)
        finally:
            server.terminate()
            server.wait(30)
    print(f"wrk, 8 connections, {options.seconds} s, alone: {alone['rate']:7.0f} submits/s "
          f"(p99 {alone['p99']:.1f} ms)")
    print(f"with {len(opened)} open event streams: {quiet['rate']:7.0f} submits/s "
          f"(p99 {quiet['p99']:.1f} ms), {quiet['rate'] / alone['rate']:.0%} of alone")
    print(f"and {options.rate:.0f} events/s written to them: {busy['rate']:7.0f} submits/s "
          f"(p99 {busy['p99']:.1f} ms), {busy['rate'] / alone['rate']:.0%} of alone")
    if delays:
        print(f"{len(delays)} events delivered: delay from write to follower p50 "
              f"{percentile(delays, 0.5):.1f} ms, p99 {percentile(delays, 0.99):.1f} ms, "
              f"max {max(delays) * 1000:.1f} ms")

if __name__ == "__main__":
    main()
