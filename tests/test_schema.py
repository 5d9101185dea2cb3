"""The payload schema and validate_payload: recorded examples, all problems at once, no crash."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from preview_worker import validate_payload
from preview_worker.schema import (
    PayloadNotJSON,
    PayloadTooLarge,
    PayloadValidator,
    Problem,
    ecma_regex,
    load_schema,
    parse_payload,
    payload_validator,
)

from .conftest import PAYLOADS, ROOT

EXPECTED = json.loads((PAYLOADS / "invalid-expected.json").read_text("utf-8"))


def load(path: Path) -> Any:
    """Read a JSON payload file."""
    return json.loads(path.read_text("utf-8"))


@pytest.mark.parametrize(
    "name",
    ["preview_payload_minimal.json", "preview_payload_full.json", "preview_payload_notify.json"],
)
def test_valid_examples_are_accepted(name: str) -> None:
    """The minimal, full and webhook example payloads have no problems."""
    assert validate_payload(load(PAYLOADS / name)) == []


def test_every_invalid_example_is_recorded() -> None:
    """Every invalid example file has an entry in invalid-expected.json, at least 12 of them."""
    on_disk = {path.name for path in (PAYLOADS / "invalid").glob("*.json")}
    assert on_disk == set(EXPECTED)
    assert len(on_disk) >= 12


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_invalid_example_gives_its_recorded_path(name: str) -> None:
    """Each invalid example gives exactly one problem, at its recorded path."""
    problems = validate_payload(load(PAYLOADS / "invalid" / name))
    assert [problem.path for problem in problems] == [EXPECTED[name]["path"]]


def test_all_problems_are_reported_at_once_and_sorted() -> None:
    """Given a payload with eight faults, all eight paths are reported, in sorted order."""
    payload = {
        "tutorialId": "Not A Slug",
        "priority": "urgent",
        "extra": True,
        "content": {"title": "", "steps": [{"body": 5}]},
        "output": {"theme": "sepia", "width": 99999},
    }
    problems = validate_payload(payload)
    assert [problem.path for problem in problems] == [
        "/content/steps/0/body",
        "/content/steps/0/title",
        "/content/title",
        "/extra",
        "/output/theme",
        "/output/width",
        "/priority",
        "/tutorialId",
    ]
    assert problems == sorted(problems)


def test_messages_do_not_echo_huge_values() -> None:
    """Given a 100,000-character title, the one problem states the limit, not the value."""
    payload = load(PAYLOADS / "preview_payload_minimal.json")
    payload["content"]["title"] = "x" * 100_000
    [problem] = validate_payload(payload)
    assert problem == Problem("/content/title", "must be at most 200 characters long")


def test_pointer_escapes_slash_and_tilde_in_names() -> None:
    """Given an extra property named a/b~c, its problem path escapes it as a JSON pointer."""
    payload = load(PAYLOADS / "preview_payload_minimal.json")
    payload["a/b~c"] = 1
    assert [problem.path for problem in validate_payload(payload)] == ["/a~1b~0c"]


def nested(depth: int) -> Any:
    """Build a list nested depth times."""
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -1.5, "", "text", [], {}, nested(5000), {"content": nested(5000)},
     {"tutorialId": None, "content": {"steps": [None, 1, "x", [], {}]}}],
)
def test_any_json_value_gives_problems_not_an_exception(value: Any) -> None:
    """Given any JSON value, even one nested 5000 deep, validation returns problems, not raises."""
    problems = validate_payload(value)
    assert problems and all(isinstance(problem, Problem) for problem in problems)


def test_validator_is_compiled_once() -> None:
    """The validator is cached: two calls return the same object."""
    assert payload_validator() is payload_validator()


def test_schema_bounds_every_string_and_array() -> None:
    """Every string in the schema has a maxLength or enum, and every array a maxItems."""
    unbounded = []

    def walk(node: Any, where: str) -> None:
        """Record the path of each unbounded string or array at or under node."""
        if isinstance(node, dict):
            if node.get("type") == "string" and "maxLength" not in node and "enum" not in node:
                unbounded.append(where)
            if node.get("type") == "array" and "maxItems" not in node:
                unbounded.append(where)
            for key, child in node.items():
                walk(child, f"{where}/{key}")
        elif isinstance(node, list):
            for index, child in enumerate(node):
                walk(child, f"{where}/{index}")

    walk(load_schema(), "")
    assert unbounded == []


def test_body_over_the_limit_is_refused_before_parsing() -> None:
    """Given a body over the byte limit, parse_payload refuses it as too large, before parsing."""
    with pytest.raises(PayloadTooLarge, match="over the limit of 1024 bytes"):
        parse_payload(b"{" * 1025, 1024)  # not JSON: parsing would fail differently


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{", "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"a": NaN}', "NaN is not valid JSON"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_bad_bodies_are_refused_with_a_reason(body: bytes, reason: str) -> None:
    """Given a body that is not valid JSON, parse_payload refuses it and says why."""
    with pytest.raises(PayloadNotJSON, match=reason):
        parse_payload(body, 1_000_000)


def test_schema_ships_inside_the_wheel(tmp_path: Path) -> None:
    """Given a wheel built from the checkout, When imported outside it, Then it validates."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("preview_worker-*.whl")
    assert "preview_worker/schemas/preview-job.schema.json" in zipfile.ZipFile(wheel).namelist()
    check = (
        "import json, sys, preview_worker;"
        "assert preview_worker.__file__.startswith(sys.argv[1]), preview_worker.__file__;"
        "print(json.dumps([p.as_dict() for p in preview_worker.validate_payload({})]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", check, str(wheel)],
        cwd=tmp_path,
        env={"PYTHONPATH": str(wheel), "PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
        text=True,
    )
    assert json.loads(done.stdout) == [
        {"path": "/content", "message": "is required"},
        {"path": "/tutorialId", "message": "is required"},
    ]


