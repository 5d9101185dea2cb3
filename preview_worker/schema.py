"""Validation of preview job payloads against the one JSON Schema, compiled once.

Bounded in time for any body under the size limit: the validator is jsonschema's draft
2020-12 one, extended so that no keyword does more than linear work (see _KEYWORDS).
"""

from __future__ import annotations

import functools
import json
import operator
import re
import reprlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jsonschema_rs
from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema.protocols import Validator

from preview_worker.canonical import canonical_text

SCHEMA_FILE = "preview-job.schema.json"
MAX_PROBLEMS = 100  # problems listed to a client at most; the rest are counted


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


# jsonschema's own keyword functions, which the bounded ones below hand over to.
_ITEMS = Draft202012Validator.VALIDATORS["items"]
_UNIQUE_ITEMS = Draft202012Validator.VALIDATORS["uniqueItems"]


def _within_bound(instance: Any, schema: dict[str, Any]) -> Any:
    """Return an array's first maxItems + 1 members, or the instance itself.

    An array longer than its maxItems is refused by maxItems already. items and uniqueItems
    look at no more than one member past the bound: for an array up to one member too long
    the problems are exactly those jsonschema gives; past that, the members further on are
    not looked into (a body of 350,000 empty steps cost 27 s, one of 100,000 distinct
    objects in formats hours).
    """
    limit = schema.get("maxItems")
    if isinstance(limit, int) and isinstance(instance, list) and len(instance) > limit + 1:
        return instance[: limit + 1]
    return instance


