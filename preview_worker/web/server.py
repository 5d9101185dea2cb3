"""Serving the application: granian reads every request in full, then Flask answers it.

granian (Rust, hyper) owns the sockets: it reads a request's headers within a time limit,
outside Python, and hands the request to ReadFirst, an ASGI application on each worker
process's event loop. ReadFirst reads the body there, within its own time limit and the
body size limit, and only then gives the complete request to Flask on one of a few Python
threads. A client that sends slowly, or stops, costs a socket and a coroutine, never a
thread: the threads only ever run complete requests.

A response with a Content-Length (every JSON answer, every artifact) is produced whole on
the thread and written out by the event loop, so a slow reader holds no thread either. A
response without one is streamed: each chunk is pulled on a thread as it comes. That is
why long-lived streams (a job's Server-Sent Events) belong here, as coroutines on the event
loop reading Redis with redis.asyncio, rather than in Flask, where each would hold a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings
from granian.server.mp import MPServer, WorkerProcess

from preview_worker.logs import FIELDS
from preview_worker.observe.prometheus import open_event_streams
from preview_worker.signing import API_PREFIX, ArtifactSigner
from preview_worker.web.api import EVENTS_HANDOFF, EVENTS_ON_LOOP
from preview_worker.web.app import create_app
from preview_worker.web.shared import REQUEST_ID, preview_of
from preview_worker.web.streams import EventHub, hub_stream

# prometheus_client's own switch for multiprocess metrics; its files live in this folder.
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

# Python threads per process that run Flask on complete requests. Two, not more: each
# thread more contends for the GIL with the event loop (wrk, 8 connections: 654-727/s with
# four, 687-946/s with two), while a long request (a batch) still leaves one free.
THREADS = 2
STOP_TIMEOUT = 25  # seconds a stopping worker may take to finish its requests, then killed
MAX_REQUEST_TARGET = 4094  # bytes of path and query; a longer one answers 414
MAX_HEADER_TIMEOUT = 60.0  # granian takes at most 60 s (the defaults are the command's)
CONNECTIONS = 2048  # connections each process holds open at once; more wait to be accepted
SPOOL_BYTES = 64 * 1024  # a body larger than this waits for Flask in a temporary file

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# A proxy on this host that ends TLS says so in one of these headers (gunicorn's defaults).
TRUSTED_PROXIES = {"127.0.0.1", "::1"}
SECURE_SCHEME_HEADERS = {"x-forwarded-proto": "https", "x-forwarded-protocol": "ssl",
                         "x-forwarded-ssl": "on"}

# A query string up to the next space or quote: where a request line's secrets travel.
QUERY = re.compile(r"\?[^\s'\"]*")
# What may stand in a logged request target as it is; anything else is percent-encoded,
# so a quote, a space or a control byte cannot forge or split a log line.
LOGGABLE = re.compile(rb"[^\x21\x23-\x5b\x5d-\x7e]")

access_log = logging.getLogger("preview_worker.access")


class WithoutQueries(logging.Filter):
    """Cuts query strings out of the server's own messages, such as a bad request line."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message without queries; keep the record."""
        record.msg = QUERY.sub("?-", record.getMessage())
        record.args = None
        return True


class Disconnected(Exception):
    """The client went away before its request was complete."""


class Body:
    """A request body as it is read: in memory up to SPOOL_BYTES, in a temporary file past."""

    def __init__(self) -> None:
        self.file = tempfile.SpooledTemporaryFile(SPOOL_BYTES)
        self.size = 0

    def write(self, chunk: bytes) -> None:
        """Add a chunk of the body."""
        self.file.write(chunk)
        self.size += len(chunk)

    def rewound(self) -> Body:
        """Return the body ready to be read from its start."""
        self.file.seek(0)
        return self


@dataclass
class Answer:
    """What Flask answered: status, headers, the body so far and, when streamed, the rest."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    rest: Iterator[bytes] | None = None
    close: Callable[[], None] | None = None

    def header(self, name: bytes) -> str | None:
        """Return the value of one header of the answer (lower-case name), or None."""
        return next((value.decode("latin-1") for key, value in self.headers if key == name),
                    None)


def logged_target(raw_path: bytes) -> str:
    """Return a request's path for the access log: no query, nothing that breaks a line."""
    return LOGGABLE.sub(lambda found: b"%%%02X" % found[0][0], raw_path).decode("ascii")


