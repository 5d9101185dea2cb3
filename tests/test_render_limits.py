"""Bounds of one render: allowed lexers, time per block and per render, the page cap, stops."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from pygments.lexers import get_lexer_by_name
from rq.timeouts import JobTimeoutException

from preview_worker.errors import PreviewRefused, PreviewStopped, is_permanent
from preview_worker.previews import build_preview
from preview_worker.render import highlight, limits, markdown, render_files, render_input
from preview_worker.render.limits import Budget, Limits
from preview_worker.store import FileStore

from .conftest import payload

# Inputs that made lexers slow or hang in a hostile round: a run of one character or line.
HOSTILE = {
    "newlines": "\n" * 20_000,
    "blank lines": " \n" * 10_000,
    "backticks": "`" * 20_000,
    "colons": ":" * 20_000,
    "comment openers": "<!--" * 5_000,
    "dollars": "$" * 20_000,
}
# One alias per lexer class on the allowlist.
LEXERS = sorted({type(get_lexer_by_name(name)).__name__: name
                 for name in highlight.ALLOWED_LANGUAGES}.values())


def steps_payload(*steps: dict[str, Any]) -> dict[str, Any]:
    """Return the minimal payload with these steps."""
    return payload(content={"title": "Bounds", "steps": list(steps)})


def test_a_language_off_the_allowlist_renders_as_plain_text() -> None:
    """Given the lexer that loops for ever on '<!--', the code shows as escaped text at once."""
    assert highlight.lexer_for("mcschema") is None and highlight.lexer_for("python") is not None
    code = highlight.highlight_code("<!--", "mcschema")
    assert "&lt;!--" in code and "<span" not in code
    fenced = markdown.render_markdown("```mcschema\n<!--\n```\n")
    assert "&lt;!--" in fenced and "<span" not in fenced


@pytest.mark.parametrize("language", LEXERS)
def test_no_allowed_lexer_outlasts_its_block_budget(language: str) -> None:
    """Given hostile code, every allowed lexer gives up at its budget and shows plain text."""
    budget = Budget(Limits(highlight_seconds=0.05))
    with limits.budgeted(budget):
        for name, source in HOSTILE.items():
            started = time.monotonic()
            code = highlight.highlight_code(source, language)
            took = time.monotonic() - started
            # No lexer holds one token long: past its budget the block stops at the next token.
            assert took < 0.05 + 0.5, f"{language} on {name}: {took:.2f} s"
            assert code.startswith('<pre class="code"')


def test_a_block_over_its_budget_is_shown_plain_and_the_rest_still_highlighted() -> None:
    """Given a block that lexes slowly, it becomes escaped text; a quick one keeps its colours."""
    with limits.budgeted(Budget(Limits(highlight_seconds=0.1))):
        slow = highlight.highlight_code("x = '<b>'\n" + " \n" * 10_000, "python")
        quick = highlight.highlight_code("x = '<b>'\n", "python")
    assert "<span" not in slow and "x = '&lt;b&gt;'" in slow
    assert "<span" in quick


def test_a_reused_reference_cannot_balloon_the_page(tmp_path: Path) -> None:
    """Given 20 KB steps that expand a long reference thousands of times, the render stops early.

    Without the cap these eight steps made a 954 MB page with 1.9 GB of memory.
    """
    body = "[x]: https://example.org/" + "&" * 1_900 + "\n\n" + "[x] " * 2_500
    poison = steps_payload(*[{"title": f"Step {n}", "body": body} for n in range(8)])
    tracemalloc.start()
    try:
        with pytest.raises(PreviewRefused, match="larger than 1048576 bytes"):
            build_preview(FileStore(tmp_path), poison, budget=Budget(Limits(page_bytes=1 << 20)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"the render held {peak >> 20} MiB"
    assert list(tmp_path.rglob("*")) == []  # nothing stored


def test_the_page_cap_is_the_bytes_of_the_page(tmp_path: Path) -> None:
    """Given a page just under the cap it renders; a cap one byte smaller refuses it."""
    page = render_files(render_input(payload()))["index.html"]
    with limits.budgeted(Budget(Limits(page_bytes=len(page)))):
        assert render_files(render_input(payload()))["index.html"] == page
    with pytest.raises(PreviewRefused, match="larger than"):
        build_preview(
            FileStore(tmp_path), payload(), budget=Budget(Limits(page_bytes=len(page) - 1))
        )


def test_a_link_target_longer_than_the_limit_is_not_a_link() -> None:
    """A reference to a URL over MAX_LINK_LENGTH stays text; data: images keep their length."""
    long_url = "https://example.org/" + "a" * markdown.MAX_LINK_LENGTH
    assert "<a " not in markdown.render_markdown(f"[x]: {long_url}\n\n[x]")
    assert "<a " in markdown.render_markdown("[x]: https://example.org/\n\n[x]")
    image = "data:image/png;base64," + "A" * (markdown.MAX_LINK_LENGTH * 2)
    assert "<img " in markdown.render_markdown(f"![pixel]({image})")


def test_a_render_past_its_time_budget_fails_for_good_with_the_reason(tmp_path: Path) -> None:
    """Given 200 slow code blocks and a 1 s render budget, it stops soon after, as refused."""
    code = {"language": "c", "source": "\n" * 19_999}
    slow = steps_payload(*[{"title": f"Step {n}", "code": code} for n in range(200)])
    started = time.monotonic()
    with pytest.raises(PreviewRefused, match="longer than 1 s") as refused:
        build_preview(FileStore(tmp_path), slow, budget=Budget(Limits(seconds=1.0)))
    assert time.monotonic() - started < 1.0 + 2.0
    assert is_permanent(type(refused.value))


def test_a_stop_is_heard_inside_a_block(tmp_path: Path) -> None:
    """Given a stop asked while one long block lexes, the render ends within the block."""
    code = {"language": "python", "source": " \n" * 10_000}  # about 3 s to lex in full
    started = time.monotonic()

    def stop_after_half_a_second() -> None:
        if time.monotonic() - started > 0.5:
            raise PreviewStopped("stopped on request")

    budget = Budget(Limits(highlight_seconds=30), interrupt=stop_after_half_a_second)
    with pytest.raises(PreviewStopped):
        build_preview(FileStore(tmp_path), steps_payload({"title": "One", "code": code}),
                      budget=budget)
    assert time.monotonic() - started < 0.5 + 0.5


def test_the_job_timeout_is_a_permanent_failure() -> None:
    """A render killed by the job's hard timeout would be again: no retries."""
    assert is_permanent(JobTimeoutException) and is_permanent(PreviewRefused)
    assert not is_permanent(OSError)


