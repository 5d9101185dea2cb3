"""Parsing and validation are bounded: no body under the size limit costs 2 s of CPU.

Each body below is the worst of its kind found (issue 12), built close to the default body
limit of 1 MiB. jsonschema alone took 20 s to refuse 4,000 distinct objects in
output.formats (its uniqueItems compares every pair), hours for a 1 MiB body of them, and
27 s for a million-member steps array (its items looks at every member).
"""

from __future__ import annotations

import json
import signal
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from preview_worker import schema
from preview_worker.schema import (
    MAX_PROBLEMS,
    FirstProblems,
    PayloadNotJSON,
    Problem,
    first_problems,
    load_schema,
    parse_payload,
    validate_payload,
)
from preview_worker.settings import Settings

from .conftest import PAYLOADS

LIMIT = Settings().max_body_bytes  # PREVIEW_MAX_BODY_BYTES's default: 1 MiB
CPU_SECONDS = 2.0
STEP = b'{"title":"s"}'
HEAD = b'{"tutorialId":"t","content":{"title":"T","steps":[' + STEP + b"]}"


def filled(
    before: bytes, member: Callable[[int], bytes], after: bytes, between: bytes = b","
) -> bytes:
    """Return before + member(0), member(1)... + after, as many members as fit in LIMIT."""
    parts, size, index = [], len(before) + len(after), 0
    while size + len(piece := member(index)) + len(between) <= LIMIT:
        parts.append(piece)
        size += len(piece) + len(between)
        index += 1
    return before + between.join(parts) + after


def long_strings() -> bytes:
    """Return a payload with a string of 200,000 characters in each member with a pattern."""
    text = "a" * 200_000
    step = {"title": "s", "code": {"source": "x", "language": text}}
    content = {"title": "T", "language": "a-" * 100_000, "steps": [step]}
    payload = {"tutorialId": text, "idempotencyKey": text, "requestId": text, "content": content}
    return json.dumps(payload).encode()


def unknown_keys_in_every_step() -> bytes:
    """Return a payload of 200 steps, each with as many unknown keys as fit."""
    keys = (LIMIT - 100) // 200 // 8  # '"u123":0,' is about 8 bytes
    step = b'{"title":"s",' + b",".join(b'"u%d":0' % index for index in range(keys)) + b"}"
    return steps(lambda index: step if index < 200 else b"x" * LIMIT)  # the 201st never fits


def formats(member: Callable[[int], bytes]) -> bytes:
    """Return a payload whose output.formats holds as many members as fit."""
    return filled(HEAD + b',"output":{"formats":[', member, b"]}}")


def steps(member: Callable[[int], bytes]) -> bytes:
    """Return a payload whose content.steps holds as many members as fit."""
    return filled(b'{"tutorialId":"t","content":{"title":"T","steps":[', member, b"]}}")


def nested(depth: int, inner: bytes = b"") -> bytes:
    """Return a JSON array nested depth deep around inner."""
    return b"[" * depth + inner + b"]" * depth


DEEP = 900  # the parser refuses about 1,000 levels (Python's recursion limit)

