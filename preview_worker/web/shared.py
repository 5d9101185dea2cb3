"""What every view shares: the application's parts, JSON answers and the error envelope."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import redis
from flask import Flask, Response, current_app, g, jsonify

from preview_worker.settings import Settings
from preview_worker.signing import ArtifactSigner
from preview_worker.store import ArtifactStore

EXTENSION = "preview"  # the key of the shared parts in app.extensions
# A request id a client may choose, in a header or the payload: the schema's own pattern.
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass
class Preview:
    """What the views share: settings, the Redis connection, the store and the signer."""

    settings: Settings
    connection: redis.Redis
    store: ArtifactStore
    signer: ArtifactSigner
    redis_url: str = ""  # what the connection was opened on (the event streams open their own)


def preview_of(app: Flask) -> Preview:
    """Return the shared parts of an application."""
    parts: Preview = app.extensions[EXTENSION]
    return parts


def shared() -> Preview:
    """Return the shared parts of the application serving this request."""
    return preview_of(current_app)


def answer(body: Any, status: int = 200, **headers: str) -> Response:
    """Return a JSON answer with a status and headers."""
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers)
    return response


def error_response(http_status: int, code: str, message: str, **extra: Any) -> Response:
    """Return the JSON error envelope every failed call answers with."""
    body = {"error": code, "message": message, "requestId": g.get("request_id"), **extra}
    return answer(body, http_status)


# How each item of a batch submit ends, in the order its counts are listed.
BATCH_OUTCOMES = ("accepted", "duplicate", "invalid", "conflict", "refused")
