"""The /api/preview blueprint: thin views over queueing, dead letters, health and storage."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from flask import Blueprint, Response, g, request, stream_with_context, url_for
from werkzeug.wsgi import wrap_file

from preview_worker import dead_letters, events, keys, queueing
from preview_worker.previews import UnknownArtifact, artifact_policy, open_artifact
from preview_worker.schema import (
    FirstProblems,
    PayloadNotJSON,
    PayloadTooLarge,
    first_problems,
    parse_payload,
)
from preview_worker.signing import link_artifacts
from preview_worker.web.shared import BATCH_OUTCOMES, answer, error_response, shared
from preview_worker.web.streams import sync_stream
from preview_worker.webhooks.hosts import payload_problems

blueprint = Blueprint("preview", __name__)

JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,300}$")  # what RQ accepts as a job id
def checked_job_id(job_id: str) -> str:
    """Refuse a job id RQ could never have made, as an unknown job."""
    if not JOB_ID.match(job_id):
        raise queueing.JobNotFound(job_id)
    return job_id


@blueprint.errorhandler(queueing.JobNotFound)
def unknown_job(error: queueing.JobNotFound) -> Response:
    """Answer 404 for a job that does not exist."""
    return error_response(404, "not_found", "no such job")


class BodyRefused(Exception):
    """A request body that is not JSON within its limit; the answer says why."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


@blueprint.errorhandler(BodyRefused)
def refused_body(error: BodyRefused) -> Response:
    """Answer a refused body with its own error envelope."""
    return error.response


def json_body(limit: int, what: str) -> Any:
    """Return the request's body parsed as strict JSON, or raise BodyRefused (415, 413, 400).

    The server stops reading a body past its route's limit, so what it announces decides.
    """
    if not request.is_json:
        raise BodyRefused(error_response(
            415, "unsupported_media_type", f"send the {what} as application/json"
        ))
    try:
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(request.content_length, limit)
        return parse_payload(request.get_data(), limit)
    except PayloadTooLarge as error:
        raise BodyRefused(error_response(413, "payload_too_large", str(error))) from None
    except PayloadNotJSON as error:
        raise BodyRefused(error_response(400, "bad_json", f"the body is {error}")) from None


@blueprint.post("/job")
def submit_job() -> Response:
    """Validate a payload and enqueue it; ?dryRun=true validates only."""
    settings = shared().settings
    payload = json_body(settings.max_body_bytes, "payload")
    found = first_problems(payload)
    if not found.valid:
        message = "the payload is invalid"
        if found.more:
            message += f": {found.total} problems, the first {len(found.problems)} listed"
        return error_response(
            422, "invalid_payload", message, details=found.as_dicts(), moreProblems=found.more
        )
    refused = payload_problems(payload, settings)  # a webhook host the service does not allow
    if refused:
        return error_response(422, "invalid_payload", "the payload is invalid",
                              details=[problem.as_dict() for problem in refused], moreProblems=0)
    chosen = payload.get("requestId")
    if "X-Request-ID" not in request.headers and isinstance(chosen, str):
        g.request_id = chosen  # valid, so it matches REQUEST_ID: the payload's correlation id
    if request.args.get("dryRun", "").lower() in ("1", "true"):
        queue = queueing.queue_name(settings, payload.get("priority", queueing.DEFAULT_PRIORITY))
        job_id = queueing.job_id_for(payload, settings.queue_name)
        return answer({"valid": True, "jobId": job_id, "queue": queue})
    try:
        submission = queueing.submit(shared().connection, settings, payload, g.request_id)
    except queueing.IdempotencyConflict as error:
        return error_response(409, "idempotency_conflict", str(error), jobId=error.job_id)
    except queueing.QueueFull as error:
        response = error_response(503, "queue_full", str(error))
        response.headers["Retry-After"] = "30"
        return response
    location = url_for("preview.job_status", job_id=submission.job_id)
    body = submission.as_dict() | {"eventsUrl": shared().signer.events_url(submission.job_id)}
    return answer(body, 200 if submission.duplicate else 202, Location=location)


@blueprint.post("/jobs")
def submit_jobs() -> Response:
    """Validate and enqueue many payloads at once; each is answered on its own, in order."""
    settings = shared().settings
    body = json_body(settings.max_batch_bytes, "batch")
    jobs = body.get("jobs") if isinstance(body, dict) and set(body) == {"jobs"} else None
    if not isinstance(jobs, list) or not 1 <= len(jobs) <= settings.batch_max:
        return error_response(
            422, "invalid_batch",
            f'send {{"jobs": [payload, ...]}} with 1 to {settings.batch_max} payloads',
        )
    answers: list[dict[str, Any]] = [{} for _ in jobs]
    valid: list[int] = []
    for index, item in enumerate(jobs):
        found = first_problems(item)
        if found.valid:
            found = FirstProblems.of(payload_problems(item, settings))
        if found.valid:
            valid.append(index)
        else:
            answers[index] = {"outcome": "invalid", "problems": found.as_dicts(),
                              "moreProblems": found.more}
    results = queueing.submit_many(
        shared().connection, settings, [jobs[index] for index in valid], g.request_id
    )
    for index, result in zip(valid, results, strict=True):
        answers[index] = batch_item(result)
    counts = Counter(item["outcome"] for item in answers)
    return answer({"jobs": answers, "counts": {name: counts[name] for name in BATCH_OUTCOMES}})


def batch_item(result: queueing.Submission | Exception) -> dict[str, Any]:
    """Return one batch item's answer: its job, or why it was not enqueued."""
    if isinstance(result, queueing.Submission):
        outcome = "duplicate" if result.duplicate else "accepted"
        return {"outcome": outcome, **result.as_dict()}
    if isinstance(result, queueing.IdempotencyConflict):
        return {"outcome": "conflict", "jobId": result.job_id, "message": str(result)}
    return {"outcome": "refused", "reason": "queue_full", "message": str(result)}


