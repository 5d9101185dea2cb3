"""The queue core against a real Redis: ids, duplicates, backpressure, cancel, dead letters."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Callback, Queue
from rq.job import Job

from preview_worker import admission, dead_letters, hooks, queueing, retries
from preview_worker.connections import connect
from preview_worker.observe import figures, outcomes
from preview_worker.render import preview_hash
from preview_worker.render.model import render_input
from preview_worker.settings import Settings, get_settings, load_settings
from preview_worker.worker import PreviewWorker

from .conftest import payload, service_environment, submit_together


def queue_lengths(connection: redis.Redis, settings: Settings) -> dict[str, int]:
    """Return how many jobs wait on each queue."""
    return {queue.name: queue.count for queue in queueing.queues(connection, settings)}


@pytest.fixture
def in_process_worker(
    redis_url: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """Give a function that runs every queued job with a real worker in this process."""
    for name, value in service_environment(redis_url, data_dir, PREVIEW_RETRY_MAX="0").items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()

    def work(connection: redis.Redis, settings: Settings) -> None:
        """Run every queued job with a burst worker on the given connection."""
        PreviewWorker(queueing.queues(connection, settings), connection=connection).work(
            burst=True
        )

    yield work
    get_settings.cache_clear()


def test_job_id_is_the_idempotency_key() -> None:
    """Given an idempotencyKey, the job id is that key."""
    assert queueing.job_id_for(payload(idempotencyKey="draft-42")) == "draft-42"


def test_job_id_digest_ignores_delivery_fields_but_not_content() -> None:
    """Given no key, the job id ignores priority and requestId but not revision or dryRun."""
    plain = queueing.job_id_for(payload())
    assert queueing.job_id_for(payload(priority="high", requestId="r-1")) == plain
    assert queueing.job_id_for(payload(revision=2)) != plain
    assert queueing.job_id_for(payload(dryRun=True)) != plain


@pytest.mark.parametrize(
    ("one", "same"),
    [
        ({"revision": 1}, {"revision": 1.0}),
        ({"revision": 0}, {"revision": -0.0}),
        ({"revision": 0}, {"revision": -0}),
        ({"revision": 100}, {"revision": 1e2}),
        ({"output": {"width": 1200}}, {"output": {"width": 1200.0}}),
    ],
)
def test_job_id_digest_reads_integral_floats_as_integers(
    one: dict[str, Any], same: dict[str, Any]
) -> None:
    """Given revision 1 and 1.0 (one JSON number written two ways), the job id is the same."""
    assert queueing.job_id_for(payload(**one)) == queueing.job_id_for(payload(**same))
    assert queueing.job_id_for(payload(**one)) != queueing.job_id_for(payload(revision=1.5))


def test_integral_float_size_gives_one_preview_hash() -> None:
    """Given width 1200.0 and 1200, the render input hashes alike: one preview, stored once."""
    whole = render_input(payload(output={"width": 1200, "height": 630}))
    floated = render_input(payload(output={"width": 1200.0, "height": 630.0}))
    assert preview_hash(floated) == preview_hash(whole)
    # The hash of a render input that kept the float (a caller skipping render_input) too.
    assert preview_hash(replace(whole, width=1200.0)) == preview_hash(whole)  # type: ignore[arg-type]
    assert preview_hash(replace(whole, width=1201)) != preview_hash(whole)


def test_submit_enqueues_on_the_priority_queue_with_meta(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """Given a high payload, When submitted, Then it waits on high with its meta and policy."""
    submission = queueing.submit(redis_client, settings, payload(priority="high"), "req-7")
    assert submission.as_dict() == {
        "jobId": submission.job_id, "status": "queued", "queue": "high", "duplicate": False,
    }
    assert queue_lengths(redis_client, settings) == {"high": 1, "normal": 0, "low": 0}
    job = Job.fetch(submission.job_id, connection=redis_client)
    assert job.meta["requestId"] == "req-7" and job.meta["priority"] == "high"
    assert job.meta["progress"] == {"stage": "queued", "percent": 0}
    assert job.timeout == settings.job_timeout and job.failure_ttl == settings.failure_ttl
    assert job.retries_left == settings.retry_max


def test_queue_name_prefix(redis_client: redis.Redis, redis_url: str, data_dir: Path) -> None:
    """Given PREVIEW_QUEUE_NAME, When a job is submitted, Then its queue and id carry the prefix."""
    settings = load_settings(
        service_environment(redis_url, data_dir, PREVIEW_QUEUE_NAME="tutorials")
    )
    low = payload(priority="low", idempotencyKey="d")
    submission = queueing.submit(redis_client, settings, low)
    assert submission.queue == "tutorials-low"
    assert submission.job_id == "tutorials-d", "apps sharing a Redis keep their own job ids"
    assert Queue("tutorials-low", connection=redis_client).count == 1


def test_duplicate_of_a_queued_job_returns_it(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """Given a queued job, resubmitting it returns that job as a duplicate and queues nothing."""
    first = queueing.submit(redis_client, settings, payload())
    second = queueing.submit(redis_client, settings, payload(requestId="again"))
    assert second.job_id == first.job_id and second.duplicate
    assert sum(queue_lengths(redis_client, settings).values()) == 1


def test_concurrent_duplicates_make_exactly_one_job(
    redis_client: redis.Redis, redis_url: str, settings: Settings
) -> None:
    """Given 40 simultaneous submissions of one key, exactly one is new and one job is queued."""
    submissions = submit_together(redis_url, settings, payload(idempotencyKey="k"), 40)
    assert len(submissions) == 40
    assert [s.duplicate for s in submissions].count(False) == 1
    assert {s.job_id for s in submissions} == {"k"}
    assert redis_client.lrange("rq:queue:normal", 0, -1) == [b"k"]


def test_backpressure_refuses_and_enqueues_nothing(
    redis_client: redis.Redis, redis_url: str, data_dir: Path
) -> None:
    """Given a full queue, one more job raises QueueFull, is not stored, and counts as rejected."""
    settings = load_settings(service_environment(redis_url, data_dir, PREVIEW_QUEUE_MAX="3"))
    for revision in range(3):
        queueing.submit(redis_client, settings, payload(revision=revision))
    before = queue_lengths(redis_client, settings)
    with pytest.raises(queueing.QueueFull, match="3 jobs are queued, the limit is 3"):
        queueing.submit(redis_client, settings, payload(revision=99))
    assert queue_lengths(redis_client, settings) == before
    assert not redis_client.exists(f"rq:job:{queueing.job_id_for(payload(revision=99))}")
    assert figures.read_outcomes(redis_client)[("normal", "rejected")] == 1


def test_cancel_a_queued_job(redis_client: redis.Redis, settings: Settings) -> None:
    """Given a queued job, When canceled, Then it leaves the queue; a second cancel fails."""
    submission = queueing.submit(redis_client, settings, payload())
    assert queueing.cancel(redis_client, submission.job_id) == "canceled"
    status = queueing.job_status(redis_client, submission.job_id)
    assert status["status"] == "canceled" and not status["deadLettered"]
    assert status["error"] == {"type": "Canceled", "message": "canceled on request"}
    assert sum(queue_lengths(redis_client, settings).values()) == 0
    with pytest.raises(queueing.JobAlreadyEnded, match="already ended: canceled"):
        queueing.cancel(redis_client, submission.job_id)


def test_unknown_job(redis_client: redis.Redis) -> None:
    """Given an unknown job id, cancel and status both raise JobNotFound."""
    with pytest.raises(queueing.JobNotFound):
        queueing.cancel(redis_client, "nope")
    with pytest.raises(queueing.JobNotFound):
        queueing.job_status(redis_client, "nope")


def test_duplicate_of_a_canceled_job_starts_a_new_attempt(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """Given a canceled job, resubmitting it queues it again under its id, not as a duplicate."""
    first = queueing.submit(redis_client, settings, payload())
    queueing.cancel(redis_client, first.job_id)
    again = queueing.submit(redis_client, settings, payload())
    assert again.job_id == first.job_id and not again.duplicate and again.status == "queued"
    assert sum(queue_lengths(redis_client, settings).values()) == 1


def test_backoff_grows_is_capped_and_jittered(settings: Settings) -> None:
    """Retry delays grow up to the cap, jitter varies them by seed; no retries means no policy."""
    many = load_settings({"PREVIEW_RETRY_MAX": "8", "PREVIEW_RETRY_BASE_DELAY": "2",
                          "PREVIEW_RETRY_MAX_DELAY": "60"})
    delays = retries.backoff_delays(many, random.Random(1))
    assert delays == sorted(delays) and max(delays) <= 60 and delays[0] >= 1
    assert all(2 * 2**i / 2 <= d + 0.5 for i, d in enumerate(delays) if 2 * 2**i <= 60)
    draws = {tuple(retries.backoff_delays(many, random.Random(seed))) for seed in range(20)}
    assert len(draws) > 1, "jitter spreads the retries of jobs that failed together"
    assert retries.retry_policy(load_settings({"PREVIEW_RETRY_MAX": "0"})) is None


def test_dead_letters_list_requeue_and_purge(
    redis_client: redis.Redis, settings: Settings, in_process_worker: Any
) -> None:
    """Given three rejected jobs, dead letters list them; requeue and purge, by id or all, work."""
    bad = [payload(tutorialId=f"BAD-{n}") for n in range(3)]  # the worker rejects them
    ids = [queueing.submit(redis_client, settings, each).job_id for each in bad]
    in_process_worker(redis_client, settings)

    letters = dead_letters.list_dead_letters(redis_client, settings)
    assert {letter["jobId"] for letter in letters} == set(ids)
    assert all(letter["error"]["type"] == "InvalidPayload" for letter in letters)
    assert all("/tutorialId" in letter["error"]["message"] for letter in letters)

    assert dead_letters.requeue(redis_client, settings, ids[0]) == [ids[0]]
    requeued = queueing.job_status(redis_client, ids[0])
    assert requeued["status"] == "queued" and requeued["retriesLeft"] == settings.retry_max
    assert dead_letters.purge(redis_client, settings, ids[1]) == [ids[1]]
    assert not redis_client.exists(f"rq:job:{ids[1]}")
    with pytest.raises(dead_letters.NotDeadLettered):
        dead_letters.purge(redis_client, settings, ids[1])
    assert dead_letters.purge(redis_client, settings) == [ids[2]]
    assert dead_letters.list_dead_letters(redis_client, settings) == []


def test_outcomes_add_up_and_a_failing_recorder_never_raises(
    redis_client: redis.Redis,
) -> None:
    """Outcomes fill the counter and histogram; recording to an unreachable Redis does not raise."""
    outcomes.record_outcome(redis_client, "high", "succeeded", 0.3)
    outcomes.record_outcome(redis_client, "high", "succeeded", 7.0)
    assert figures.read_outcomes(redis_client) == {("high", "succeeded"): 2}
    histogram = figures.read_durations(redis_client, ["high"])["high"]
    assert histogram.count == 2 and histogram.total == pytest.approx(7.3)
    assert dict(histogram.buckets)[0.5] == 1 and dict(histogram.buckets)[10.0] == 2
    with connect("redis://127.0.0.1:1/0") as unreachable:
        outcomes.record_outcome(unreachable, "high", "succeeded", 1.0)  # logs, does not raise


def test_duplicate_of_a_finished_job_returns_it_and_of_a_dead_letter_starts_anew(
    redis_client: redis.Redis, settings: Settings, in_process_worker: Any
) -> None:
    """Given one finished and one dead-lettered job, resubmitting each does what it should."""
    good = queueing.submit(redis_client, settings, payload()).job_id
    bad = queueing.submit(redis_client, settings, payload(tutorialId="BAD")).job_id
    in_process_worker(redis_client, settings)
    assert queueing.job_status(redis_client, good)["status"] == "finished"
    again = queueing.submit(redis_client, settings, payload())
    assert again.duplicate and again.status == "finished"
    retry = queueing.submit(redis_client, settings, payload(tutorialId="BAD"))
    assert retry.job_id == bad and not retry.duplicate and retry.status == "queued"
    assert queueing.job_status(redis_client, bad)["attempts"] == 0


def test_requeue_and_purge_every_dead_letter(
    redis_client: redis.Redis, settings: Settings, in_process_worker: Any
) -> None:
    """Given three dead letters, requeue --all then purge --all empties the queue."""
    for n in range(3):
        queueing.submit(redis_client, settings, payload(tutorialId=f"BAD-{n}"))
    in_process_worker(redis_client, settings)
    assert len(dead_letters.requeue(redis_client, settings)) == 3
    assert queueing.queued_count(redis_client, settings) == 3
    in_process_worker(redis_client, settings)
    assert len(dead_letters.purge(redis_client, settings)) == 3
    assert dead_letters.list_dead_letters(redis_client, settings) == []


@pytest.mark.parametrize("batched", [False, True], ids=["submit", "batch"])
def test_one_round_trip_submit_writes_the_job_queue_enqueue_writes(
    redis_client: redis.Redis, settings: Settings, batched: bool
) -> None:
    """A job submitted by our script has every hash field RQ's Queue.enqueue writes, equal."""
    submitted = payload(priority="low", requestId="req-same")
    if batched:  # the second of a batch, beside a job of another queue
        others = [payload(priority="high", revision=7), submitted]
        made = queueing.submit_many(redis_client, settings, others, "req-other")[1]
        assert isinstance(made, queueing.Submission)
        ours = made
    else:
        ours = queueing.submit(redis_client, settings, submitted, "req-same")
    theirs = Queue("low", connection=redis_client).enqueue(
        queueing.RENDER_FUNCTION,
        submitted,
        job_id="made-by-rq",
        unique=True,
        retry=retries.retry_policy(settings),
        job_timeout=settings.job_timeout,
        result_ttl=settings.result_ttl,
        failure_ttl=settings.failure_ttl,
        description=f"preview of {submitted['tutorialId']}",
        meta={
            "requestId": "req-same",
            "priority": "low",
            "submittedAt": 0,
            "contentDigest": queueing.content_digest(submitted),
            "progress": {"stage": "queued", "percent": 0},
        },
        on_success=Callback(hooks.on_success),
        on_failure=Callback(hooks.on_failure),
        on_stopped=Callback(hooks.on_stopped),
    )
    mine = redis_client.hgetall(f"rq:job:{ours.job_id}")
    rqs = redis_client.hgetall(f"rq:job:{theirs.id}")
    # Ours holds one field more, the content digest its script compares for idempotency.
    assert set(mine) - set(rqs) == {admission.DIGEST_FIELD.encode()}
    assert set(rqs) <= set(mine)
    moments = {b"created_at", b"enqueued_at"}
    jittered = {b"retry_intervals"}  # each job draws its own back-off (see retries.py)
    for field in sorted(set(rqs) - moments - jittered - {b"meta"}):
        assert mine[field] == rqs[field], field
    assert len(json.loads(mine[b"retry_intervals"])) == len(json.loads(rqs[b"retry_intervals"]))
    our_job = Job.fetch(ours.job_id, connection=redis_client)
    assert moments <= set(mine)  # when each was made: a moment apart
    assert our_job.enqueued_at is not None and theirs.enqueued_at is not None
    assert abs((our_job.enqueued_at - theirs.enqueued_at).total_seconds()) < 5
    our_meta, their_meta = dict(our_job.meta), dict(theirs.meta)
    assert our_meta.pop("submittedAt") > 0 and their_meta.pop("submittedAt") == 0
    assert our_meta == their_meta
    assert redis_client.ttl(f"rq:job:{ours.job_id}") == redis_client.ttl(f"rq:job:{theirs.id}")
    assert redis_client.lrange("rq:queue:low", 0, -1) == [ours.job_id.encode(), b"made-by-rq"]
    assert b"rq:queue:low" in redis_client.smembers("rq:queues")