def log_access(scope: Scope, answer: Answer, size: int, headers: dict[str, str],
               started: float) -> None:
    """Log one request as a JSON line like every other, with the request id it was answered
    under, and without the query, the user or the referer's query."""
    method, path = scope.get("method", "-"), logged_target(scope.get("raw_path") or b"")
    request_id = next(
        (value.decode("latin-1") for name, value in answer.headers if name == b"x-request-id"),
        None,
    )
    access_log.info("%s %s %d", method, path, answer.status, extra={
        "requestId": request_id,
        "method": method,
        "path": path,
        "status": answer.status,
        "bytes": size,
        "durationMs": round((time.monotonic() - started) * 1000, 3),
        "remoteAddr": (scope.get("client") or ("-", 0))[0],
        "protocol": f"HTTP/{scope.get('http_version', '1.1')}",
        "referer": QUERY.sub("", headers.get("referer", "")) or None,
        "userAgent": headers.get("user-agent"),
    })


def request_headers(scope: Scope) -> dict[str, str]:
    """Return a request's headers by lower-case name, repeated ones joined as WSGI joins them."""
    joined: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name in joined:
            value = joined[name] + ("; " if name == "cookie" else ",") + value
        joined[name] = value
    return joined


def wsgi_environ(scope: Scope, headers: dict[str, str], body: Body) -> dict[str, Any]:
    """Build the WSGI environ of a complete request whose body has been read."""
    server = scope.get("server") or ("127.0.0.1", 0)
    client = scope.get("client") or ("", 0)
    raw_path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"").decode("latin-1")
    target = raw_path.decode("latin-1") + (f"?{query}" if query else "")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode().decode("latin-1"),
        "PATH_INFO": scope["path"].encode().decode("latin-1"),
        "QUERY_STRING": query,
        "RAW_URI": target,
        "REQUEST_URI": target,
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": str(client[0]),
        "REMOTE_PORT": str(client[1]),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": body.file,
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for name, value in headers.items():
        if "_" in name:
            continue  # X-Forwarded_For must not pass for X-Forwarded-For (gunicorn drops it too)
        if name == "transfer-encoding":
            continue  # the body is read and de-chunked: what Flask gets has a length
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = f"HTTP_{key}"
        environ[key] = value
    if str(client[0]) in TRUSTED_PROXIES and any(
        headers.get(name) == value for name, value in SECURE_SCHEME_HEADERS.items()
    ):
        environ["wsgi.url_scheme"] = "https"  # a TLS proxy on this host, as gunicorn trusted
    if "content-length" not in headers:
        # A chunked body, read to its end here: its length is now known. Past the limit,
        # the length says so and Flask answers 413 without reading it.
        environ["CONTENT_LENGTH"] = str(body.size)
    return environ


def envelope(status: int, error: str, message: str, headers: dict[str, str]) -> Answer:
    """Return the service's JSON error envelope for an answer given before Flask is asked."""
    given = headers.get("x-request-id", "")
    request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
    body = (f'{{"error": "{error}", "message": "{message}", '
            f'"requestId": "{request_id}"}}').encode()
    return Answer(status, [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
        (b"connection", b"close"),
    ], body)


def call_wsgi(app: WSGIApp, environ: dict[str, Any]) -> Answer:
    """Run a WSGI application on a complete request (on a pool thread); return its answer."""
    started: list[Any] = []
    written: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status, headers]
        return written.append

    result = app(environ, start_response)
    close = getattr(result, "close", None)
    streamed = False
    try:
        chunks = iter(result)
        first = b"".join(written) + next(chunks, b"")
        status, headers = started
        code = int(status.split()[0])
        raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        if not any(name == b"content-length" for name, _ in raw):
            streamed = True  # the event loop pulls the rest, then closes it
            return Answer(code, raw, first, chunks, close)
        # A body of known size: produce all of it here, so that no thread waits on the client.
        return Answer(code, raw, first + b"".join(chunks))
    finally:
        if close is not None and not streamed:
            close()


