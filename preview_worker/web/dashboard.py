"""rq-dashboard at /rq, behind the API's auth, with its writes kept off GET and cross-site."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

from flask import Flask, Response, request

from preview_worker.web.shared import error_response

PREFIX = "/rq"


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

    @app.before_request
    def guard_dashboard_writes() -> Response | None:
        if not request.path.startswith(PREFIX + "/"):
            return None
        if request.method == "GET" and request.path.startswith(f"{PREFIX}/requeue/"):
            return error_response(405, "method_not_allowed", "requeue needs a POST")
        if request.method == "POST" and not same_origin():
            return error_response(403, "forbidden", "cross-site dashboard request refused")
        return None


def same_origin() -> bool:
    """Tell whether a browser request came from a page of this very host (a CSRF check)."""
    source = request.headers.get("Origin") or request.headers.get("Referer") or ""
    host = request.host_url.rstrip("/")
    return source == host or source.startswith(host + "/")