def twice(key: str) -> str:
    """Say why a body with a key twice is refused."""
    return f"the key {key} appears twice in an object"


def lone(escape: str) -> str:
    """Say why a body with a lone surrogate is refused."""
    return f"a string holds {escape}, a lone surrogate"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"tutorialId": "a", "tutorialId": "b"}', twice('"tutorialId"')),
        (b'{"content": {"steps": [{"title": "a", "body": "x", "title": "a"}]}}', twice('"title"')),
        (b'{"a\\u00e9": 1, "a\xc3\xa9": 2}', twice('"a\\u00e9"')),  # one key, two spellings
        (b'{"title": "\\ud800"}', lone("\\ud800")),
        (b'{"a\\uDC00b": 1}', lone("\\uDC00")),  # in a key
        (b'[1, ["x\\udbff"]]', lone("\\udbff")),  # a high surrogate at the end of a string
        (b'["\\ud83d\\ud83d\\ude00"]', lone("\\ud83d")),  # two highs, a low: the first alone
        (b'["\\ude00\\ud83d"]', lone("\\ude00")),  # low before high is no pair
        (b'["\\\\\\ud800"]', lone("\\ud800")),  # an escaped backslash, then a real escape
        (b'["\\\\ud83d\\ude00"]', lone("\\ude00")),  # the high is text, not a pair
    ],
)
def test_a_body_that_is_not_i_json_is_refused(body: bytes, reason: str) -> None:
    """Given a key twice (even with equal values) or a lone surrogate escaped in a value or a
    key, parse_payload refuses the body as not I-JSON (a 400, not a 500), saying why."""
    with pytest.raises(PayloadNotJSON) as refused:
        parse_payload(body, 1_000_000)
    assert str(refused.value) == f"not I-JSON (RFC 7493): {reason}"


@pytest.mark.parametrize(
    ("body", "value"),
    [
        (b'["\\ud83d\\ude00"]', ["\U0001f600"]),  # a pair is one character
        (b'["\\uDBFF\\uDFFF"]', ["\U0010ffff"]),
        (b'["\\\\ud800"]', ["\\ud800"]),  # an escaped backslash, then text
        (b'["\\\\\\\\ud800"]', ["\\\\ud800"]),
    ],
)
def test_surrogate_pairs_and_look_alikes_are_accepted(body: bytes, value: Any) -> None:
    """Given a surrogate pair, or text that only looks like an escape, the body parses."""
    assert parse_payload(body, 1_000_000) == value