class ReadFirst:
    """ASGI application that reads a request in full, then runs a WSGI application on it."""

    def __init__(self, app: WSGIApp, body_timeout: float, max_body: int,
                 threads: int = THREADS, larger: dict[str, int] | None = None,
                 streams: EventStreams | None = None) -> None:
        self.app = app
        self.streams = streams  # serves event streams on the loop; None: Flask streams them
        self.body_timeout = body_timeout
        self.max_body = max_body
        self.larger = larger or {}  # path -> its own, larger body limit (the batch submit)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="flask")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one HTTP request; other kinds of scope (granian sends none) are ignored."""
        if scope["type"] != "http":
            return
        headers = request_headers(scope)
        started = time.monotonic()
        try:
            answer = await self.answer(scope, headers, receive)
        except Disconnected:
            return
        handoff = answer.header(HANDOFF)
        if handoff is not None and self.streams is not None:
            await self.streams.serve(scope, headers, answer, handoff, receive, send, started)
            return
        await self.write(scope, headers, answer, send, started)

    async def answer(self, scope: Scope, headers: dict[str, str], receive: Receive) -> Answer:
        """Read the body within its time limit, then have the application answer."""
        target = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b""))
        if target > MAX_REQUEST_TARGET:
            return envelope(414, "uri_too_long", "the request target is too long", headers)
        try:
            limit = self.larger.get(scope.get("path", ""), self.max_body)
            body = await asyncio.wait_for(
                self.read_body(headers, receive, limit), self.body_timeout
            )
        except asyncio.TimeoutError:
            return envelope(408, "request_timeout",
                            "the request body did not arrive in time", headers)
        environ = wsgi_environ(scope, headers, body)
        if self.streams is not None:
            environ[EVENTS_ON_LOOP] = True
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.pool, call_wsgi, self.app, environ)
        except Exception:  # Flask answers its own errors; this is the server's last resort
            logging.getLogger(__name__).exception("the application failed")
            return envelope(500, "internal_error", "something went wrong on our side", headers)
        finally:
            body.file.close()

    async def read_body(self, headers: dict[str, str], receive: Receive, limit: int) -> Body:
        """Read a request's body up to one byte past the limit; past it, stop reading."""
        body = Body()
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            return body  # Flask refuses it from its announced length, unread
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise Disconnected
                body.write(message.get("body", b""))
                if body.size > limit or not message.get("more_body", False):
                    return body.rewound()
        except BaseException:
            body.file.close()
            raise

    async def write(self, scope: Scope, headers: dict[str, str], answer: Answer,
                    send: Send, started: float) -> None:
        """Send an answer, pulling a streamed body's chunks on a pool thread; log it."""
        size = len(answer.body)
        loop = asyncio.get_running_loop()
        try:
            await send({"type": "http.response.start", "status": answer.status,
                        "headers": answer.headers})
            streamed = answer.rest is not None
            await send({"type": "http.response.body", "body": answer.body,
                        "more_body": streamed})
            while answer.rest is not None:
                chunk = await loop.run_in_executor(self.pool, next, answer.rest, None)
                if chunk is None:
                    await send({"type": "http.response.body", "body": b""})
                    break
                if chunk:
                    size += len(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except Exception as error:  # the client went away, or a stream failed, mid-answer
            logging.getLogger(__name__).debug("answer cut short: %r", error)
        finally:
            if answer.close is not None:
                await loop.run_in_executor(self.pool, answer.close)
            log_access(scope, answer, size, headers, started)


HANDOFF = EVENTS_HANDOFF.lower().encode()
MAX_STREAMS = 1536  # event streams one process holds; past it 503, so requests keep slots


class EventStreams:
    """Serves the event streams Flask hands over, as coroutines on this process's loop."""

    def __init__(self, redis_url: str, signer: ArtifactSigner) -> None:
        self.hub = EventHub(redis_url)
        self.signer = signer

    async def serve(self, scope: Scope, headers: dict[str, str], answer: Answer, handoff: str,
                    receive: Receive, send: Send, started: float) -> None:
        """Send a job's events until it ends, the stream's time is up or the client leaves."""
        if self.hub.open_streams >= MAX_STREAMS:
            busy = envelope(503, "too_many_streams", "too many open event streams", headers)
            await self.write_whole(busy, send)
            log_access(scope, busy, len(busy.body), headers, started)
            return
        job_id, _, after = handoff.partition(" ")
        answer.headers = [(name, value) for name, value in answer.headers
                          if name not in (HANDOFF, b"content-length")]
        size = 0
        gone = asyncio.ensure_future(_disconnected(receive))
        chunks = hub_stream(self.hub, job_id, after, self.signer)
        open_event_streams().inc()
        try:
            await send({"type": "http.response.start", "status": answer.status,
                        "headers": answer.headers})
            while True:
                step = asyncio.ensure_future(chunks.__anext__())
                await asyncio.wait({step, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():  # the client left: stop following at once
                    step.cancel()
                    break
                try:
                    chunk = step.result()
                except StopAsyncIteration:
                    await send({"type": "http.response.body", "body": b""})
                    break
                size += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except Exception as error:  # the client went away mid-answer
            logging.getLogger(__name__).debug("event stream cut short: %r", error)
        finally:
            open_event_streams().dec()
            gone.cancel()
            with contextlib.suppress(Exception):
                await chunks.aclose()
            log_access(scope, answer, size, headers, started)

    @staticmethod
    async def write_whole(answer: Answer, send: Send) -> None:
        """Send a whole answer."""
        await send({"type": "http.response.start", "status": answer.status,
                    "headers": answer.headers})
        await send({"type": "http.response.body", "body": answer.body})


async def _disconnected(receive: Receive) -> None:
    """Return once the client has gone away."""
    while (await receive())["type"] != "http.disconnect":
        pass


def load_application(target: str, body_timeout: float) -> ReadFirst:
    """Build the app in a worker process, with its own Redis connection, behind ReadFirst."""
    del target  # granian passes its target's name; the application is always ours
    app = create_app({"METRICS_MULTIPROCESS": True})  # sets the JSON log up, for access too
    access_log.setLevel(logging.INFO)
    parts = preview_of(app)
    return ReadFirst(
        app.wsgi_app, body_timeout, parts.settings.max_body_bytes,
        larger={f"{API_PREFIX}/jobs": parts.settings.max_batch_bytes},
        streams=EventStreams(parts.redis_url, parts.signer),
    )


def forget_worker(pid: int | None) -> None:
    """Drop the live gauges of a worker process that exited."""
    from prometheus_client import multiprocess  # imported already, by serve()

    if pid is not None and os.environ.get(MULTIPROCESS_DIR):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class PreviewServer(MPServer):
    """granian's process server, which forgets the metrics of every worker that exits."""

    def _spawn_worker(self, *args: Any, **kwargs: Any) -> WorkerProcess:
        worker: WorkerProcess = super()._spawn_worker(*args, **kwargs)
        watch = worker._watcher  # joins the process, then tells the server it exited

        def watch_then_forget() -> None:
            try:
                watch()  # type: ignore[no-untyped-call]
            finally:
                forget_worker(worker.inner.pid)

        worker._watcher = watch_then_forget  # type: ignore[method-assign]
        return worker


def logging_config() -> dict[str, Any]:
    """granian's own log lines, with the queries cut out, on standard error, as JSON too."""
    no_queries = {"()": WithoutQueries}
    as_json = {"()": "pythonjsonlogger.json.JsonFormatter", "fmt": FIELDS,
               "rename_fields": {"levelname": "level"}}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"no_queries": no_queries},
        "formatters": {"json": as_json},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json",
                                 "filters": ["no_queries"], "stream": "ext://sys.stderr"}},
        "loggers": {"_granian": {"handlers": ["console"], "level": "INFO",
                                 "propagate": False}},
    }


