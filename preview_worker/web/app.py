"""create_app(): the Flask application, each part wired by its own init function.

Nothing imports this module but the entry points (the server, the command line) and tests.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import Mapping
from typing import Any

import redis
from flask import Flask, Response, g, has_request_context, request
from rq.exceptions import NoSuchJobError
from werkzeug.exceptions import HTTPException

from preview_worker.connections import connect, is_refusal, require_persistence
from preview_worker.embedded_redis import known_redis_url
from preview_worker.logs import configure_logging, use_request_ids
from preview_worker.settings import Settings, SettingsError, load_settings
from preview_worker.signing import API_PREFIX, signer_for
from preview_worker.store import StorageError, StoreUnreachable, store_for
from preview_worker.web.api import blueprint
from preview_worker.web.dashboard import PREFIX as DASHBOARD
from preview_worker.web.dashboard import init_dashboard
from preview_worker.web.shared import (
    EXTENSION,
    REQUEST_ID,
    Preview,
    error_response,
    preview_of,
)

log = logging.getLogger(__name__)

# Our own names for a few of werkzeug's errors, so one fault has one code however it arises.
ERROR_CODES = {413: "payload_too_large"}
# Artifacts carry a signature of their own instead of a token.
SIGNED_ENDPOINTS = {"preview.artifact"}
# A job's event stream takes its signed URL's token or the bearer token.
EVENTS_ENDPOINT = "preview.job_events"
# Probes and scrapers, open without a token unless PREVIEW_OPEN_PROBES=false.
PROBE_ENDPOINTS = {"preview.health", "preview.queue_metrics", "prometheus_metrics"}
# A package's own icon, which browsers fetch without credentials.
OPEN_ENDPOINTS = {"dashboard_favicon"}


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the application: defaults, then the environment, then the test mapping."""
    config = dict(test_config or {})
    settings: Settings = config.pop("SETTINGS", None) or load_settings()
    if not config.get("TESTING"):
        configure_logging(settings.log_level)  # first, so that every line is JSON
    check_production(settings)
    app = Flask(__name__)
    # A '//' in a path answers 404, not an HTML redirect to wherever the merged path leads.
    app.url_map.merge_slashes = False
    # The largest body any route takes; each route holds its own body to its own limit.
    largest = max(settings.max_body_bytes, settings.max_batch_bytes)
    app.config.update(MAX_CONTENT_LENGTH=largest, JSON_SORT_KEYS=False)
    app.config.update(config)
    redis_url = app.config.get("REDIS_URL") or known_redis_url(settings)
    if not redis_url:
        raise SettingsError("REDIS_URL is not set and no development Redis is running")
    connection = connect(redis_url)
    check_redis_persists(connection, settings)
    app.extensions[EXTENSION] = Preview(
        settings=settings,
        connection=connection,
        store=store_for(settings),
        signer=signer_for(settings),
        redis_url=redis_url,
    )
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


def check_redis_persists(connection: redis.Redis, settings: Settings) -> None:
    """Refuse a volatile Redis in production; start anyway when Redis cannot be asked now."""
    try:
        require_persistence(connection, settings)
    except redis.RedisError as error:
        # The API must come up to answer 503s while Redis is away; workers check again.
        log.warning("could not check that Redis persists: %s", error)