PIECES = ["\\\\", "\\ud83d", "\\ude00", "\\uD800", "\\uDFFF", "\\u0041", "\\n", "u", "d8", "é"]


@given(st.lists(st.lists(st.sampled_from(PIECES), max_size=8), min_size=1, max_size=4))
@settings(max_examples=300, deadline=None)
def test_parse_refuses_exactly_the_bodies_with_a_lone_surrogate(strings: list[list[str]]) -> None:
    """Given strings of escapes and text, as values and keys, parse_payload refuses a body
    exactly when the parsed strings hold a surrogate (which only a lone escape leaves)."""
    texts = ['"' + "".join(pieces) + '"' for pieces in strings]
    body = ("[" + ",".join(texts) + ",{" + ",".join(f"{t}:0" for t in set(texts)) + "}]").encode()
    parsed = json.loads(body)
    lone = any(0xD800 <= ord(char) <= 0xDFFF for text in parsed[:-1] for char in text)
    try:
        assert parse_payload(body, 1_000_000) == parsed and not lone
    except PayloadNotJSON:
        assert lone


@pytest.mark.parametrize(
    ("member", "value"),
    [
        ("tutorialId", "intro\n"),
        ("idempotencyKey", "key-1\n"),
        ("requestId", "req-1\n"),
    ],
)
def test_patterns_end_where_the_string_ends(member: str, value: str) -> None:
    """Given a value that matches but for a final newline, its pattern refuses it (ECMA-262 $)."""
    payload = load(PAYLOADS / "preview_payload_minimal.json") | {member: value}
    [problem] = validate_payload(payload)
    assert problem.path == f"/{member}"
    assert problem.message.startswith("must match the pattern ^")


@pytest.mark.parametrize(
    ("pattern", "python"),
    [
        ("^[a-z]+$", "^[a-z]+\\Z"),
        ("^[$]$", "^[$]\\Z"),  # in a class, $ is a character
        ("^a\\$$", "^a\\$\\Z"),  # escaped, too
        ("^[\\]$]x$", "^[\\]$]x\\Z"),  # an escaped ] does not end the class
        ("^(a|b$)", "^(a|b\\Z)"),
    ],
)
def test_ecma_dollar_becomes_the_end_of_the_string(pattern: str, python: str) -> None:
    """Given a schema pattern, only its $ anchors outside classes become \\Z."""
    assert ecma_regex(pattern).pattern == python


def patterns_of(node: Any) -> set[str]:
    """Return every pattern a schema holds, however deep."""
    if isinstance(node, dict):
        found = {node["pattern"]} if isinstance(node.get("pattern"), str) else set()
        return found.union(*(patterns_of(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(patterns_of(value) for value in node))
    return set()


SCHEMA_PATTERNS = sorted(patterns_of(load_schema()))


def test_the_schema_has_patterns_to_check() -> None:
    """The pattern walk finds the schema's patterns (so the test below cannot pass empty)."""
    assert len(SCHEMA_PATTERNS) >= 3


@pytest.mark.parametrize("pattern", SCHEMA_PATTERNS)
@given(data=st.data())
@settings(max_examples=25, deadline=None)
def test_every_pattern_refuses_a_final_newline_in_both_validators(
    pattern: str, data: st.DataObject
) -> None:
    """Whatever matches a pattern of the schema, the same with a final newline does not."""
    node = {"type": "string", "pattern": pattern}
    python, rust = PayloadValidator(node), jsonschema_rs.validator_for(node)
    value = data.draw(st.from_regex(ecma_regex(pattern), fullmatch=True).filter(
        lambda text: not text.endswith("\n")
    ))
    assert python.is_valid(value) and rust.is_valid(value)
    assert not python.is_valid(value + "\n") and not rust.is_valid(value + "\n")