# name -> (body, the first problem expected); each refused by validation, none by parsing.
WORST_INVALID: dict[str, tuple[bytes, Problem]] = {
    # uniqueItems: objects cannot be sorted, so jsonschema compared every pair.
    "formats of distinct objects": (
        formats(lambda i: b'{"a":%d}' % i),
        Problem("/output/formats", "must have at most 2 items"),
    ),
    # Numbers mixed with strings cannot be sorted either.
    "formats of numbers and strings": (
        formats(lambda i: b"%d" % i if i % 2 else b'"%d"' % i),
        Problem("/output/formats", "must have at most 2 items"),
    ),
    "formats of distinct small arrays": (
        formats(lambda i: b"[%d]" % i),
        Problem("/output/formats", "must have at most 2 items"),
    ),
    # items: one problem per member, 262,000 of them, each a descent and a message.
    "formats of one bad string repeated": (
        formats(lambda i: b'"x"'),
        Problem("/output/formats", "must have at most 2 items"),
    ),
    # items through a $ref: each member a subschema resolved and a required problem.
    "steps of empty objects": (
        steps(lambda i: b"{}"),
        Problem("/content/steps", "must have at most 200 items"),
    ),
    "steps of members breaking every rule": (
        steps(lambda i: b'{"title":1,"body":[],"code":{"x":1},"y":1}'),
        Problem("/content/steps", "must have at most 200 items"),
    ),
    # additionalProperties: 90,000 problems, which must still all be listed and sorted.
    "unknown keys at the top": (
        filled(HEAD + b",", lambda i: b'"k%d":0' % i, b"}"),
        Problem("/k0", "is not an allowed field"),
    ),
    "unknown keys to escape in a step": (
        filled(HEAD[:-3] + b",", lambda i: b'"~/%d":0' % i, b"}]}}"),
        Problem("/content/steps/0/~0~10", "is not an allowed field"),
    ),
    "unknown keys in 200 steps": (
        unknown_keys_in_every_step(),
        Problem("/content/steps/0/u0", "is not an allowed field"),
    ),
    # pattern and maxLength on strings of 200,000 characters, for each pattern of the schema.
    "long strings against every pattern": (
        long_strings(),
        Problem("/content/language", "must be at most 35 characters long"),
    ),
    # Nested as deep as the parser allows, everywhere the schema looks.
    "deep nesting in every step": (
        steps(lambda i: b'{"title":' + nested(DEEP) + b',"code":' + nested(DEEP) + b"}"),
        Problem("/content/steps", "must have at most 200 items"),
    ),
    "deep nesting in formats": (
        formats(lambda i: nested(DEEP, b"%d" % i)),
        Problem("/output/formats", "must have at most 2 items"),
    ),
    # Numbers as long as Python converts (4,300 digits), where the schema compares them.
    "long integers": (
        filled(HEAD + b',"revision":' + b"9" * 4300 + b',"x":[', lambda i: b"9" * 4300, b"]}"),
        Problem("/revision", "must be at most 9007199254740991"),
    ),
}

# name -> (body, what the refusal says): each refused by parsing.
WORST_REFUSED: dict[str, tuple[bytes, str]] = {
    # A lone surrogate behind 260,000 containers: found in the text, nothing is walked.
    "lone surrogate behind 260,000 arrays": (
        filled(b'[["\\ud800"],', lambda i: b"[0]", b"]"),
        "a string holds \\ud800, a lone surrogate",
    ),
    "duplicated key at the end of 90,000": (
        filled(b"{", lambda i: b'"k%d":0' % i, b',"k0":1}'),
        'the key "k0" appears twice in an object',
    ),
}

# name -> body: accepted by parsing, however much it looks like a lone surrogate.
WORST_PARSED: dict[str, bytes] = {
    "escaped backslashes before surrogate-like text": filled(
        b'["', lambda i: b"\\\\ud800", b'"]', between=b""
    ),
    "surrogate pairs": filled(b'["', lambda i: b"\\ud83d\\ude00", b'"]', between=b""),
    "empty arrays after surrogate-like text": filled(b'["\\\\ud800",', lambda i: b"[]", b"]"),
}


class TooSlow(Exception):
    """Raised from the CPU-time alarm."""


@contextmanager
def cpu_budget(seconds: float) -> Iterator[list[float]]:
    """Give the CPU seconds the block used; stop it with TooSlow once it uses `seconds`.

    The alarm turns a body that takes hours (as the uniqueItems one did) into a failure after
    the budget, instead of a hung test run.
    """

    def alarm(signum: int, frame: Any) -> None:
        """Stop the block that ran out of CPU time."""
        raise TooSlow(f"over {seconds} s of CPU time")

    used: list[float] = []
    previous = signal.signal(signal.SIGPROF, alarm)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    start = time.process_time()
    try:
        yield used
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)
        used.append(time.process_time() - start)


def test_the_worst_bodies_are_close_to_the_limit() -> None:
    """Every body is within the byte limit, and within 10% of it."""
    bodies = [body for body, _ in (*WORST_INVALID.values(), *WORST_REFUSED.values())]
    bodies += list(WORST_PARSED.values())
    assert all(len(body) <= LIMIT for body in bodies)
    assert all(len(body) > 0.9 * LIMIT for body in bodies)


