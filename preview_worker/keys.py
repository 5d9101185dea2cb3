"""Redis key names, the service's own and RQ's, with the time-to-live figures, in one place.

RQ's names are taken from RQ's own classes, so they follow RQ; nothing else spells them.
"""

from __future__ import annotations

from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.queue import Queue
from rq.registry import (
    DeferredJobRegistry,
    FailedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.scheduler import RQScheduler
from rq.worker import BaseWorker
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

PREFIX = "preview"

# A job's events, in order: a capped stream that expires with the job (see events.py).
EVENTS = f"{PREFIX}:events:{{job_id}}"
# Which job has news: one capped stream for all, that the servers' event hubs follow.
NEWS = f"{PREFIX}:event-news"
# Outcome counts: one hash, field "<queue>|<outcome>" -> count.
OUTCOMES = f"{PREFIX}:outcomes"
# Duration histogram of one queue: fields "le:<bound>", "sum" and "count".
DURATIONS = f"{PREFIX}:durations:{{queue}}"
# Every accepted job not yet finished, dead-lettered or canceled: id -> the time (epoch s)
# by which it must have started, after which recovery dead-letters it as QueuedTooLong.
ACCEPTED = f"{PREFIX}:accepted"
# A stop asked of a running job, kept for recovery in case its worker died meanwhile.
STOP_REQUESTED = f"{PREFIX}:stop:{{job_id}}"
# Ends of jobs already counted: field "<job id>@<enqueued at>" -> 1, so each end counts once.
COUNTED = f"{PREFIX}:counted"
# How the webhook of a job's latest end went (attempts, last answer, outcome); it expires
# with the job's events.
DELIVERIES = f"{PREFIX}:deliveries:{{job_id}}"
# Webhook delivery counts: one hash, field "<outcome>" -> count.
WEBHOOK_OUTCOMES = f"{PREFIX}:webhook-outcomes"
DELIVERED_TTL = 3_600  # seconds a delivered webhook's own RQ job is kept
# Accepted jobs seen queued but on no queue: id -> first seen at (epoch s).
MISSING = f"{PREFIX}:missing"
# Lock taken while a dead-lettered or canceled job is replaced by a new attempt.
RESUBMIT_LOCK = f"{PREFIX}:resubmit:{{job_id}}"
RESUBMIT_LOCK_TTL = 10  # seconds; far longer than one resubmission takes
# Only one recovery pass runs at a time, across every host.
RECOVERY_LOCK = f"{PREFIX}:recovery-lock"
RECOVERY_LOCK_TTL = 30  # seconds; one recovery pass holds it at most this long
# Names of our in-process workers start so; recovery trusts their liveness keys.
OUR_WORKER_PREFIX = f"{PREFIX}-"
# Liveness of one of our worker processes, refreshed by a thread even while a job runs.
WORKER_ALIVE = f"{PREFIX}:alive:{{name}}"
WORKER_ALIVE_TTL = 15  # seconds; a worker that stops refreshing is dead after this
WORKER_ALIVE_REFRESH = 5  # seconds between refreshes


def text(reply: object) -> str:
    """Return a Redis reply (bytes from a connection that does not decode) as text."""
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def durations_key(queue: str) -> str:
    """Return the duration histogram key of a queue."""
    return DURATIONS.format(queue=queue)


def events_key(job_id: str) -> str:
    """Return the key of a job's event stream."""
    return EVENTS.format(job_id=job_id)


def deliveries_key(job_id: str) -> str:
    """Return the key of the record of a job's webhook deliveries."""
    return DELIVERIES.format(job_id=job_id)


def resubmit_lock_key(job_id: str) -> str:
    """Return the resubmission lock key of a job."""
    return RESUBMIT_LOCK.format(job_id=job_id)


def stop_requested_key(job_id: str) -> str:
    """Return the key that records a stop asked of a running job."""
    return STOP_REQUESTED.format(job_id=job_id)


def worker_alive_key(name: str) -> str:
    """Return the liveness key of one of our worker processes."""
    return WORKER_ALIVE.format(name=name)


# RQ's own records, read directly where RQ's calls would clean up or prune as they read.
RQ_WORKER_PREFIX = BaseWorker.redis_worker_namespace_prefix
RQ_QUEUES = Queue.redis_queues_keys  # the set of the queue keys RQ (and its dashboard) knows


def job_key(job_id: str) -> str:
    """Return the hash of an RQ job."""
    return Job.key_for(job_id)


def queue_key(queue: str) -> str:
    """Return the list of job ids waiting on an RQ queue."""
    return Queue.redis_queue_namespace_prefix + queue


def intermediate_key(queue: str) -> str:
    """Return the list where a single-queue RQ worker holds the job it just popped."""
    return IntermediateQueue.get_intermediate_queue_key(queue_key(queue))


def failed_key(queue: str) -> str:
    """Return the failed-job registry of a queue: the dead letters, scored by expiry."""
    return FailedJobRegistry.key_template.format(queue)


def started_key(queue: str) -> str:
    """Return the started-job registry of a queue: members are "<job id>:<execution id>"."""
    return StartedJobRegistry.key_template.format(queue)


def scheduled_key(queue: str) -> str:
    """Return the scheduled-job registry of a queue: retries waiting for their time."""
    return ScheduledJobRegistry.key_template.format(queue)


def deferred_key(queue: str) -> str:
    """Return the deferred-job registry of a queue: jobs waiting for their dependencies."""
    return DeferredJobRegistry.key_template.format(queue)


def scheduler_lock_key(queue: str) -> str:
    """Return the key a worker's scheduler holds while it schedules a queue."""
    return str(RQScheduler.get_locking_key(queue))


def worker_key(name: str) -> str:
    """Return the hash of an RQ worker."""
    return RQ_WORKER_PREFIX + name


def workers_of_queue_key(queue: str) -> str:
    """Return the set of the RQ workers that listen on a queue."""
    return WORKERS_BY_QUEUE_KEY % queue