def _items_within_bound(
    validator: Validator, items: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    """items, on no more than the first maxItems + 1 members (see _within_bound)."""
    yield from _ITEMS(validator, items, _within_bound(instance, schema), schema)


def _unique_items_in_one_pass(
    validator: Validator, unique: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    """uniqueItems in one pass over no more than maxItems + 1 members (see _within_bound).

    jsonschema compares every pair of members it cannot sort (objects, or strings mixed with
    numbers). Here two members are equal when their canonical JSON texts are (1 and 1.0
    alike, true and 1 apart, keys in any order), which is JSON Schema's equality, and the
    texts are hashed as strings, whose hash Python randomizes: no body makes them collide.
    """
    if not (unique and validator.is_type(instance, "array")):
        return
    members = _within_bound(instance, schema)
    try:
        repeats = _repeats(members)
    except (TypeError, ValueError):  # not JSON data (a Python caller's object): jsonschema's way
        yield from _UNIQUE_ITEMS(validator, unique, members, schema)
        return
    if repeats:
        yield ValidationError(f"{_BRIEF.repr(members)} has non-unique elements")


def _repeats(items: list[Any]) -> bool:
    """Say whether some member of a list equals another, in one pass."""
    seen: set[str | tuple[str]] = set()
    for item in items:
        # A string stands for itself; anything else by its canonical text, in a 1-tuple so
        # that it never equals a string (the text of "a" is '"a"', the string '"a"' differs).
        key: str | tuple[str] = item if isinstance(item, str) else (canonical_text(item),)
        if key in seen:
            return True
        seen.add(key)
    return False


# A value in a message, cut short: jsonschema writes the whole repr of the instance into
# every message, and repr costs more than linear time on deep nesting (each level looks
# through the levels above it for a cycle). Problems never show it (see _message).
_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxother = 2, 40, 40


def _type_briefly(
    validator: Validator, types: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    """type, naming the instance in brief (jsonschema's own message otherwise)."""
    types = types if isinstance(types, list) else [types]
    if not any(validator.is_type(instance, name) for name in types):
        names = ", ".join(repr(name) for name in types)
        yield ValidationError(f"{_BRIEF.repr(instance)} is not of type {names}")


def _enum_briefly(
    validator: Validator, enums: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    """enum, naming the instance in brief."""
    if not any(_json_equal(each, instance) for each in enums):
        yield ValidationError(f"{_BRIEF.repr(instance)} is not one of {enums!r}")


def _json_equal(one: Any, two: Any) -> bool:
    """Say whether two JSON values are equal as JSON Schema has it: 1 is 1.0, true is not 1.

    Stops at the first difference, so a shallow enum value against a deep instance costs
    no more than the enum value's own size.
    """
    if isinstance(one, bool) or isinstance(two, bool):
        return one is two
    if isinstance(one, list) and isinstance(two, list):
        return len(one) == len(two) and all(map(_json_equal, one, two))
    if isinstance(one, dict) and isinstance(two, dict):
        return one.keys() == two.keys() and all(_json_equal(one[k], two[k]) for k in one)
    if isinstance(one, (list, dict)) or isinstance(two, (list, dict)):
        return False
    return bool(one == two)


def _max_items_briefly(
    validator: Validator, limit: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    """maxItems, naming the array in brief."""
    if validator.is_type(instance, "array") and len(instance) > limit:
        message = "is expected to be empty" if limit == 0 else "is too long"
        yield ValidationError(f"{_BRIEF.repr(instance)} {message}")


@functools.lru_cache(maxsize=64)
def ecma_regex(pattern: str) -> re.Pattern[str]:
    """Compile a schema pattern with its ECMA-262 meaning of $: the end, never before a final \\n.

    JSON Schema patterns are ECMA-262 regular expressions; Python's $ also matches before a
    newline that ends the string, so "slug\\n" would pass ^[a-z-]+$. Outside character
    classes, an unescaped $ becomes \\Z. The rest of the syntax the schema uses means the same.
    """
    translated, escaped, in_class = [], False, False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "$":
            char = r"\Z"
        translated.append(char)
    return re.compile("".join(translated))


def _pattern_as_ecma(
    validator: Validator, pattern: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    """pattern, with ECMA-262's $ (see ecma_regex)."""
    if validator.is_type(instance, "string") and not ecma_regex(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


# The keywords replaced. Every other keyword the schema uses does at most linear work on its
# instance, and names it only when it is a string or a number (minLength, pattern, maximum...).
# tests/test_validation_bounds.py lists them and times the worst bodies found.
_KEYWORDS = {
    "type": _type_briefly,
    "enum": _enum_briefly,
    "maxItems": _max_items_briefly,
    "items": _items_within_bound,
    "uniqueItems": _unique_items_in_one_pass,
    "pattern": _pattern_as_ecma,
}
PayloadValidator = validators.extend(Draft202012Validator, _KEYWORDS)  # type: ignore[no-untyped-call]


@functools.lru_cache(maxsize=1)
def payload_validator() -> Validator:
    """Return the compiled, bounded validator, built once per process."""
    schema = load_schema()
    PayloadValidator.check_schema(schema)
    validator: Validator = PayloadValidator(schema)
    return validator


def json_pointer(parts: Any) -> str:
    """Return the JSON Pointer (RFC 6901) of a sequence of keys and indexes."""
    return "".join("/" + _escaped(str(part)) for part in parts)


def _escaped(name: str) -> str:
    """Return a key as a JSON Pointer reference token: ~ as ~0, / as ~1."""
    return name.replace("~", "~0").replace("/", "~1") if "~" in name or "/" in name else name


def _problems_of(error: ValidationError) -> list[tuple[str, str]]:
    """Turn one schema error into problems (path, message) that point at the offending member."""
    where = json_pointer(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        # Point at the missing member itself, which is where an editor shows the problem.
        required: Any = error.validator_value
        missing = [name for name in required if name not in error.instance]
        return [(f"{where}/{_escaped(name)}", "is required") for name in missing]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        schema: Any = error.schema
        allowed = set(schema.get("properties", {}))
        extra = [name for name in error.instance if name not in allowed]
        return [(f"{where}/{_escaped(name)}", "is not an allowed field") for name in extra]
    return [(where, _message(error))]


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


_PATH, _MESSAGE = operator.itemgetter(0), operator.itemgetter(1)


@functools.lru_cache(maxsize=1)
def fast_validator() -> Any:
    """Return the compiled Rust validator (jsonschema-rs), built once per process.

    It decides, about 300 times faster than the Python one; its patterns are ECMA-262
    regular expressions as the schema means them. The Python validator explains.
    """
    return jsonschema_rs.validator_for(load_schema())


def is_valid(payload: object) -> bool:
    """Say whether a payload is valid, at the speed of the Rust validator."""
    try:
        return bool(fast_validator().is_valid(payload))
    except (ValueError, TypeError):  # not JSON data at all: a set, a tuple key, bytes...
        return False


def validate_payload(payload: object) -> list[Problem]:
    """Return every problem of a payload, sorted by path; an empty list means valid.

    The fast validator decides; only an invalid payload is explained, by the Python one.
    """
    if is_valid(payload):
        return []
    problems = explain_payload(payload)
    # The two are held to the same verdict (tests/test_properties.py); should they ever part,
    # the payload stays refused, with the fast validator's own words.
    return problems or [Problem("", "is invalid")]


def explain_payload(payload: object) -> list[Problem]:
    """Return every problem of a payload by the Python validator, sorted by path.

    Linear in the payload's size: an array too long is looked into up to one member past its
    maxItems only.
    """
    instance: Any = payload  # any value at all: refusing what is not JSON data is the point
    try:
        errors = list(payload_validator().iter_errors(instance))
    except RecursionError:
        return [Problem("", "payload is nested too deeply")]
    found = {problem for error in errors for problem in _problems_of(error)}
    # Problem's own order (path, then message) from two stable sorts on strings alone, which
    # Python compares fastest: 96,000 problems sort in half the time of the pairs themselves.
    ordered = sorted(found, key=_MESSAGE)
    ordered.sort(key=_PATH)
    return [Problem(path, message) for path, message in ordered]


@dataclass(frozen=True)
class FirstProblems:
    """The first problems of a payload in validate_payload's order, and how many more it has.

    What a client is shown: a payload with 80,000 unknown fields is told of 100 of them.
    """

    problems: tuple[Problem, ...]
    more: int  # problems not in `problems`

    @classmethod
    def of(cls, problems: Sequence[Problem], limit: int = MAX_PROBLEMS) -> FirstProblems:
        """Keep the first `limit` of some sorted problems and count the rest."""
        return cls(tuple(problems[:limit]), max(0, len(problems) - limit))

    @property
    def valid(self) -> bool:
        """Say whether the payload has no problem at all."""
        return not self.problems and not self.more

    @property
    def total(self) -> int:
        """Return how many problems the payload has, listed or not."""
        return len(self.problems) + self.more

    def as_dicts(self) -> list[dict[str, str]]:
        """Return the listed problems as the JSON objects clients receive."""
        return [problem.as_dict() for problem in self.problems]


def first_problems(payload: object, limit: int = MAX_PROBLEMS) -> FirstProblems:
    """Return the first `limit` problems of a payload (sorted as validate_payload sorts them)
    and how many more there are."""
    return FirstProblems.of(validate_payload(payload), limit)


class PayloadNotJSON(ValueError):
    """A payload body is not a JSON text in UTF-8, or not I-JSON (RFC 7493)."""


def check_body_size(body: bytes, limit: int) -> None:
    """Raise PayloadTooLarge for a body over the byte limit, before anyone parses it."""
    if len(body) > limit:
        raise PayloadTooLarge(len(body), limit)


def _refuse_constant(name: str) -> Any:
    """Refuse NaN and Infinity, which Python accepts but JSON does not have."""
    raise ValueError(f"{name} is not valid JSON")


NOT_I_JSON = "not I-JSON (RFC 7493)"
# Strict UTF-8 decoding refuses surrogates written out, so only a \u escape can make one.
_ESCAPED_BACKSLASH = "\\\\"
_ESCAPE_PAIR = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _lone_surrogate_escape(text: str) -> str | None:
    """Return the first escape of a lone surrogate in a text that parsed as JSON, or None.

    Read left to right, two backslashes in a row are one escaped backslash: with each put
    aside (as a character that cannot join two escapes into a pair), every backslash left
    starts an escape. A high surrogate's escape right before a low one's (\\ud83d\\ude00) is
    a pair, one character; any surrogate escape left is a lone one.
    Three passes of C code over the text, whatever its shape; none at all for nearly every
    body, which holds no surrogate escape.
    """
    if not _SURROGATE_ESCAPE.search(text):
        return None
    escapes = _ESCAPE_PAIR.sub("", text.replace(_ESCAPED_BACKSLASH, "_"))
    found = _LONE_SURROGATE_ESCAPE.search(escapes)
    return found.group() if found else None


def _object_without_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Build one parsed object; refuse it when a key appears twice (RFC 7493, 2.3)."""
    built = dict(pairs)
    if len(built) < len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                shown = _shown(name)
                raise PayloadNotJSON(f"{NOT_I_JSON}: the key {shown} appears twice in an object")
            seen.add(name)
    return built


def _shown(text: str, limit: int = 80) -> str:
    """Quote a name from a body for a message: short, ASCII, surrogates as \\u escapes."""
    quoted = json.dumps(text)  # ensure_ascii: a lone surrogate comes out as \\udXXX
    return quoted if len(quoted) <= limit else quoted[: limit - 2] + "\u2026\""


def parse_payload(body: bytes, limit: int) -> Any:
    """Check a body's size, then parse it as strict JSON, or raise PayloadTooLarge/NotJSON.

    Strict means I-JSON (RFC 7493) besides JSON: no NaN or Infinity, no key twice in an
    object, no lone surrogate (an escaped \\ud800 alone) in a string or a key.
    """
    check_body_size(body, limit)
    try:
        text = body.decode("utf-8")
        payload = json.loads(
            text, parse_constant=_refuse_constant, object_pairs_hook=_object_without_repeats
        )
    except UnicodeDecodeError as error:
        raise PayloadNotJSON(f"not UTF-8 text (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise PayloadNotJSON(
            f"not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})"
        ) from None
    except PayloadNotJSON:
        raise
    except ValueError as error:
        raise PayloadNotJSON(str(error)) from None
    except RecursionError:
        raise PayloadNotJSON("JSON is nested too deeply") from None
    lone = _lone_surrogate_escape(text)
    if lone is not None:
        raise PayloadNotJSON(f"{NOT_I_JSON}: a string holds {lone}, a lone surrogate")
    return payload
