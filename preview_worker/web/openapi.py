"""The OpenAPI 3.1 description of the /api/preview blueprint, built around the payload schema."""

from __future__ import annotations

import copy
import functools
from typing import Any

from preview_worker.events import EVENT_ID_PATTERN, KINDS
from preview_worker.schema import load_schema
from preview_worker.settings import Settings
from preview_worker.web.shared import BATCH_OUTCOMES

BATCH_MAX = Settings().batch_max  # the default; PREVIEW_BATCH_MAX may set another

STATUSES = [
    "queued",
    "started",
    "finished",
    "failed",
    "scheduled",
    "deferred",
    "canceled",
    "stopped",
]


# One message of a job's event stream, as an EventSource parses it.
SSE_EVENT = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "pattern": EVENT_ID_PATTERN},
        "event": {"enum": list(KINDS)},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "retry": {"type": "integer"},
    },
}
# A job's event stream, signed for a browser's EventSource, which sends no headers.
EVENTS_URL = {"type": "string", "description": "signed, expiring URL of the job's events"}


# How a job's webhook went (the status call's answer has it; the webhook's own body not).
DELIVERIES = {
    "description": "the job's webhook: null when its payload names none; waiting until the "
                   "job ends; then pending (retries included), delivered, failed (after the "
                   "last attempt) or refused (a host it may not call)",
    "type": ["object", "null"],
    "required": ["outcome", "attempts", "lastCode", "lastError", "lastAt"],
    "properties": {
        "outcome": {"enum": ["waiting", "pending", "delivered", "failed", "refused"]},
        "attempts": {"type": "integer", "minimum": 0},
        "lastCode": {"type": ["integer", "null"], "description": "HTTP status of the last answer"},
        "lastError": {"type": ["string", "null"]},
        "lastAt": {"type": ["string", "null"]},
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """Describe a JSON response."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    """Refer to a component schema."""
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    """Describe an error answer."""
    return _json(_ref("Error"), description)


def _rehome(node: Any) -> Any:
    """Point the payload schema's own references at the OpenAPI components."""
    if isinstance(node, dict):
        return {
            key: value.replace("#/$defs/", "#/components/schemas/")
            if key == "$ref"
            else _rehome(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_rehome(item) for item in node]
    return node


def _components() -> dict[str, Any]:
    """Return the schemas the answers are made of."""
    payload = _rehome(copy.deepcopy(load_schema()))
    definitions = payload.pop("$defs")
    payload.pop("$schema", None)
    payload.pop("$id", None)
    schemas: dict[str, Any] = {"Payload": payload, **definitions}
    text = {"type": ["string", "null"]}
    schemas.update(
        {
            "Error": {
                "type": "object",
                "required": ["error", "message", "requestId"],
                "properties": {
                    "error": {"type": "string"},
                    "message": {"type": "string"},
                    "requestId": text,
                    "status": {"type": "string"},
                    "moreProblems": {"type": "integer", "minimum": 0},
                    "jobId": {"type": "string"},
                    "details": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["path", "message"],
                            "properties": {
                                "path": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        },
                    },
                },
            },
            "Submission": {
                "type": "object",
                "required": ["jobId", "status", "queue", "duplicate"],
                "properties": {
                    "jobId": {"type": "string"},
                    "status": {"enum": STATUSES},
                    "queue": {"type": "string"},
                    "duplicate": {"type": "boolean"},
                    "eventsUrl": EVENTS_URL,
                },
            },
            "Batch": {
                "type": "object",
                "required": ["jobs"],
                "additionalProperties": False,
                # Items are checked one by one after the batch is taken: any JSON value here.
                "properties": {"jobs": {"type": "array", "minItems": 1, "maxItems": BATCH_MAX}},
            },
            "BatchAnswer": {
                "type": "object",
                "required": ["jobs", "counts"],
                "properties": {
                    "jobs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["outcome"],
                            "properties": {
                                "outcome": {"enum": list(BATCH_OUTCOMES)},
                                "jobId": {"type": "string"},
                                "status": {"enum": STATUSES},
                                "queue": {"type": "string"},
                                "duplicate": {"type": "boolean"},
                                "problems": {"type": "array"},
                                "moreProblems": {"type": "integer"},
                                "reason": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        },
                    },
                    "counts": {
                        "type": "object",
                        "properties": {name: {"type": "integer"} for name in BATCH_OUTCOMES},
                    },
                },
            },
            "JobStatus": {
                "type": "object",
                "required": [
                    "jobId",
                    "status",
                    "queue",
                    "progress",
                    "attempts",
                    "retriesLeft",
                    "enqueuedAt",
                    "startedAt",
                    "endedAt",
                    "result",
                    "error",
                    "deadLettered",
                ],
                "properties": {
                    "jobId": {"type": "string"},
                    "status": {"enum": STATUSES},
                    "queue": {"type": "string"},
                    "priority": text,
                    "requestId": text,
                    "progress": {"type": ["object", "null"]},
                    "attempts": {"type": "integer"},
                    "retriesLeft": {"type": "integer"},
                    "enqueuedAt": text,
                    "startedAt": text,
                    "endedAt": text,
                    "result": {
                        "type": ["object", "null"],
                        "properties": {
                            "artifactHash": {"type": "string"},
                            "cached": {"type": "boolean"},
                            "dryRun": {"type": "boolean"},
                            # What the artifacts cannot show, e.g. characters no font has.
                            "warnings": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                    "error": {"type": ["object", "null"]},
                    "deadLettered": {"type": "boolean"},
                    "eventsUrl": EVENTS_URL,
                    "deliveries": DELIVERIES,
                },
            },
            "DryRun": {
                "type": "object",
                "required": ["valid", "jobId", "queue"],
                "properties": {
                    "valid": {"const": True},
                    "jobId": {"type": "string"},
                    "queue": {"type": "string"},
                },
            },
            "Object": {"type": "object"},
        }
    )
    return schemas


def _with_header(answer: dict[str, Any], name: str, description: str) -> dict[str, Any]:
    """Add a header that the answer always carries."""
    header = {"description": description, "required": True, "schema": {"type": "string"}}
    return {**answer, "headers": {name: header}}


def _paths() -> dict[str, Any]:
    """Return every call of the API with its answers."""
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
    unauthorized = {
        "401": _with_header(
            _error("missing or wrong bearer token"),
            "WWW-Authenticate",
            "the scheme to authenticate with",
        )
    }
    not_found = {"404": _error("no such job")}
    unavailable = {
        "503": _with_header(
            _error("the queue is full or unreachable"),
            "Retry-After",
            "seconds to wait before trying again",
        )
    }
    # Probes answer without a token unless PREVIEW_OPEN_PROBES=false: the token is optional.
    probe: dict[str, Any] = {"security": [{}, {"bearer": []}]}
    # Every call that reads or writes Redis answers 503 while Redis is unreachable.
    status = {
        "200": _json(_ref("JobStatus"), "the job"),
        **not_found,
        **unauthorized,
        **unavailable,
    }
    return {
        "/api/preview/job": {
            "post": {
                "summary": "Submit a preview job",
                "parameters": [{"name": "dryRun", "in": "query", "schema": {"type": "string"}}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("Payload")}},
                },
                "responses": {
                    "202": _with_header(
                        _json(_ref("Submission"), "accepted"), "Location", "the job's status URL"
                    ),
                    "200": _json(
                        {"oneOf": [_ref("Submission"), _ref("DryRun")]},
                        "a duplicate, or a dry run's verdict",
                    ),
                    "400": _error("not JSON"),
                    "413": _error("too large"),
                    "409": _error("the idempotency key was used for other content"),
                    "415": _error("not application/json"),
                    "422": _error("invalid payload, or a notify.url whose host is not allowed"),
                    **unauthorized,
                    **unavailable,
                },
            }
        },
        "/api/preview/jobs": {
            "post": {
                "summary": "Submit many preview jobs; each item is answered on its own, in order",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("Batch")}},
                },
                "responses": {
                    "200": _json(_ref("BatchAnswer"), "each item's outcome, in order"),
                    "400": _error("not JSON"),
                    "413": _error("too large"),
                    "415": _error("not application/json"),
                    "422": _error("not a batch of 1 to PREVIEW_BATCH_MAX items"),
                    **unauthorized,
                    **unavailable,
                },
            }
        },
        "/api/preview/job/{job_id}": {
            "parameters": [job_id],
            "get": {"summary": "A job's status", "responses": status},
            "delete": {
                "summary": "Cancel or stop a job",
                "responses": {
                    "200": _json(_ref("Object"), "canceled"),
                    "202": _json(_ref("Object"), "asked to stop"),
                    "409": _error("already ended"),
                    **not_found,
                    **unauthorized,
                    **unavailable,
                },
            },
        },
        "/api/preview/job/{job_id}/status": {
            "parameters": [job_id],
            "get": {"summary": "A job's status", "responses": status},
        },
        "/api/preview/job/{job_id}/events": {
            "parameters": [job_id],
            "get": {
                "summary": "A job's events as Server-Sent Events, until it ends",
                "description": (
                    "Each message: `id` (give it back as Last-Event-ID to resume), `event` "
                    "(queued, started, progress, retrying, finished, dead-lettered, canceled) "
                    "and `data`, a JSON object with `type` and the event's fields: `attempt`; "
                    "`stage` and `percent`; `reason` and `delay`; `status` (the status answer, "
                    "its artifact URLs signed); `reason`. Comments keep a quiet stream open; "
                    "the server closes it after the final event. Takes the bearer token or the "
                    "`token` of the signed `eventsUrl` that submit and status answers carry."
                ),
                "security": [{"bearer": []}, {"signedUrl": []}],
                "parameters": [
                    {"name": "token", "in": "query", "schema": {"type": "string"}},
                    {"name": "Last-Event-ID", "in": "header",
                     # Empty is no id at all, as an EventSource's first request has none.
                     "schema": {"type": "string", "pattern": r"^(\d{1,20}-\d{1,20})?$"}},
                ],
                "responses": {
                    "200": {"description": "the events",
                            "content": {"text/event-stream": {"schema": SSE_EVENT}}},
                    "400": _error("Last-Event-ID is not an event id"),
                    **not_found,
                    **unauthorized,
                    **unavailable,
                },
            },
        },
        "/api/preview/worker/health": {
            "get": {
                "summary": "Health",
                **probe,
                "responses": {
                    "200": _json(_ref("Object"), "healthy"),
                    "503": _json(_ref("Object"), "unhealthy"),
                    **unauthorized,
                },
            }
        },
        "/api/preview/metrics": {
            "get": {
                "summary": "Queue figures",
                **probe,
                "responses": {
                    "200": _json(_ref("Object"), "figures"),
                    **unavailable,
                    **unauthorized,
                },
            }
        },
        "/api/preview/dlq": {
            "get": {
                "summary": "Dead letters",
                "responses": {
                    "200": _json(_ref("Object"), "dead-lettered jobs"),
                    **unauthorized,
                    **unavailable,
                },
            }
        },
        "/api/preview/dlq/{job_id}/requeue": {
            "parameters": [job_id],
            "post": {
                "summary": "Requeue a dead letter",
                "responses": {
                    "200": _json(_ref("Object"), "requeued"),
                    **not_found,
                    **unauthorized,
                    **unavailable,
                },
            },
        },
        "/api/preview/dlq/{job_id}": {
            "parameters": [job_id],
            "delete": {
                "summary": "Purge a dead letter",
                "responses": {
                    "200": _json(_ref("Object"), "purged"),
                    **not_found,
                    **unauthorized,
                    **unavailable,
                },
            },
        },
        "/api/preview/artifacts/{digest}/{name}": {
            "get": {
                "summary": "One artifact, with a signed token",
                "security": [],  # the signed token in the query is the credential
                "parameters": [
                    {
                        "name": "digest",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                    {
                        "name": "token",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {"description": "the file", "content": {"*/*": {"schema": {}}}},
                    "403": _error("bad or expired signature"),
                    "404": _error("no such artifact"),
                    "503": _with_header(
                        _error("the artifact store is unreachable or failing"),
                        "Retry-After",
                        "seconds to wait before trying again",
                    ),
                },
            }
        },
    }


@functools.lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    """Return the OpenAPI 3.1 description of the API."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "Preview worker", "version": "1"},
        "components": {
            "schemas": _components(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                # The token of a signed eventsUrl, for clients that cannot send headers.
                "signedUrl": {"type": "apiKey", "in": "query", "name": "token"},
            },
        },
        "security": [{"bearer": []}],
        "paths": _paths(),
        "webhooks": _webhooks(),
    }


def _webhooks() -> dict[str, Any]:
    """Return the request a job's webhook receives when the job ends."""
    signature = {
        "name": "Preview-Signature", "in": "header", "required": True,
        "description": 't=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>"> keyed by '
                       "PREVIEW_WEBHOOK_SECRET; refuse it when t is far from now",
        "schema": {"type": "string"},
    }
    delivery = {
        "name": "Preview-Delivery", "in": "header", "required": True,
        "description": "the delivery's id, the same on every attempt: deduplicate by it",
        "schema": {"type": "string"},
    }
    return {
        "jobEnded": {
            "post": {
                "summary": "A job ended: finished, dead-lettered or canceled",
                "description": "Sent to the payload's notify.url; any 2xx answer delivers it, "
                               "anything else is retried with backoff. Artifact URLs are not "
                               "in it: ask the status call for signed ones.",
                "parameters": [signature, delivery],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("JobStatus")}},
                },
                "responses": {"2XX": {"description": "delivered"}},
            }
        }
    }