def init_request_ids(app: Flask) -> None:
    """Take a safe X-Request-ID or make one; echo it on every answer and stamp it on logs."""

    @app.before_request
    def take_request_id() -> None:
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex

    use_request_ids(current_request_id)

    @app.after_request
    def echo_request_id(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        return response


def init_auth(app: Flask) -> None:
    """Ask every call but the public ones for a token from PREVIEW_API_TOKENS.

    The API takes it as a bearer token only. The dashboard, opened in a browser, also takes
    it as the password of HTTP Basic (any user name), so that the browser asks for it.
    """
    settings = preview_of(app).settings
    tokens = [token.encode() for token in settings.api_tokens]
    probes = PROBE_ENDPOINTS if settings.open_probes else set()
    public = SIGNED_ENDPOINTS | OPEN_ENDPOINTS | probes

    def is_token(presented: bytes) -> bool:
        # Compare against every token, in constant time, so timing says nothing.
        return any([hmac.compare_digest(presented, token) for token in tokens])

    @app.before_request
    def require_token() -> Response | None:
        if not tokens or request.endpoint in public:
            return None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and is_token(given.strip().encode()):
            return None
        if request.endpoint == EVENTS_ENDPOINT and preview_of(app).signer.allows_events(
            request.args.get("token", ""), (request.view_args or {}).get("job_id", "")
        ):
            return None
        on_dashboard = request.path == DASHBOARD or request.path.startswith(DASHBOARD + "/")
        if on_dashboard and request.authorization and request.authorization.type == "basic":
            if is_token((request.authorization.password or "").encode()):
                return None
        answer = error_response(401, "unauthorized", "a valid bearer token is required")
        answer.headers["WWW-Authenticate"] = (
            'Basic realm="preview dashboard", charset="UTF-8"' if on_dashboard
            else 'Bearer realm="preview"'
        )
        return answer


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

    # A lost or busy connection, a replica not yet promoted in a failover, or a Redis that
    # refuses writes (out of memory, unable to persist) is worth a retry: nothing was
    # changed. Any other refused command is our bug (500), not an unavailable Redis.
    @app.errorhandler(redis.ConnectionError)
    @app.errorhandler(redis.TimeoutError)
    @app.errorhandler(redis.ResponseError)
    def redis_unavailable(error: redis.RedisError) -> Response:
        if isinstance(error, redis.ResponseError) and not is_refusal(error):
            return internal_error(error)
        log.error("Redis is unreachable or refuses writes: %s", error)
        response = error_response(
            503, "unavailable", "the job queue is unreachable or refuses writes; retry soon"
        )
        response.headers["Retry-After"] = "5"
        return response

    # Serving an artifact needs the store. Whether it did not answer or refused, nothing is
    # wrong with the request: a retry may succeed, and health says which.
    @app.errorhandler(StorageError)
    def store_unavailable(error: StorageError) -> Response:
        log.error("the artifact store cannot be read: %s", error)
        state = "unreachable" if isinstance(error, StoreUnreachable) else "failing"
        response = error_response(
            503, "store_unavailable", f"the artifact store is {state}; retry soon"
        )
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(Exception)
    def unhandled(error: Exception) -> Response:
        return internal_error(error)


def internal_error(error: Exception) -> Response:
    """Answer 500 with the envelope; the traceback stays in the log, not the answer."""
    log.error("unhandled error", exc_info=error)
    return error_response(500, "internal_error", "something went wrong on our side")


def current_request_id() -> str | None:
    """Return the id of the request this thread serves, or None outside a request."""
    return g.get("request_id") if has_request_context() else None


def init_api(app: Flask) -> None:
    """Mount the preview blueprint at /api/preview."""
    app.register_blueprint(blueprint, url_prefix=API_PREFIX)


def init_metrics(app: Flask) -> None:
    """Serve Prometheus text at /metrics: HTTP metrics plus the queue's, read from Redis."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_flask_exporter import PrometheusMetrics

    from preview_worker.observe.prometheus import QueueCollector

    shared = preview_of(app)
    scraped = CollectorRegistry(auto_describe=True)
    scraped.register(QueueCollector(lambda: shared.connection, shared.settings))
    if app.config.get("METRICS_MULTIPROCESS"):
        # Under the server each process counts its requests into shared files (the folder in
        # PROMETHEUS_MULTIPROC_DIR); a scrape answered by any process adds them all up.
        from prometheus_client.multiprocess import MultiProcessCollector

        MultiProcessCollector(scraped)  # type: ignore[no-untyped-call]
        http = PrometheusMetrics(app, registry=CollectorRegistry(), path=None, group_by="url_rule")
    else:
        http = PrometheusMetrics(app, registry=scraped, path=None, group_by="url_rule")

    @app.get("/metrics", endpoint="prometheus_metrics")
    @http.do_not_track()  # type: ignore[untyped-decorator]
    def prometheus_metrics() -> Response:
        # content_type, not mimetype: the constant has its charset already.
        return Response(generate_latest(scraped), content_type=CONTENT_TYPE_LATEST)
