"""gunicorn serving the application, started from the command line."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from preview_worker.web.app import create_app

# prometheus_client's own switch for multiprocess metrics; its files live in this folder.
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


# A query string up to the next space or quote: where a request line's secrets travel.
QUERY = re.compile(r"\?[^\s'\"]*")


class WithoutQueries(logging.Filter):
    """Cuts query strings out of gunicorn's own messages, such as a bad request line."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message without queries; keep the record."""
        record.msg = QUERY.sub("?-", record.getMessage())
        record.args = None
        return True


class LogWithoutSecrets(Logger):  # type: ignore[misc]
    """gunicorn's logger, whose lines leave out query strings and Basic-auth users."""

    def __init__(self, cfg: Any) -> None:
        """Set gunicorn's logger up, then filter the queries out of its error log."""
        super().__init__(cfg)
        # "Invalid request from ...: Invalid HTTP request line: 'GET /x?token=...'"
        self.error_log.addFilter(WithoutQueries())

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> Any:
        """Return gunicorn's atoms with the request line cut at '?' and no user name."""
        atoms = super().atoms(resp, req, environ, request_time)
        # The query may hold an artifact signature or a token a client put there; the raw,
        # still percent-encoded path is kept, so a decoded newline cannot forge a line.
        path = environ.get("RAW_URI", "").split("?", 1)[0]
        atoms["r"] = f"{environ.get('REQUEST_METHOD')} {path} {environ.get('SERVER_PROTOCOL')}"
        atoms["q"] = "-"
        atoms["u"] = "-"  # gunicorn decodes Basic auth: `curl -u TOKEN:` would log the token
        return atoms


class PreviewServer(BaseApplication):  # type: ignore[misc]
    """A gunicorn application whose every worker process builds its own Flask app."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        """Hand our options to gunicorn."""
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        """Build the app in the worker process, with its own Redis connection."""
        return create_app({"METRICS_MULTIPROCESS": True})


def forget_worker(server: Any, worker: Any) -> None:
    """Drop the live gauges of a gunicorn worker that exited."""
    from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

    GunicornInternalPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)


def serve_with_gunicorn(bind: str, workers: int) -> None:
    """Serve until gunicorn is told to stop (SIGTERM drains in-flight requests)."""
    metrics_dir = tempfile.mkdtemp(prefix="preview-metrics-")
    os.environ[MULTIPROCESS_DIR] = metrics_dir  # read by prometheus_client in every worker
    try:
        PreviewServer(
            {
                "bind": bind,
                "workers": workers,
                "worker_class": "gthread",
                "threads": 4,
                "timeout": 30,
                "graceful_timeout": 20,
                "accesslog": "-",
                "logger_class": LogWithoutSecrets,
                "child_exit": forget_worker,
            }
        ).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