@blueprint.get("/job/<job_id>")
@blueprint.get("/job/<job_id>/status", endpoint="job_status_alias")
def job_status(job_id: str) -> Response:
    """Answer a job's status, with signed URLs of its artifacts once it finished."""
    status = queueing.job_status(shared().connection, checked_job_id(job_id))
    link_artifacts(status, shared().signer)
    status["eventsUrl"] = shared().signer.events_url(job_id)
    return answer(status)


# Set in the WSGI environ by the server when its event loop serves event streams itself.
EVENTS_ON_LOOP = "preview.events_on_loop"
# The answer's header that hands a stream to the server's loop: "<job id> <last event id>".
# The server takes it off before the answer goes out.
EVENTS_HANDOFF = "X-Preview-Event-Stream"
EVENT_ID = re.compile(events.EVENT_ID_PATTERN)


@blueprint.get("/job/<job_id>/events")
def job_events(job_id: str) -> Response:
    """Answer a job's events as Server-Sent Events: those after Last-Event-ID, then live."""
    job_id = checked_job_id(job_id)
    after = request.headers.get("Last-Event-ID", "").strip()
    if after and not EVENT_ID.match(after):
        return error_response(400, "bad_last_event_id", "Last-Event-ID is not an event id")
    connection = shared().connection
    if not connection.exists(keys.job_key(job_id), keys.events_key(job_id)):
        raise queueing.JobNotFound(job_id)
    # The signed URL is the credential, never a cookie: an editor's page on any origin may
    # follow it.
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
               "Access-Control-Allow-Origin": "*"}
    if after and events.ended_by(connection, job_id, after):
        # 204 tells an EventSource that reconnects after the end to stop trying.
        return Response(status=204, headers=headers)
    if request.environ.get(EVENTS_ON_LOOP):
        headers[EVENTS_HANDOFF] = f"{job_id} {after}"
        return Response(b"", content_type="text/event-stream; charset=utf-8", headers=headers)
    stream = sync_stream(connection, job_id, after, shared().signer)
    return Response(stream_with_context(stream), content_type="text/event-stream; charset=utf-8",
                    headers=headers)


@blueprint.delete("/job/<job_id>")
def cancel_job(job_id: str) -> Response:
    """Cancel a waiting job (200) or ask a running one to stop (202); 409 once it ended."""
    try:
        status = queueing.cancel(shared().connection, checked_job_id(job_id))
    except queueing.JobAlreadyEnded as error:
        return error_response(409, "already_ended", str(error), status=error.status)
    return answer({"jobId": job_id, "status": status}, 202 if status == "stopping" else 200)


@blueprint.get("/worker/health")
def health() -> Response:
    """Answer 200 when the queue can make progress, 503 with the reasons when it cannot."""
    from preview_worker.health import health_report

    report = health_report(shared().connection, shared().settings)
    return answer(report.as_dict(), 200 if report.ok else 503)


@blueprint.get("/metrics")
def queue_metrics() -> Response:
    """Answer the queues' figures as JSON, for people and scripts."""
    from preview_worker.observe.figures import queue_picture

    return answer(queue_picture(shared().connection, shared().settings))


@blueprint.get("/dlq")
def list_dead_letters() -> Response:
    """List dead-lettered jobs with why they failed."""
    letters = dead_letters.list_dead_letters(shared().connection, shared().settings)
    return answer({"jobs": letters, "count": len(letters)})


def on_dead_letter(operation: dead_letters.Operation, job_id: str, status: str) -> Response:
    """Apply a dead-letter operation to one job; 404 when it is not dead-lettered."""
    try:
        operation(shared().connection, shared().settings, checked_job_id(job_id))
    except dead_letters.NotDeadLettered as error:
        return error_response(404, "not_found", str(error))
    return answer({"jobId": job_id, "status": status})


@blueprint.post("/dlq/<job_id>/requeue")
def requeue_dead_letter(job_id: str) -> Response:
    """Put a dead-lettered job back on its queue with fresh retries."""
    return on_dead_letter(dead_letters.requeue, job_id, "queued")


@blueprint.delete("/dlq/<job_id>")
def purge_dead_letter(job_id: str) -> Response:
    """Delete a dead-lettered job for good."""
    return on_dead_letter(dead_letters.purge, job_id, "purged")


@blueprint.get("/artifacts/<digest>/<name>")
def artifact(digest: str, name: str) -> Response:
    """Serve one artifact to whoever holds a valid, unexpired signature for it."""
    if not shared().signer.allows(request.args.get("token", ""), digest, name):
        return error_response(403, "forbidden", "the artifact link is invalid or expired")
    try:
        stored, content_type = open_artifact(shared().store, digest, name)
    except UnknownArtifact:
        return error_response(404, "not_found", "no such artifact")
    # Streamed in blocks, never read whole; they never change under their hash: cache long.
    response = Response(
        # content_type, not mimetype: werkzeug would add a second charset to text/html.
        wrap_file(request.environ, stored.stream), content_type=content_type,
        direct_passthrough=True,
    )
    response.content_length = stored.size
    response.headers["Cache-Control"] = "private, max-age=3600, immutable"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = artifact_policy(shared().settings.frame_ancestors)
    return response


@blueprint.get("/openapi.json")
def openapi() -> Response:
    """Answer the OpenAPI 3.1 description of this API."""
    from preview_worker.web.openapi import openapi_document

    return answer(openapi_document())
