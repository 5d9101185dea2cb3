"""Properties over generated payloads: validation never breaks, valid ones render, bad ones fail."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from preview_worker import Problem, schema, validate_payload
from preview_worker.render import ARTIFACTS, render_preview_files
from preview_worker.schema import load_schema

from .conftest import PAYLOADS as EXAMPLES
from .schema_strategies import RULES, SchemaStrategies, keywords_used, pointer

# Any JSON value: what a client could send once the body parses.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=5)
    ),
    max_leaves=30,
)


ATTACKS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "[x](javascript:alert(1))",
    "[x](JaVaScRiPt:alert(1))",
    "[x](data:text/html;base64,PHNjcmlwdD4=)",
    "<div onclick='x()'>raw block</div>",
    "![i](vbscript:msgbox)",
    "`</code></pre><script>x</script>`",
]
SCHEMA = load_schema()
# Every free-text member is made of these pieces, so every one of them is hostile at times.
TEXT_PIECES = st.text(min_size=1, max_size=30) | st.sampled_from(ATTACKS)
HINTS = {
    # Names Pygments knows, so that highlighting runs and not only the plain-text fallback.
    "/$defs/code/properties/language": st.sampled_from(
        ["python", "bash", "json", "go", "no-such-lexer"]
    ),
    # Tags that pick each of the thumbnail's CJK faces, beside random ones that pick none.
    "/$defs/content/properties/language": st.sampled_from(
        ["en", "ru", "ja", "ko", "el", "zh-Hans", "zh-Hant-TW", "zh-HK"]
    ),
}
STRATEGIES = SchemaStrategies(SCHEMA, text=TEXT_PIECES, any_json=JSON, hints=HINTS)
# Payloads the schema accepts, read off it: every optional member, enum value and boundary.
# Half have every member, so that the members seldom drawn, and their boundaries, come often.
PAYLOADS = STRATEGIES.valid() | STRATEGIES.valid(complete=True)
OUTPUT_DEFAULTS = {
    name: member["default"] for name, member in SCHEMA["$defs"]["output"]["properties"].items()
}
# The project's problem message for each rule (schema._message), to tell which rule was broken.
RULE_MESSAGES = {
    "required": r"is required",
    "additionalProperties": r"is not an allowed field",
    "type": r"must be of type .+",
    "enum": r"must be one of .+",
    "pattern": r"must match the pattern .+",
    "minLength": r"must be at least \d+ characters long|must not be empty",
    "maxLength": r"must be at most \d+ characters long",
    "minItems": r"must have at least \d+ items?",
    "maxItems": r"must have at most \d+ items?",
    "uniqueItems": r"must not repeat an item",
    "minimum": r"must be at least -?\d+",
    "maximum": r"must be at most -?\d+",
}


def rule_of(problem: Problem) -> str:
    """Return the one rule whose message a problem carries."""
    [rule] = [
        rule for rule, message in RULE_MESSAGES.items() if re.fullmatch(message, problem.message)
    ]
    return rule


class ScriptFinder(HTMLParser):
    """Collect script elements, event-handler attributes and javascript: URLs in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Note a script element or an attribute that could run code."""
        if tag == "script":
            self.found.append("script element")
        for name, value in attrs:
            if name.startswith("on"):
                self.found.append(f"{name} attribute")
            if (
                name in ("href", "src")
                and value
                and value.strip().lower().startswith(("javascript:", "vbscript:", "data:text"))
            ):
                self.found.append(f"{name}={value}")


@given(JSON)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_validation_never_raises_and_always_sorts(value: Any) -> None:
    """Given any JSON value, validate_payload answers a sorted list and never raises."""
    problems = validate_payload(value)
    assert problems == sorted(problems)
    assert all(problem.path == "" or problem.path.startswith("/") for problem in problems)


@given(PAYLOADS)
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_generated_payloads_are_valid_render_and_carry_no_script(payload: dict[str, Any]) -> None:
    """Given a generated, hostile but valid payload, it renders, and no script survives."""
    assert validate_payload(payload) == []
    files = render_preview_files(payload)
    if "index.html" in files:
        finder = ScriptFinder()
        finder.feed(files["index.html"].decode("utf-8"))
        assert finder.found == []
    if "thumbnail.png" in files:
        assert files["thumbnail.png"].startswith(b"\x89PNG")


@given(PAYLOADS)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_payloads_generated_from_the_schema_are_accepted_and_render(
    payload: dict[str, Any],
) -> None:
    """Given a payload generated from the schema, it has no problems and renders as it asks."""
    assert validate_payload(payload) == []
    output = OUTPUT_DEFAULTS | payload.get("output", {})
    files = render_preview_files(payload)
    assert list(files) == [ARTIFACTS[name][0] for name in ARTIFACTS if name in output["formats"]]
    if "index.html" in files:
        assert files["index.html"].decode("utf-8").startswith("<!DOCTYPE html>")
    if "thumbnail.png" in files:
        # The PNG header's IHDR chunk holds the image's width and height.
        png = files["thumbnail.png"]
        size = (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big"))
        assert png.startswith(b"\x89PNG") and size == (output["width"], output["height"])


def same_verdict(payload: Any) -> None:
    """Assert the fast validator and the explaining one agree on a payload."""
    assert schema.is_valid(payload) == (schema.explain_payload(payload) == []), payload


def test_both_validators_agree_on_every_example_payload() -> None:
    """Every payload in payloads/, valid and invalid, gets one verdict from both validators."""
    files = sorted(EXAMPLES.glob("*.json")) + sorted((EXAMPLES / "invalid").glob("*.json"))
    verdicts = {}
    for path in files:
        if path.name == "invalid-expected.json":
            continue
        payload = json.loads(path.read_text("utf-8"))
        same_verdict(payload)
        verdicts[path.name] = schema.is_valid(payload)
    assert sum(verdicts.values()) == 3 and len(verdicts) > 20, verdicts


@given(data=st.data())
@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_both_validators_agree_on_generated_and_mutated_payloads(data: st.DataObject) -> None:
    """A generated payload, and the same with one rule broken, get one verdict from both."""
    payload = data.draw(PAYLOADS, label="payload")
    same_verdict(payload)
    mutations = STRATEGIES.mutations(payload)
    if mutations:
        mutation = data.draw(st.sampled_from(mutations), label="place")
        same_verdict(data.draw(mutation.edits(), label="edit").apply(payload))


@given(JSON)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_both_validators_agree_on_any_json_value(value: Any) -> None:
    """Any JSON value at all gets one verdict from both validators."""
    same_verdict(value)


def test_mutations_cover_every_rule_the_schema_uses() -> None:
    """The full example payload offers a mutation for every assertion keyword of the schema."""
    full = json.loads((EXAMPLES / "preview_payload_full.json").read_text("utf-8"))
    offered = {mutation.rule for mutation in STRATEGIES.mutations(full)}
    assert offered == keywords_used(SCHEMA) & RULES


@pytest.mark.parametrize("rule", sorted(keywords_used(SCHEMA) & RULES))
@given(data=st.data())
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_each_single_rule_mutation_is_reported_at_its_path(rule: str, data: st.DataObject) -> None:
    """Given a valid payload with one rule broken, validation reports that rule at its place."""
    payload = data.draw(PAYLOADS, label="payload")
    places = [mutation for mutation in STRATEGIES.mutations(payload) if mutation.rule == rule]
    assume(places)  # a payload without output.formats, say, has no format to repeat
    mutation = data.draw(st.sampled_from(places), label="place")
    edit = data.draw(mutation.edits(), label="edit")
    event(f"mutated at {pointer(mutation.path)}")
    problems = validate_payload(edit.apply(payload))
    # Besides the rule broken, a value may break others of the same place (too long for its
    # pattern, say): edit.expected lists them, all at that place, and nothing anywhere else.
    assert {(problem.path, rule_of(problem)) for problem in problems} == edit.expected
    assert len(problems) == len(edit.expected)
