"""A job's webhook: its policy fixed at submit, its delivery queued at the job's end, its record.

At submit, a payload with `notify` gets its delivery policy in the job's meta (the queue and
the retry gaps), so whichever process sees the end (a hook in any worker, stock ones too,
cancel, recovery) queues the same delivery without settings of its own. The delivery is an
RQ job of its own on the webhooks queue, queued on the pipeline that records the end: no
extra round trip. Its attempts are recorded in one hash per job, which the status shows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import redis
from rq import Callback, Queue, Retry
from rq.job import Job, JobStatus
from rq.utils import now

from preview_worker import events, keys
from preview_worker.observe.outcomes import end_key_of
from preview_worker.retries import exponential_delays
from preview_worker.settings import Settings
from preview_worker.status import status_answer

log = logging.getLogger(__name__)

DELIVER = "preview_worker.webhooks.delivery.deliver"
ON_DELIVERED = "preview_worker.webhooks.delivery.on_delivered"
ON_FAILED = "preview_worker.webhooks.delivery.on_failed"
POLICY = "notify"  # the job meta's field holding the delivery policy
MAX_DELAY = 3_600  # seconds, the longest gap between two attempts of a delivery
DELIVERY_TIMEOUT = 30  # seconds one attempt may take in all, then RQ kills it
WAITING = {"outcome": "waiting", "attempts": 0, "lastCode": None, "lastError": None,
           "lastAt": None}  # the record of a job that has not ended yet


def notify_url(job: Job) -> str | None:
    """Return the webhook URL a job's payload names, or None."""
    payload = job.args[0] if job.args else None
    notify = payload.get("notify") if isinstance(payload, dict) else None
    url = notify.get("url") if isinstance(notify, dict) else None
    return url if isinstance(url, str) else None


def policy(payload: dict[str, Any], queue: str, settings: Settings) -> dict[str, Any] | None:
    """Return the delivery policy a payload's job carries in its meta, or None without notify.

    Each job draws its own gaps, so deliveries that fail together retry apart.
    """
    if not isinstance(payload.get("notify"), dict):
        return None
    gaps = exponential_delays(
        settings.webhook_retry_max, settings.webhook_retry_base_delay, MAX_DELAY
    )
    return {"queue": queue, "retry": gaps}


def schedule(pipe: Any, job: Job, status: JobStatus, result: Any = None) -> None:
    """Queue, on a pipeline, the delivery of a job's end to its webhook, if it asked for one.

    The body of every attempt, byte for byte, is the job's status answer in its final status
    (with its result when it finished; artifact URLs unsigned: the receiver asks the status
    call for signed ones). Never raises: a delivery that cannot be made is logged, and the
    end is recorded anyway.
    """
    try:
        url = notify_url(job)
        chosen = job.meta.get(POLICY)
        if url is None or not isinstance(chosen, dict):
            return
        delivery, ttl = _delivery(job, url, status_answer(job, status, result), chosen)
    except Exception:
        log.exception("could not prepare the webhook of job %s", job.id)
        return
    _enqueue(pipe, delivery)
    record_key = keys.deliveries_key(job.id)
    pipe.delete(record_key)  # an earlier end's record (a resubmitted job) goes
    pipe.hset(record_key, mapping={"outcome": "pending", "attempts": 0, "end": end_key_of(job),
                                   "delivery": delivery.id})
    pipe.expire(record_key, ttl)


def _delivery(
    job: Job, url: str, answer: dict[str, Any], chosen: dict[str, Any]
) -> tuple[Job, int]:
    """Make the RQ job that delivers a job's end, and the lifetime of its record."""
    gaps = [int(gap) for gap in chosen.get("retry", [])]
    ttl = events.lifetime_of(job)  # the record lives as long as the job's events
    body = json.dumps(answer, separators=(",", ":"), sort_keys=True)
    # One id per end of the job: the same end queued twice is the same delivery, and the
    # receiver sees the same Preview-Delivery id.
    end = hashlib.sha256(end_key_of(job).encode()).hexdigest()[:16]
    queue = Queue(str(chosen["queue"]), connection=job.connection)
    delivery = queue.create_job(
        DELIVER,
        args=(job.id, url, body),
        job_id=f"{job.id}-webhook-{end}",
        description=f"webhook of {job.id}",
        timeout=DELIVERY_TIMEOUT,
        result_ttl=keys.DELIVERED_TTL,
        failure_ttl=job.failure_ttl,
        retry=Retry(max=len(gaps), interval=gaps) if gaps else None,
        on_success=Callback(ON_DELIVERED),
        on_failure=Callback(ON_FAILED),
    )
    return delivery, ttl


def _enqueue(pipe: Any, delivery: Job) -> None:
    """Queue a job's writes and its push on a pipeline, as RQ's own enqueue writes them.

    RQ's Queue.enqueue(pipeline=...) would start a transaction on the pipeline (MULTI),
    which a pipeline that holds commands already refuses; these are its writes.
    """
    delivery.enqueued_at = now()
    delivery.set_status(JobStatus.QUEUED, pipeline=pipe)
    delivery.save(pipeline=pipe)
    queue_key = keys.queue_key(delivery.origin)
    pipe.sadd(keys.RQ_QUEUES, queue_key)
    pipe.rpush(queue_key, delivery.id)


def deliveries_of(connection: redis.Redis, job: Job) -> dict[str, Any] | None:
    """Return how a job's webhook went (None when it has none), for its status answer."""
    if notify_url(job) is None:
        return None
    raw = connection.hgetall(keys.deliveries_key(job.id))
    found = {keys.text(name): keys.text(value) for name, value in raw.items()}
    if not found or found.get("end") != end_key_of(job):
        return dict(WAITING)  # nothing yet, or only an earlier end's record
    return {
        "outcome": found.get("outcome", "pending"),
        "attempts": int(found.get("attempts", 0)),
        "lastCode": int(found["lastCode"]) if found.get("lastCode") else None,
        "lastError": found.get("lastError") or None,
        "lastAt": found.get("lastAt") or None,
    }