@pytest.mark.parametrize("name", sorted(WORST_INVALID))
def test_worst_bodies_parse_and_validate_within_the_cpu_budget(name: str) -> None:
    """Given a worst body of ~1 MiB, parsing takes < 2 s of CPU and so does validation."""
    body, first = WORST_INVALID[name]
    with cpu_budget(CPU_SECONDS) as parsing:
        payload = parse_payload(body, LIMIT)
    validate_payload({})  # the validator is compiled once per process: not part of the cost
    with cpu_budget(CPU_SECONDS) as validating:
        problems = validate_payload(payload)
    assert parsing[0] < CPU_SECONDS and validating[0] < CPU_SECONDS
    assert problems[0] == first
    assert problems == sorted(problems)


@pytest.mark.parametrize(
    "name",
    ["formats of distinct objects", "steps of empty objects", "unknown keys in 200 steps"],
)
def test_worst_bodies_validate_in_bounded_memory(name: str) -> None:
    """Given the bodies with the most members or problems, validating one never holds more
    than 48 MiB at once (32 at most were seen: 96,000 problems). Traced memory only: tracing
    every body would take long."""
    payload = parse_payload(WORST_INVALID[name][0], LIMIT)
    validate_payload({})
    tracemalloc.start()
    try:
        validate_payload(payload)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 48 * 2**20


@pytest.mark.parametrize("name", sorted(WORST_REFUSED))
def test_worst_refused_bodies_are_refused_within_the_cpu_budget(name: str) -> None:
    """Given a ~1 MiB body that is not I-JSON, its refusal takes < 2 s of CPU and says where."""
    body, reason = WORST_REFUSED[name]
    with cpu_budget(CPU_SECONDS) as parsing, pytest.raises(PayloadNotJSON) as refused:
        parse_payload(body, LIMIT)
    assert parsing[0] < CPU_SECONDS
    assert str(refused.value) == f"not I-JSON (RFC 7493): {reason}"


@pytest.mark.parametrize("name", sorted(WORST_PARSED))
def test_worst_look_alike_bodies_parse_within_the_cpu_budget(name: str) -> None:
    """Given a ~1 MiB body full of backslashes or surrogate pairs, it parses in < 2 s of CPU."""
    with cpu_budget(CPU_SECONDS) as parsing:
        parse_payload(WORST_PARSED[name], LIMIT)
    assert parsing[0] < CPU_SECONDS


def test_the_schema_uses_only_keywords_known_to_be_bounded() -> None:
    """Every keyword of the schema is one whose cost was looked at here; a new one must be too.

    Linear on their own: type, enum, required, properties, additionalProperties, $ref,
    min/maxLength, min/maxItems, minimum, maximum; replaced by bounded ones in schema.py:
    items, uniqueItems, pattern. Every pattern starts with ^, so a search tries one place.
    """
    bounded = {
        "type", "enum", "required", "properties", "additionalProperties", "$ref", "minLength",
        "maxLength", "minItems", "maxItems", "minimum", "maximum", "items", "uniqueItems",
        "pattern",
    }
    # format annotates in draft 2020-12: neither validator asserts it, so it costs nothing.
    annotations = {"$schema", "$id", "$defs", "title", "description", "default", "format"}
    used: set[str] = set()
    patterns: list[str] = []

    def walk(node: Any, names_only: bool = False) -> None:
        """Collect the keywords of every subschema at or under node."""
        if not isinstance(node, dict):
            return
        for key, child in node.items():
            if names_only:  # a map of names to subschemas: properties, $defs
                walk(child)
                continue
            used.add(key)
            if key == "pattern":
                patterns.append(child)
            walk(child, names_only=key in ("properties", "$defs"))

    walk(load_schema())
    assert used - annotations <= bounded
    assert patterns and all(pattern.startswith("^") for pattern in patterns)


