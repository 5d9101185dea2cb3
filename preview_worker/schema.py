"""Validation of preview job payloads against the one JSON Schema, compiled once."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator, ValidationError

SCHEMA_FILE = "preview-job.schema.json"


@dataclass(frozen=True, order=True)
class Problem:
    """One reason a payload is invalid: a JSON Pointer into the payload and a message."""

    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        """Return the problem as the JSON object clients receive."""
        return {"path": self.path, "message": self.message}

    def __str__(self) -> str:
        """Say the problem in one line for people: where, then what."""
        return f"{self.path or '(root)'}: {self.message}"


class PayloadTooLarge(ValueError):
    """A payload body is over the byte limit; it was not parsed."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"payload is {size} bytes, over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


@functools.lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """Return the payload schema shipped with the package."""
    text = resources.files("preview_worker.schemas").joinpath(SCHEMA_FILE).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def default_of(*path: str) -> Any:
    """Return the default the schema gives a payload member, e.g. default_of("output", "theme")."""
    schema = load_schema()
    node: dict[str, Any] = schema
    for name in path:
        node = _resolved(schema, node)["properties"][name]
    return _resolved(schema, node)["default"]


def _resolved(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local $ref ("#/$defs/output") to the subschema it names."""
    while "$ref" in node:
        target: dict[str, Any] = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


@functools.lru_cache(maxsize=1)
def payload_validator() -> Draft202012Validator:
    """Return the compiled validator, built once per process."""
    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def json_pointer(parts: Any) -> str:
    """Return the JSON Pointer (RFC 6901) of a sequence of keys and indexes."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in parts)


def _problems_of(error: ValidationError) -> list[Problem]:
    """Turn one schema error into problems that point at the offending member."""
    path = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        # Point at the missing member itself, which is where an editor shows the problem.
        required: Any = error.validator_value
        missing = [name for name in required if name not in error.instance]
        return [Problem(json_pointer([*path, name]), "is required") for name in missing]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        schema: Any = error.schema
        allowed = set(schema.get("properties", {}))
        extra = [name for name in error.instance if name not in allowed]
        return [Problem(json_pointer([*path, name]), "is not an allowed field") for name in extra]
    return [Problem(json_pointer(path), _message(error))]


def _message(error: ValidationError) -> str:
    """Say what is wrong without echoing the (possibly huge) offending value."""
    rule, limit = error.validator, error.validator_value
    messages = {
        "type": f"must be of type {_words(limit)}",
        "enum": f"must be one of {_words(limit)}",
        "const": f"must be {json.dumps(limit)}",
        "pattern": f"must match the pattern {limit}",
        "minLength": f"must be at least {limit} characters long",
        "maxLength": f"must be at most {limit} characters long",
        "minItems": f"must have at least {limit} item{'' if limit == 1 else 's'}",
        "maxItems": f"must have at most {limit} item{'' if limit == 1 else 's'}",
        "uniqueItems": "must not repeat an item",
        "minimum": f"must be at least {limit}",
        "maximum": f"must be at most {limit}",
    }
    if rule == "minLength" and limit == 1:
        messages["minLength"] = "must not be empty"
    message: str = messages.get(str(rule), error.message)
    return message if len(message) <= 200 else message[:199] + "\u2026"


def _words(value: Any) -> str:
    """List one or several schema values for a message."""
    values = value if isinstance(value, list) else [value]
    return ", ".join(json.dumps(item) if not isinstance(item, str) else item for item in values)


def validate_payload(payload: object) -> list[Problem]:
    """Return every problem of a payload, sorted by path; an empty list means valid."""
    try:
        errors = list(payload_validator().iter_errors(payload))
    except RecursionError:
        return [Problem("", "payload is nested too deeply")]
    problems = {problem for error in errors for problem in _problems_of(error)}
    return sorted(problems)


class PayloadNotJSON(ValueError):
    """A payload body is not a JSON text in UTF-8."""


def check_body_size(body: bytes, limit: int) -> None:
    """Raise PayloadTooLarge for a body over the byte limit, before anyone parses it."""
    if len(body) > limit:
        raise PayloadTooLarge(len(body), limit)


def _refuse_constant(name: str) -> Any:
    """Refuse NaN and Infinity, which Python accepts but JSON does not have."""
    raise ValueError(f"{name} is not valid JSON")


def parse_payload(body: bytes, limit: int) -> Any:
    """Check a body's size, then parse it as strict JSON, or raise PayloadTooLarge/NotJSON."""
    check_body_size(body, limit)
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as error:
        raise PayloadNotJSON(f"not UTF-8 text (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise PayloadNotJSON(
            f"not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})"
        ) from None
    except ValueError as error:
        raise PayloadNotJSON(str(error)) from None
    except RecursionError:
        raise PayloadNotJSON("JSON is nested too deeply") from None
