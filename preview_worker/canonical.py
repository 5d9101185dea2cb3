"""The one JSON encoding of a value, so that equal payloads give equal digests."""

from __future__ import annotations

import json
from typing import Any

# Built once: json.dumps with options builds an encoder on every call, which costs more than
# encoding a small value.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _number(text: str) -> int | float:
    """Read a JSON number written with a fraction or an exponent: an integer when it is one."""
    number = float(text)
    return int(number) if number.is_integer() else number


def canonical_value(data: Any) -> Any:
    """Return data with every number in its one form: 1.0 and 1e0 as 1, -0.0 as 0.

    JSON has one kind of number: 1 and 1.0 are the same number, and so are -0 and 0. A number
    with a fraction (1.5) stays a float. Tuples come back as lists, like JSON would have them.
    Done by the C encoder and parser, so no depth of nesting costs Python recursion.
    """
    return json.loads(_ENCODER.encode(data), parse_float=_number)


def canonical_text(data: Any) -> str:
    """Return the one JSON text of some data: canonical numbers, sorted keys, no spaces."""
    text = _ENCODER.encode(data)
    floats: list[str] = []

    def number(found: str) -> int | float:
        floats.append(found)
        return _number(found)

    value = json.loads(text, parse_float=number)
    # Without a float the sorted text is canonical already (payloads seldom hold one).
    return _ENCODER.encode(value) if floats else text


def canonical_json(data: Any) -> bytes:
    """Return the one JSON encoding of some data: canonical_text() in UTF-8."""
    return canonical_text(data).encode()
