"""JSON log lines with the same fields in the API and the workers, request id included."""

from __future__ import annotations

import logging

from flask import g, has_request_context
from pythonjsonlogger.json import JsonFormatter
from rq import get_current_job

FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"


class RequestIdFilter(logging.Filter):
    """Stamp each record with the request id and job id of the work it belongs to."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add requestId and jobId from the running HTTP request or RQ job, if any."""
        record.requestId, record.jobId = current_ids()
        return True


def current_ids() -> tuple[str | None, str | None]:
    """Return the request id and job id of the request or job this thread serves."""
    if has_request_context():
        return g.get("request_id"), None
    job = get_current_job()
    if job is not None:
        return job.meta.get("requestId"), job.id
    return None, None


def configure_logging(level: str) -> None:
    """Send every log line to standard error as one JSON object."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(FIELDS, rename_fields={"levelname": "level"}))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
