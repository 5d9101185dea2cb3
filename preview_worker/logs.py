"""JSON log lines with the same fields in the API and the workers, request id included.

The module knows no web framework: the API installs where request ids come from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pythonjsonlogger.json import JsonFormatter
from rq import get_current_job

FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"

RequestIdSource = Callable[[], "str | None"]  # the id of the request this thread serves, if any


def _no_request() -> str | None:
    """Serve no request: the worker side has none."""
    return None


_request_id_source: RequestIdSource = _no_request


def use_request_ids(source: RequestIdSource) -> None:
    """Take request ids from a source from now on (the API's running request)."""
    global _request_id_source
    _request_id_source = source


class RequestIdFilter(logging.Filter):
    """Stamp each record with the request id and job id of the work it belongs to."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add requestId and jobId from the running HTTP request or RQ job, unless given."""
        request_id, job_id = current_ids()
        if getattr(record, "requestId", None) is None:
            record.requestId = request_id  # a line logged outside the request names its own
        record.jobId = job_id
        return True


def current_ids() -> tuple[str | None, str | None]:
    """Return the request id and job id of the request or job this thread serves."""
    request_id = _request_id_source()
    if request_id is not None:
        return request_id, None
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
