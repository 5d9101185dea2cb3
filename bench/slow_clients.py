"""Slow and stalled clients against `preview-worker serve`: does the API still answer?

For each kind of client (one byte then silence, headers trickled a byte a second, a POST
whose body never completes, connections that send nothing, kept-alive connections left
idle), the script holds that many connections open, sends 100 health probes (1 s timeout
each) and one submission, and, with --watch, waits to see when the server closes them.
Everything runs on loopback, bounded in count and time.

    .venv/bin/python bench/slow_clients.py [--clients 16] [--idle 500] [--watch 25]
        [--kinds "one byte,silent"] [--command "other server, {port} for its port"]
        [-- serve options, e.g. --header-timeout 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from preview_worker.embedded_redis import EmbeddedRedis, free_port

PAYLOADS = Path(__file__).resolve().parent.parent / "payloads"
MINIMAL: dict[str, Any] = json.loads((PAYLOADS / "preview_payload_minimal.json").read_text())
HEALTH = "/api/preview/worker/health"


def one_byte(port: int) -> socket.socket:
    """Open a connection that sends the first byte of a request, then nothing."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"G")
    return sock


def headers_begun(port: int) -> socket.socket:
    """Open a connection whose headers have begun; trickle() sends the rest a byte a second."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"GET {HEALTH} HTTP/1.1\r\nHost: x\r\nX-Slow: ".encode())
    return sock


def body_begun(port: int) -> socket.socket:
    """Open a POST that announces 1000 bytes of body and sends 10 of them."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /api/preview/job HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{\"tutorial"
    )
    return sock


def silent(port: int) -> socket.socket:
    """Open a connection that sends nothing at all."""
    return socket.create_connection(("127.0.0.1", port))


def kept_alive(port: int) -> socket.socket:
    """Open a connection, make one health request on it, read the answer, keep it open."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(30)
    sock.sendall(f"GET {HEALTH} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(65536)
    head, _, rest = answer.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(rest) < length:
        rest += sock.recv(65536)
    return sock


KINDS: dict[str, Callable[[int], socket.socket]] = {
    "one byte": one_byte,
    "trickled headers": headers_begun,
    "unfinished body": body_begun,
    "silent": silent,
    "kept alive": kept_alive,
}


def trickle(sockets: list[socket.socket], stop: threading.Event) -> None:
    """Send one more header byte a second on each socket until stopped or closed."""
    while not stop.wait(1.0):
        for sock in sockets:
            try:
                sock.sendall(b"a")
            except OSError:
                pass


def probe(port: int) -> float | None:
    """Ask for health once on a new connection; return the seconds it took, None past 1 s."""
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        connection.request("GET", HEALTH)
        connection.getresponse().read()
    except OSError:
        return None
    finally:
        connection.close()
    return time.perf_counter() - start


def submit(port: int) -> int | str:
    """Submit the minimal payload once (5 s timeout); return the status or what went wrong."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0)
    body = json.dumps({**MINIMAL, "revision": int(time.time() * 1000)}).encode()
    try:
        connection.request("POST", "/api/preview/job", body, {"Content-Type": "application/json"})
        return connection.getresponse().status
    except OSError as error:
        return type(error).__name__
    finally:
        connection.close()


def closed_at(sockets: list[socket.socket], started: float, watch: float) -> list[float | None]:
    """Wait up to watch seconds; return when the server closed each socket (None: never)."""
    found: list[float | None] = [None] * len(sockets)
    for sock in sockets:
        sock.setblocking(False)
    while time.monotonic() - started < watch and None in found:
        for index, sock in enumerate(sockets):
            if found[index] is not None:
                continue
            try:
                if sock.recv(65536) == b"":
                    found[index] = time.monotonic() - started
            except BlockingIOError:
                pass
            except OSError:
                found[index] = time.monotonic() - started
        time.sleep(0.05)
    return found


@contextmanager
def server(extra: list[str], command: str | None) -> Iterator[int]:
    """Run `preview-worker serve --workers 2` on a free port with its own Redis; yield the port.

    A command given instead ({port} in it stands for the port) is run in its place.
    """
    with EmbeddedRedis() as redis_server, tempfile.TemporaryDirectory() as data:
        port = free_port()
        environment = {**os.environ, "REDIS_URL": redis_server.url, "DATA_DIR": data,
                       "PREVIEW_LOG_LEVEL": "WARNING"}
        arguments = shlex.split(command.format(port=port)) if command else [
            sys.executable, "-m", "preview_worker", "serve", "--workers", "2",
            "--bind", f"127.0.0.1:{port}", *extra]
        process = subprocess.Popen(
            arguments,
            env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(300):
                if probe(port) is not None:
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError("the server did not start")
            yield port
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def run_kind(port: int, kind: str, clients: int, watch: float) -> dict[str, Any]:
    """Hold clients stalled connections of one kind open; probe, submit, and watch them."""
    sockets = [KINDS[kind](port) for _ in range(clients)]
    started = time.monotonic()
    stop = threading.Event()
    if kind == "trickled headers":
        threading.Thread(target=trickle, args=(sockets, stop), daemon=True).start()
    time.sleep(0.5)
    latencies = [probe(port) for _ in range(100)]
    status = submit(port)
    answered = [latency for latency in latencies if latency is not None]
    closed = closed_at(sockets, started, watch) if watch else []
    stop.set()
    for sock in sockets:
        sock.close()
    time.sleep(1.5)  # let the server notice the closed sockets before the next kind
    return {
        "answered": len(answered),
        "p50": 1000 * statistics.median(answered) if answered else None,
        "max": 1000 * max(answered) if answered else None,
        "submit": status,
        "closed": [round(value, 1) for value in closed if value is not None],
        "open": sum(value is None for value in closed),
    }


def main() -> None:
    """Print, for each kind of stalled client, how the API answered meanwhile."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--idle", type=int, default=500,
                        help="silent and kept-alive connections to hold")
    parser.add_argument("--watch", type=float, default=0.0,
                        help="seconds to wait for the server to close stalled connections")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help="comma-separated kinds of client, of: " + ", ".join(KINDS))
    parser.add_argument("--command", help="another server to run, {port} for its port")
    parser.add_argument("serve_options", nargs="*", help="passed on to preview-worker serve")
    options = parser.parse_args()
    with server(options.serve_options, options.command) as port:
        for kind in options.kinds.split(","):
            count = options.idle if kind in ("silent", "kept alive") else options.clients
            figures = run_kind(port, kind, count, options.watch)
            p50 = "-" if figures["p50"] is None else f"{figures['p50']:.1f} ms"
            worst = "-" if figures["max"] is None else f"{figures['max']:.1f} ms"
            line = (f"{count:5d} {kind:17s} health answered {figures['answered']:3d}/100"
                    f"  p50 {p50:>9s}  max {worst:>9s}  submit {figures['submit']}")
            if options.watch:
                closed = figures["closed"]
                span = f"{min(closed)}-{max(closed)} s" if closed else "-"
                line += f"  closed by server {len(closed)} ({span}), still open {figures['open']}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
