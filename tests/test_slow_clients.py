"""Slow and stalled clients against the real `preview-worker serve`, over raw sockets.

Three kinds of stalled client: one byte of a request line then silence; headers trickled
a byte a second; a POST whose announced body never completes. However many of them hold
connections open, health answers within a second and a submission goes through; and the
server itself closes each of them once its header or body time limit has passed.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.slow_clients import body_begun, headers_begun, one_byte, trickle

from .conftest import payload, service_environment
from .processes import serving

TOKEN = "slow-token-0123456789abcdef"
STALLED = 16  # connections of each kind; 8 were enough to deny the gthread server
HEALTH = "/api/preview/worker/health"


# The same stalled clients as the benchmark's, which holds more of them for longer.
STALLERS: dict[str, Callable[[int], socket.socket]] = {
    "one byte": one_byte,
    "trickled headers": headers_begun,
    "unfinished body": body_begun,
}


@pytest.fixture
def stalled_by() -> Iterator[Callable[[int, int], dict[str, list[socket.socket]]]]:
    """Give an opener of stalled connections of every kind; trickle and close them after."""
    opened: list[socket.socket] = []
    stop = threading.Event()

    def open_stalled(port: int, count: int) -> dict[str, list[socket.socket]]:
        kinds = {kind: [opener(port) for _ in range(count)] for kind, opener in STALLERS.items()}
        for sockets in kinds.values():
            opened.extend(sockets)
        threading.Thread(
            target=trickle, args=(kinds["trickled headers"], stop), daemon=True
        ).start()
        return kinds

    yield open_stalled
    stop.set()
    for sock in opened:
        sock.close()


def port_of(base: str) -> int:
    """Return the port of a base URL."""
    return int(base.rpartition(":")[2])


def exchange(port: int, request: bytes, timeout: float) -> tuple[int, bytes]:
    """Send a whole request on a new connection; return the status and the body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def health(port: int) -> tuple[int, float]:
    """Ask for health with a 1 s timeout; return the status and the seconds it took."""
    started = time.monotonic()
    status, _ = exchange(
        port, f"GET {HEALTH} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n".encode(), 1.0
    )
    return status, time.monotonic() - started


def submit(port: int) -> tuple[int, bytes]:
    """Submit the minimal payload with the token; return the status and the answer's body."""
    body = json.dumps(payload(revision=41)).encode()
    return exchange(
        port,
        f"POST /api/preview/job HTTP/1.1\r\nHost: probe\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n".encode() + body,
        5.0,
    )


def still_open(sock: socket.socket) -> bool:
    """Tell whether a connection still waits on its client: no answer, no end from the server."""
    sock.setblocking(False)
    try:
        sock.recv(65536, socket.MSG_PEEK)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def closed_after(sock: socket.socket, started: float, limit: float) -> tuple[float, bytes]:
    """Read until the server closes a connection (at most limit s); return when, and what came."""
    received = b""
    sock.settimeout(max(0.1, started + limit - time.monotonic()))
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return float("inf"), received
    except OSError:
        pass  # reset: closed all the same
    return time.monotonic() - started, received


def test_stalled_clients_leave_health_and_submissions_answered(
    redis_url: str, data_dir: Path, stalled_by: Callable[[int, int], dict[str, list[socket.socket]]]
) -> None:
    """Given 16 stalled clients of each kind on the default limits, the API answers within 1 s."""
    environment = service_environment(redis_url, data_dir, PREVIEW_API_TOKENS=TOKEN)
    with serving(environment, workers=2) as base:
        port = port_of(base)
        kinds = stalled_by(port, STALLED)
        time.sleep(0.5)  # every stalled request has reached the server
        probes = []
        for _ in range(20):
            try:
                probes.append(health(port))
            except OSError:  # no answer within the second
                probes.append((0, float("inf")))
        status, body = submit(port)
        # The stalled connections were all still open while the API answered.
        waiting = {kind: sum(map(still_open, sockets)) for kind, sockets in kinds.items()}
        assert waiting == dict.fromkeys(STALLERS, STALLED)
    answered = [seconds for code, seconds in probes if code in (200, 503)]
    assert len(answered) == len(probes), probes
    assert max(answered) < 1.0
    assert status == 202, body
    assert json.loads(body)["jobId"]


@pytest.mark.parametrize(
    ("kind", "limit"),
    [("one byte", 2.0), ("trickled headers", 2.0), ("unfinished body", 3.0)],
)
def test_the_server_closes_a_stalled_connection_at_its_time_limit(
    redis_url: str,
    data_dir: Path,
    stalled_by: Callable[[int, int], dict[str, list[socket.socket]]],
    kind: str,
    limit: float,
) -> None:
    """Given 2 s for headers and 3 s for a body, each stalled client is closed at its limit."""
    environment = service_environment(redis_url, data_dir, PREVIEW_API_TOKENS=TOKEN)
    options = ("--header-timeout", "2", "--body-timeout", "3")
    with serving(environment, workers=1, options=options) as base:
        port = port_of(base)
        started = time.monotonic()
        sockets = stalled_by(port, 4)[kind]
        closed = [closed_after(sock, started, limit + 3.0) for sock in sockets]
        assert health(port)[0] in (200, 503)  # and the server still serves
    seconds = [when for when, _ in closed]
    assert all(limit - 0.5 <= when <= limit + 1.5 for when in seconds), (kind, seconds)
    if kind == "unfinished body":
        # The body's time limit is the service's own: it answers 408 with the envelope.
        for _, received in closed:
            head, _, body = received.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408"), received
            assert json.loads(body)["error"] == "request_timeout"