def test_the_readme_lists_exactly_the_allowed_languages() -> None:
    """The README's list of highlighted languages is the allowlist, name for name."""
    from .conftest import ROOT

    text = (ROOT / "README.md").read_text("utf-8")
    listed = text.split("by these names (any other name shows\nas plain text")[1]
    listed = listed.split(":", 1)[1].split(". A block")[0]
    names = {name.strip() for name in listed.replace("\n", " ").split(",")}
    assert names == set(highlight.ALLOWED_LANGUAGES)


def test_a_render_spends_a_bounded_time_highlighting_all_its_blocks() -> None:
    """Given 200 blocks that each lex slowly, highlighting stops for good at the render's total.

    Without the total, each block would take its own full budget: 200 of them, minutes.
    """
    code = {"language": "c", "source": "\n" * 19_999}
    slow = steps_payload(*[{"title": f"Step {n}", "code": code} for n in range(200)])
    budget = Budget(Limits(highlight_seconds=0.2, highlight_total_seconds=0.5))
    started = time.monotonic()
    with limits.budgeted(budget):
        page = render_files(render_input(slow))["index.html"].decode()
    assert time.monotonic() - started < 0.5 + 5.0
    assert budget.highlighting_left <= 0
    assert page.count('<pre class="code" dir="ltr" data-lang="c">') == 200
