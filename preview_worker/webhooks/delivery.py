"""One attempt at a webhook: check the host, resolve it once, POST the signed body, record it.

deliver() is the function the delivery's RQ job runs; on_delivered and on_failed are its
callbacks, which count every attempt by outcome and keep the job's record up to date. The
connection goes to the address that was checked, with the URL's host in the Host header
(and in TLS's SNI and certificate check), so a second resolution cannot send it elsewhere.
No redirect is followed and no proxy is used; every wait is bounded (connect, each read,
the answer's size) and the attempt as a whole by its RQ job's timeout.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

import redis
import urllib3
from rq import get_current_job
from rq.job import Job

from preview_worker import keys
from preview_worker.connections import pipelined
from preview_worker.errors import PermanentError
from preview_worker.settings import Settings, get_settings
from preview_worker.webhooks.hosts import Target, check_target, pinned_address
from preview_worker.webhooks.signature import HEADER, sign

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0  # seconds to open a connection to the receiver
READ_TIMEOUT = 10.0  # seconds any one read from the receiver may wait
MAX_ANSWER_BYTES = 65_536  # of a receiver's answer, read at most
ERROR_CHARS = 300  # of a failure's description, kept in the job's record
USER_AGENT = "preview-worker-webhooks/1"
DEVELOPMENT_SECRET = "development-only-webhook-secret"  # noqa: S105 - refused in production

# One attempt recorded in one round trip: its count by outcome, and, if the job's record is
# still this delivery's (not a later end's), the attempt, its answer and the outcome.
RECORD = """
if redis.call('HGET', KEYS[1], 'delivery') == ARGV[1] then
  redis.call('HINCRBY', KEYS[1], 'attempts', 1)
  redis.call('HSET', KEYS[1], 'outcome', ARGV[2], 'lastCode', ARGV[3], 'lastError', ARGV[4],
             'lastAt', ARGV[5])
end
redis.call('HINCRBY', KEYS[2], ARGV[6], 1)
"""
RECORD_SHA = hashlib.sha1(RECORD.encode()).hexdigest()


class DeliveryFailed(Exception):
    """The receiver answered other than 2xx, or could not be reached: worth another try."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code  # the HTTP status it answered; None when there was no answer


@functools.cache
def _warn_development_secret() -> None:
    """Warn once per process that webhooks are signed with the development secret."""
    log.warning("PREVIEW_WEBHOOK_SECRET is unset: webhooks are signed with the development "
                "secret, which production refuses")


def secret_of(settings: Settings) -> str:
    """Return the secret that signs webhooks: the setting, else the development one."""
    if settings.webhook_secret:
        return settings.webhook_secret
    _warn_development_secret()
    return DEVELOPMENT_SECRET


def deliver(job_id: str, url: str, body: str) -> dict[str, int]:
    """POST a job's final status answer to its webhook, signed now; raise to have RQ retry.

    A host the settings do not allow now raises WebhookRefused, which is never retried.
    """
    settings = get_settings()
    target = check_target(url, settings)
    try:
        address = pinned_address(target)
    except OSError as error:  # the name does not resolve (now): worth another try
        raise DeliveryFailed(f"could not resolve {target.host}: {error}") from None
    data = body.encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        HEADER: sign(secret_of(settings), data),
    }
    current = get_current_job()
    if current is not None:
        headers["Preview-Delivery"] = current.id  # the same for every attempt: deduplicate by it
    code = post(target, address, data, headers)
    if not 200 <= code < 300:
        raise DeliveryFailed(f"the receiver answered {code}", code)
    log.info("delivered the webhook of job %s: %d", job_id, code)
    return {"code": code}


def post(target: Target, address: str, body: bytes, headers: dict[str, str]) -> int:
    """POST a body to a target at a checked address; return the answer's HTTP status."""
    timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT)
    pool: urllib3.HTTPConnectionPool
    if target.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            address, target.port, timeout=timeout, retries=False, maxsize=1,
            cert_reqs="CERT_REQUIRED", server_hostname=target.host, assert_hostname=target.host,
        )
    else:
        pool = urllib3.HTTPConnectionPool(
            address, target.port, timeout=timeout, retries=False, maxsize=1
        )
    try:
        answer = pool.urlopen(
            "POST", target.path, body=body, headers={**headers, "Host": target.host_header},
            redirect=False, retries=False, preload_content=False, assert_same_host=False,
        )
        try:
            answer.read(MAX_ANSWER_BYTES)  # drained up to a bound, never kept
        finally:
            answer.release_conn()
        return int(answer.status)
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise DeliveryFailed(f"could not reach {target.authority}: {error}") from None
    finally:
        pool.close()


def on_delivered(job: Job, connection: redis.Redis, result: Any) -> None:
    """Record a delivered webhook: its answer, its count."""
    code = result.get("code") if isinstance(result, dict) else None
    _record(connection, job, "delivered", code, "")


def on_failed(
    job: Job,
    connection: redis.Redis,
    exc_type: type[BaseException] | None,
    exc_value: BaseException | None,
    traceback: TracebackType | None,
) -> None:
    """Record a failed attempt: refused for good, retried later, or failed at last."""
    try:
        # A host not allowed stays so: no retry. Anything else, a timeout too, may pass later.
        refused = exc_type is not None and issubclass(exc_type, PermanentError)
        if refused:
            job.retries_left = 0  # RQ decides to retry after this hook, from this job object
        outcome = "refused" if refused else "retried" if job.retries_left else "failed"
        kind = exc_type.__name__ if exc_type else "Error"
        error = f"{kind}: {exc_value}" if exc_value is not None else kind
        _record(connection, job, outcome, getattr(exc_value, "code", None), error)
        log.warning("webhook of job %s %s: %s", job.args[0], outcome, error)
    except Exception:
        log.exception("failure hook of webhook %s failed", job.id)


def _record(
    connection: redis.Redis, job: Job, outcome: str, code: int | None, error: str
) -> None:
    """Count an attempt by outcome and write it in its job's record; never raise."""
    moment = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    shown = "pending" if outcome == "retried" else outcome

    def fill(pipe: Any) -> None:
        pipe.evalsha(
            RECORD_SHA, 2, keys.deliveries_key(str(job.args[0])), keys.WEBHOOK_OUTCOMES,
            job.id, shown, "" if code is None else str(code), error[:ERROR_CHARS], moment,
            outcome,
        )

    try:
        pipelined(connection, fill, [RECORD])
    except Exception:  # a recorder observes: its failure must never fail a delivery
        log.exception("could not record webhook outcome %s of %s", outcome, job.id)
