"""Failures that decide what happens to a job: retried, dead-lettered at once, or stopped."""

from __future__ import annotations

from rq.timeouts import JobTimeoutException


class PermanentError(Exception):
    """A failure that no retry can mend (an invalid payload, content that cannot render)."""


class InvalidPayload(PermanentError):
    """The payload broke the schema when the worker checked it again."""


class PreviewStopped(PermanentError):
    """The job was stopped on request while it ran."""


class PreviewRefused(PermanentError):
    """The payload is valid, but its preview passed a bound: too slow or too large to render."""


class WebhookRefused(PermanentError):
    """A webhook's host is not allowed, or resolves to an address it may not reach."""


def is_permanent(exc_type: type[BaseException] | None) -> bool:
    """Tell whether a failure of this type goes to the dead-letter queue without retries.

    A render that ran into the job's hard timeout would run into it again: it is permanent.
    """
    return exc_type is not None and issubclass(exc_type, (PermanentError, JobTimeoutException))
