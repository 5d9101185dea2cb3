"""create_app(): the Flask application, each part wired by its own init function."""

from __future__ import annotations

import hmac
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis
from flask import Flask, Response, g, request
from rq.exceptions import NoSuchJobError
from werkzeug.exceptions import HTTPException

from preview_worker import queueing
from preview_worker.embedded_redis import known_redis_url
from preview_worker.logs import configure_logging
from preview_worker.settings import Settings, SettingsError, load_settings
from preview_worker.signing import ArtifactSigner, signer_for
from preview_worker.storage import ArtifactStore

log = logging.getLogger(__name__)

# Our own names for a few of werkzeug's errors, so one fault has one code however it arises.
ERROR_CODES = {413: "payload_too_large"}
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Artifacts carry a signature of their own instead of a token.
SIGNED_ENDPOINTS = {"preview.artifact"}
# Probes and scrapers, open without a token unless PREVIEW_OPEN_PROBES=false.
PROBE_ENDPOINTS = {"preview.health", "preview.queue_metrics", "prometheus_metrics"}


@dataclass
class Preview:
    """What the views share: settings, the Redis connection, the store and the signer."""

    settings: Settings
    connection: redis.Redis
    store: ArtifactStore
    signer: ArtifactSigner


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the application: defaults, then the environment, then the test mapping."""
    config = dict(test_config or {})
    settings: Settings = config.pop("SETTINGS", None) or load_settings()
    check_production(settings)
    app = Flask(__name__)
    # A '//' in a path answers 404, not an HTML redirect to wherever the merged path leads.
    app.url_map.merge_slashes = False
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes, JSON_SORT_KEYS=False)
    app.config.update(config)
    redis_url = app.config.get("REDIS_URL") or known_redis_url(settings)
    if not redis_url:
        raise SettingsError("REDIS_URL is not set and no development Redis is running")
    app.extensions["preview"] = Preview(
        settings=settings,
        connection=queueing.connect(redis_url),
        store=ArtifactStore(settings.data_dir),
        signer=signer_for(settings),
    )
    if not app.config.get("TESTING"):
        configure_logging(settings.log_level)
    init_request_ids(app)
    init_auth(app)
    init_errors(app)
    init_api(app)
    init_metrics(app)
    init_dashboard(app, redis_url)
    return app


def check_production(settings: Settings) -> None:
    """Refuse to run in production without tokens and a signing key; warn in development."""
    if settings.production and not (settings.api_tokens and settings.signing_key):
        raise SettingsError(
            "PREVIEW_ENV=production needs PREVIEW_API_TOKENS and PREVIEW_SIGNING_KEY"
        )
    if not settings.api_tokens:
        log.warning("no PREVIEW_API_TOKENS: the API is open to anyone (development only)")


def preview_of(app: Flask) -> Preview:
    """Return the shared parts of an application."""
    shared: Preview = app.extensions["preview"]
    return shared


def init_request_ids(app: Flask) -> None:
    """Take a safe X-Request-ID or make one, and echo it on every answer."""

    @app.before_request
    def take_request_id() -> None:
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex

    @app.after_request
    def echo_request_id(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        return response


def init_auth(app: Flask) -> None:
    """Ask every call but the public ones for a bearer token from PREVIEW_API_TOKENS."""
    settings = preview_of(app).settings
    tokens = [token.encode() for token in settings.api_tokens]
    public = SIGNED_ENDPOINTS | (PROBE_ENDPOINTS if settings.open_probes else set())

    @app.before_request
    def require_token() -> Response | None:
        if not tokens or request.endpoint in public:
            return None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        presented = given.strip().encode()
        # Compare against every token, in constant time, so timing says nothing.
        matches = [hmac.compare_digest(presented, token) for token in tokens]
        if scheme.lower() == "bearer" and any(matches):
            return None
        answer = error_response(401, "unauthorized", "a valid bearer token is required")
        answer.headers["WWW-Authenticate"] = 'Bearer realm="preview"'
        return answer


def error_response(http_status: int, code: str, message: str, **extra: Any) -> Response:
    """Return the JSON error envelope every failed call answers with."""
    from flask import jsonify

    body = {"error": code, "message": message, "requestId": g.get("request_id"), **extra}
    response = jsonify(body)
    response.status_code = http_status
    return response


def init_errors(app: Flask) -> None:
    """Answer every HTTP error and every unhandled exception with the JSON envelope."""

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        name = (error.name or "error").lower().replace(" ", "_")
        code = ERROR_CODES.get(error.code or 500, name)
        response = error_response(error.code or 500, code, error.description or code)
        if error.code == 405 and error.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(NoSuchJobError)
    def job_gone(error: NoSuchJobError) -> Response:
        # rq-dashboard's actions on a job that expired or was purged meanwhile.
        return error_response(404, "not_found", "no such job")

    # A lost or busy connection, or a replica not yet promoted in a failover, is worth a
    # retry; any other refused command is our bug (500), not an unreachable Redis.
    @app.errorhandler(redis.ConnectionError)
    @app.errorhandler(redis.TimeoutError)
    @app.errorhandler(redis.ReadOnlyError)
    def redis_down(error: redis.RedisError) -> Response:
        log.error("Redis is unreachable: %s", error)
        response = error_response(503, "unavailable", "the job queue is unreachable; retry soon")
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(Exception)
    def unhandled(error: Exception) -> Response:
        log.exception("unhandled error")  # the traceback stays in the log, not the answer
        return error_response(500, "internal_error", "something went wrong on our side")


def init_api(app: Flask) -> None:
    """Mount the preview blueprint at /api/preview."""
    from preview_worker.api import blueprint

    app.register_blueprint(blueprint, url_prefix="/api/preview")


def init_metrics(app: Flask) -> None:
    """Serve Prometheus text at /metrics: HTTP metrics plus the queue's, read from Redis."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_flask_exporter import PrometheusMetrics

    from preview_worker.collectors import QueueCollector

    shared = preview_of(app)
    scraped = CollectorRegistry(auto_describe=True)
    scraped.register(QueueCollector(lambda: shared.connection, shared.settings))
    if app.config.get("METRICS_MULTIPROCESS"):
        # Under gunicorn each process counts its requests into shared files (the folder in
        # PROMETHEUS_MULTIPROC_DIR); a scrape answered by any process adds them all up.
        from prometheus_client.multiprocess import MultiProcessCollector

        MultiProcessCollector(scraped)  # type: ignore[no-untyped-call]
        http = PrometheusMetrics(app, registry=CollectorRegistry(), path=None, group_by="url_rule")
    else:
        http = PrometheusMetrics(app, registry=scraped, path=None, group_by="url_rule")

    @app.get("/metrics", endpoint="prometheus_metrics")
    @http.do_not_track()  # type: ignore[untyped-decorator]
    def prometheus_metrics() -> Response:
        return Response(generate_latest(scraped), mimetype=CONTENT_TYPE_LATEST)


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
    app.register_blueprint(rq_dashboard.blueprint, url_prefix="/rq")
    # Its routes without an instance number (favicon, static files, job and queue actions)
    # use a connection only this sets up; without it they crash as a process's first call.
    setup_rq_connection(app)

    @app.before_request
    def guard_dashboard_writes() -> Response | None:
        if not request.path.startswith("/rq/"):
            return None
        if request.method == "GET" and request.path.startswith("/rq/requeue/"):
            return error_response(405, "method_not_allowed", "requeue needs a POST")
        if request.method == "POST" and not same_origin():
            return error_response(403, "forbidden", "cross-site dashboard request refused")
        return None


def same_origin() -> bool:
    """Tell whether a browser request came from a page of this very host (a CSRF check)."""
    source = request.headers.get("Origin") or request.headers.get("Referer") or ""
    host = request.host_url.rstrip("/")
    return source == host or source.startswith(host + "/")