def plain_problems(payload: Any) -> list[Problem]:
    """Return the problems jsonschema's own draft 2020-12 validator gives, as before issue 12."""
    validator = Draft202012Validator(load_schema())
    found = {
        problem
        for error in validator.iter_errors(payload)
        for problem in schema._problems_of(error)
    }
    return [Problem(path, message) for path, message in sorted(found)]


def full() -> dict[str, Any]:
    """Return the full example payload, every member present."""
    loaded: dict[str, Any] = json.loads(
        (PAYLOADS / "preview_payload_full.json").read_text("utf-8")
    )
    return loaded


def edited(**output: Any) -> dict[str, Any]:
    """Return the full example with some members of its output changed."""
    payload = full()
    payload["output"] = {**payload["output"], **output}
    return payload


@pytest.mark.parametrize(
    "payload",
    [
        full(),
        edited(formats=["html", "html"]),
        edited(formats=["png", "html", "png"]),  # one past maxItems: still exact
        edited(formats=["png", "html", "x"]),
        edited(formats=[{"a": 1}, {"a": 1.0}, "x"]),
        edited(formats=[1, True, "html"]),
        edited(formats=[[1, {"b": 2, "a": [True]}], [1, {"a": [True], "b": 2.0}]]),
        edited(formats=[{}, []]),
        edited(formats=[0, -0.0]),
        {"tutorialId": 5, "content": {"steps": [{}, {"title": ""}] * 100}, "x": {"y": [1]}},
        {"content": {"title": "x" * 300, "steps": [{"title": "t", "code": {"language": "~"}}]}},
    ],
)
def test_payloads_within_the_bounds_get_the_problems_they_got_before(payload: Any) -> None:
    """Given a payload whose arrays are at most one past maxItems, the problems are unchanged."""
    assert validate_payload(payload) == plain_problems(payload)


def test_past_max_items_members_are_checked_up_to_one_past_the_bound() -> None:
    """Given 205 bad steps, maxItems and the first 201 are reported; the 4 after them are not."""
    payload = full()
    payload["content"]["steps"] = [{"title": index} for index in range(205)]
    problems = validate_payload(payload)
    before = plain_problems(payload)
    beyond = {f"/content/steps/{index}/title" for index in range(201, 205)}
    assert problems == [problem for problem in before if problem.path not in beyond]
    assert problems[0] == Problem("/content/steps", "must have at most 200 items")
    assert len(problems) == 202


def test_a_repeat_past_max_items_plus_one_is_not_looked_for() -> None:
    """Given formats too long, a repeat among the first 3 is reported, one further on is not."""
    # (jsonschema reported both; the array is refused by maxItems either way)
    early = edited(formats=["html", "html", "png", "x"])
    late = edited(formats=["html", "png", {"a": 1}, {"a": 1}])
    assert Problem("/output/formats", "must not repeat an item") in validate_payload(early)
    assert Problem("/output/formats", "must not repeat an item") not in validate_payload(late)


def test_first_problems_lists_at_most_max_problems_and_counts_the_rest() -> None:
    """Given 80,000 unknown keys, 100 problems are listed, sorted, and 79,900 more counted."""
    payload = full() | {f"k{index:05}": 0 for index in range(80_000)}
    every = validate_payload(payload)
    first = first_problems(payload)
    assert MAX_PROBLEMS == 100 and len(every) == 80_000
    assert first == FirstProblems(tuple(every[:100]), 79_900)
    assert first.problems[0] == Problem("/k00000", "is not an allowed field")
    assert (first.total, first.valid) == (80_000, False)
    assert first.as_dicts()[99] == {"path": "/k00099", "message": "is not an allowed field"}


def test_first_problems_of_a_valid_or_slightly_invalid_payload_lists_them_all() -> None:
    """Given a valid payload, nothing and none more; given 3 problems, all 3 and none more."""
    assert first_problems(full()) == FirstProblems((), 0)
    assert first_problems(full()).valid
    problems = validate_payload({"extra": 1})
    assert first_problems({"extra": 1}) == FirstProblems(tuple(problems), 0)
    assert FirstProblems.of(problems, limit=1) == FirstProblems(tuple(problems[:1]), 2)
