"""rq-dashboard at /rq, behind the API's auth, with its writes kept off GET and cross-site."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis
from flask import Flask, Response, redirect, request, send_from_directory
from werkzeug.wrappers import Response as ResponseBase

from preview_worker.queueing import (
    DEFAULT_PRIORITY,
    queue_name,
    register_queues,
    worker_queue_names,
)
from preview_worker.web.shared import error_response, preview_of

log = logging.getLogger(__name__)

PREFIX = "/rq"
FAVICON = "/static/favicon.ico"  # where its pages link their icon: the app's static folder
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# rq-dashboard's requeue-all answers GET too: unsafe on any method.
UNSAFE_ON_GET = re.compile(rf"^{PREFIX}/requeue/")
# Its Jobs tab without a queue shows RQ's "default", which is not one of ours.
JOBS_WITHOUT_QUEUE = re.compile(rf"^{PREFIX}/(\d+)/view/jobs/?$")
# Its actions on one queue, by name: only our own queues are the dashboard's to touch.
QUEUE_ACTION = re.compile(rf"^{PREFIX}/(?:queue|requeue)/([^/]+)")


def init_dashboard(app: Flask, redis_url: str) -> None:
    """Mount rq-dashboard at /rq behind the same auth, with its writes kept off GET."""
    import rq_dashboard
    from rq_dashboard.web import setup_rq_connection

    # Its pages show the URL, masking a password in the user info but not ?password=...:
    # that one it gets apart, as RQ_DASHBOARD_REDIS_PASSWORD.
    parts = urlsplit(redis_url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    password = dict(query).get("password")
    if password is not None:
        app.config.setdefault("RQ_DASHBOARD_REDIS_PASSWORD", password)
        kept = urlencode([(name, value) for name, value in query if name != "password"])
        redis_url = parts._replace(query=kept).geturl()
    app.config.setdefault("RQ_DASHBOARD_REDIS_URL", [redis_url])
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=PREFIX)
    # Its routes without an instance number (favicon, static files, job and queue actions)
    # use a connection only this sets up; without it they crash as a process's first call.
    setup_rq_connection(app)
    icons = Path(rq_dashboard.__file__).resolve().parent / "static"

    @app.get(FAVICON, endpoint="dashboard_favicon")
    def dashboard_favicon() -> Response:
        return send_from_directory(icons, "favicon.ico", mimetype="image/vnd.microsoft.icon")

    settings = preview_of(app).settings
    ours = set(worker_queue_names(settings))  # the webhooks' dead letters are ours to requeue
    first = queue_name(settings, DEFAULT_PRIORITY)  # where most jobs are
    try:
        register_queues(preview_of(app).connection, settings)
    except redis.RedisError as error:  # the dashboard lists them once a job was queued
        log.warning("could not list the queues for the dashboard: %s", error)

    @app.before_request
    def guard_dashboard_writes() -> ResponseBase | None:
        if not request.path.startswith(PREFIX + "/"):
            return None
        jobs = JOBS_WITHOUT_QUEUE.match(request.path)
        if jobs and request.method in SAFE_METHODS:
            return redirect(f"{PREFIX}/{jobs.group(1)}/view/jobs/{first}/queued/8/asc/1")
        action = QUEUE_ACTION.match(request.path)
        if action and action.group(1) not in ours:
            return error_response(404, "not_found", "no such queue")
        if request.method in SAFE_METHODS and not UNSAFE_ON_GET.match(request.path):
            return None
        if request.method in SAFE_METHODS:
            return error_response(405, "method_not_allowed", "requeue needs a POST")
        if origin_of_request() not in settings.allowed_origins:
            return error_response(
                403, "forbidden",
                "dashboard writes come only from the origins in PREVIEW_ALLOWED_ORIGINS",
            )
        return None


def origin_of_request() -> str:
    """Return the origin of the page that sent the request: Origin, else Referer's; or ''."""
    # Never the request's own Host: an attacker's page sets it (DNS rebinding).
    origin = request.headers.get("Origin", "")
    if origin and origin != "null":
        return origin.rstrip("/")
    referer = urlsplit(request.headers.get("Referer", ""))
    return f"{referer.scheme}://{referer.netloc}" if referer.scheme and referer.netloc else ""