def serve(bind: str, workers: int, header_timeout: float, body_timeout: float) -> None:
    """Serve until told to stop (SIGTERM drains in-flight requests, within STOP_TIMEOUT)."""
    if not 0 < header_timeout <= MAX_HEADER_TIMEOUT:
        raise ValueError(f"the header timeout must be within 0 and {MAX_HEADER_TIMEOUT:.0f} s")
    if body_timeout <= 0:
        raise ValueError("the body timeout must be positive")
    host, _, port = bind.rpartition(":")
    metrics_dir = tempfile.mkdtemp(prefix="preview-metrics-")
    os.environ[MULTIPROCESS_DIR] = metrics_dir  # read by prometheus_client in every worker
    # Imported here, once the folder is set (prometheus_client reads it on import) and before
    # any worker is forked: a fork while another thread imports it would leave the worker
    # waiting for that import forever.
    from prometheus_client import multiprocess  # noqa: F401

    # Workers start as fresh interpreters: a worker forked while a thread of this process
    # held a lock (a log handler's, an import's) would wait for it for ever, and a
    # respawned worker then held SIGTERM up for the whole STOP_TIMEOUT.
    multiprocessing.set_start_method("spawn", force=True)
    try:
        PreviewServer(
            "preview_worker.web.server:load_application",
            address=host.strip("[]") or "127.0.0.1",
            port=int(port),
            interface=Interfaces.ASGINL,
            workers=workers,
            backlog=CONNECTIONS,
            backpressure=CONNECTIONS,
            http=HTTPModes.http1,
            websockets=False,
            http1_settings=HTTP1Settings(header_read_timeout=int(header_timeout * 1000)),
            log_dictconfig=logging_config(),
            respawn_failed_workers=True,
            workers_kill_timeout=STOP_TIMEOUT,
        ).serve(target_loader=partial(load_application, body_timeout=body_timeout))
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
