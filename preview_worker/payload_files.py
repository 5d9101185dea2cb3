"""Payload files read from disk or standard input, parsed and validated as the API would."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from preview_worker.schema import (
    FirstProblems,
    PayloadNotJSON,
    PayloadTooLarge,
    Problem,
    parse_payload,
    validate_payload,
)
from preview_worker.settings import Settings

EXIT_INVALID = 1  # some payload broke a rule of the schema
EXIT_UNREADABLE = 2  # a file could not be read or parsed, or the settings are bad


@dataclass
class PayloadFile:
    """What became of one payload file: its payload, its problems or why it could not be read."""

    name: str
    payload: Any = None
    problems: list[Problem] = field(default_factory=list)
    error: str | None = None

    @property
    def first(self) -> FirstProblems:
        """Return the problems shown to people: the first MAX_PROBLEMS, and how many more."""
        return FirstProblems.of(self.problems)

    @property
    def valid(self) -> bool:
        """Whether the file was read and its payload broke no rule."""
        return self.error is None and not self.problems

    def as_dict(self) -> dict[str, Any]:
        """Return the machine-readable result of this file."""
        return {
            "file": self.name,
            "valid": self.valid,
            "error": self.error,
            "problems": self.first.as_dicts(),
            "moreProblems": self.first.more,
        }


def read_payload_file(name: str, settings: Settings) -> PayloadFile:
    """Read, parse and validate one payload file, or standard input for '-'."""
    try:
        if name == "-":
            body = sys.stdin.buffer.read()
        else:
            with open(name, "rb") as stream:
                body = stream.read(settings.max_body_bytes + 1)
    except OSError as error:
        return PayloadFile(name, error=f"cannot read: {error.strerror or error}")
    try:
        payload = parse_payload(body, settings.max_body_bytes)
    except PayloadTooLarge as error:
        return PayloadFile(name, problems=[Problem("", str(error))])
    except PayloadNotJSON as error:
        return PayloadFile(name, error=str(error))
    return PayloadFile(name, payload=payload, problems=validate_payload(payload))


def exit_code_of(results: list[PayloadFile]) -> int:
    """Return 2 when any file was unreadable, 1 when any was invalid, else 0."""
    if any(result.error for result in results):
        return EXIT_UNREADABLE
    if any(result.problems for result in results):
        return EXIT_INVALID
    return 0
