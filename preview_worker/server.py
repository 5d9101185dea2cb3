"""gunicorn serving the application, started from the command line."""

from __future__ import annotations

from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from preview_worker.app import create_app


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
        return create_app()


def serve_with_gunicorn(bind: str, workers: int) -> None:
    """Serve until gunicorn is told to stop (SIGTERM drains in-flight requests)."""
    PreviewServer(
        {
            "bind": bind,
            "workers": workers,
            "worker_class": "gthread",
            "threads": 4,
            "timeout": 30,
            "graceful_timeout": 20,
            "accesslog": "-",
        }
    ).run()
