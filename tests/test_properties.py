"""Properties over generated input: validation never breaks, and valid payloads always render."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from preview_worker import validate_payload
from preview_worker.render import render_preview_files

# Any JSON value: what a client could send once the body parses.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=20), children, max_size=5),
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
TEXT = st.text(max_size=60)
MARKDOWN = st.lists(st.sampled_from(ATTACKS) | TEXT, max_size=4).map("\n\n".join)
CODE = st.fixed_dictionaries(
    {"source": st.text(min_size=1, max_size=80) | st.sampled_from(ATTACKS)},
    optional={"language": st.sampled_from(["python", "bash", "json", "go", "no-such-lexer"])},
)
STEP = st.fixed_dictionaries(
    {"title": st.text(min_size=1, max_size=40) | st.sampled_from(ATTACKS)},
    optional={"body": MARKDOWN, "code": CODE},
)
OUTPUT = st.fixed_dictionaries({}, optional={
    "formats": st.sampled_from([["html"], ["png"], ["html", "png"]]),
    "theme": st.sampled_from(["light", "dark"]),
    "width": st.integers(160, 640),
    "height": st.integers(90, 480),
})
# Payloads the schema accepts, small enough to render quickly, hostile where they may be.
PAYLOADS = st.fixed_dictionaries(
    {
        "tutorialId": st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True),
        "content": st.fixed_dictionaries(
            {"title": st.text(min_size=1, max_size=80), "steps": st.lists(STEP, min_size=1,
                                                                          max_size=4)},
            optional={"summary": TEXT | st.sampled_from(ATTACKS),
                      "language": st.sampled_from(["en", "ru", "ja", "el", "zh-Hans"])},
        ),
    },
    optional={"output": OUTPUT, "revision": st.integers(0, 10**6)},
)


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
            if name in ("href", "src") and value and value.strip().lower().startswith(
                ("javascript:", "vbscript:", "data:text")
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
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
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
