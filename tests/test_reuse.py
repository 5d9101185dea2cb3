"""Parts of earlier renders are reused by content, and an edited tutorial renders as if cold."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from preview_worker.render import render_files, render_input, reuse
from preview_worker.render.limits import Budget, Limits, budgeted
from preview_worker.render.reuse import ContentCache, content_key

from .conftest import load_payload

FULL = "preview_payload_full.json"
Edit = Callable[[dict[str, Any]], object]  # edits in place; what it returns is ignored


@pytest.fixture(autouse=True)
def cold_caches() -> Iterator[None]:
    """Start and leave every test with empty caches."""
    reuse.clear_all()
    yield
    reuse.clear_all()


def steps(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the steps of a payload, to edit in place."""
    found: list[dict[str, Any]] = payload["content"]["steps"]
    return found


def edit_body(index: int, text: str) -> Edit:
    """Return an edit that appends text to one step's body."""
    return lambda payload: steps(payload)[index].update(body=steps(payload)[index]["body"] + text)


def edit_code(index: int, line: str) -> Edit:
    """Return an edit that appends a line to one step's code."""
    def edit(payload: dict[str, Any]) -> None:
        code = steps(payload)[index]["code"]
        code["source"] = code["source"] + line
    return edit


def edit_content(**fields: Any) -> Edit:
    """Return an edit of the tutorial's own fields (title, summary, language)."""
    return lambda payload: payload["content"].update(fields)


EDITS: list[Edit] = [
    edit_body(0, "\n\nOne more sentence."),
    edit_code(2, "\nprint('again')"),
    edit_body(3, "\n\n```python\nx = 1\n```"),
    edit_content(title="A new title for the same steps"),
    edit_code(2, "\nprint('and again')"),
    lambda payload: payload["output"].update(theme="dark"),
    lambda payload: steps(payload).insert(1, copy.deepcopy(steps(payload)[4])),
    lambda payload: steps(payload).reverse(),
    edit_content(summary="Shorter."),
    lambda payload: steps(payload).pop(),
]


def versions() -> list[dict[str, Any]]:
    """Return the full payload and each of its versions after one more edit."""
    payload = load_payload(FULL)
    found = [copy.deepcopy(payload)]
    for edit in EDITS:
        edit(payload)
        found.append(copy.deepcopy(payload))
    return found


def render(payload: dict[str, Any]) -> dict[str, bytes]:
    """Render every artifact of a payload."""
    return render_files(render_input(payload))


def test_a_sequence_of_edits_renders_the_bytes_of_cold_renders() -> None:
    """Given ten edits rendered one after another, each version's bytes equal a cold render's."""
    every = versions()
    cold = []
    for version in every:
        reuse.clear_all()
        cold.append(render(version))
    reuse.clear_all()
    for number, version in enumerate(every):
        assert render(version) == cold[number], f"version {number}"
    # Reused, not re-rendered: most parts came from the caches.
    assert reuse.MARKDOWN.hits > reuse.MARKDOWN.misses
    assert reuse.CODE.hits > reuse.CODE.misses
    assert reuse.THUMBNAILS.hits >= 5


def test_an_edit_of_one_step_renders_only_that_step_and_keeps_the_thumbnail() -> None:
    """Given a rendered tutorial, when one step's body changes, only that body is rendered."""
    payload = load_payload(FULL)
    render(payload)
    bodies = sum(1 for step in steps(payload) if step.get("body"))
    blocks = reuse.CODE.misses
    edit_body(1, "\n\nEdited.")(payload)
    reuse.MARKDOWN.hits = reuse.MARKDOWN.misses = 0
    reuse.CODE.hits = reuse.CODE.misses = reuse.THUMBNAILS.hits = 0
    render(payload)
    assert (reuse.MARKDOWN.misses, reuse.MARKDOWN.hits) == (1, bodies - 1)
    assert reuse.CODE.misses == 0 and reuse.CODE.hits == blocks
    assert reuse.THUMBNAILS.hits == 1


def test_a_block_shown_plain_for_lack_of_time_is_not_reused() -> None:
    """Given a render whose highlighting time ran out, the next render highlights its code."""
    payload = load_payload(FULL)
    edit_body(0, "\n\n```python\nimport os\n```")(payload)  # code inside a body too
    bodies = sum(1 for step in steps(payload) if step.get("body"))
    with budgeted(Budget(Limits(highlight_total_seconds=0))):
        hurried = render(payload)["index.html"]
    assert b'<span class="k' not in hurried  # every block plain
    # Bodies without code are exact whatever the clock says; the one with code is not.
    assert len(reuse.CODE) == 0 and len(reuse.MARKDOWN) == bodies - 1
    calm = render(payload)["index.html"]
    assert b'<span class="k' in calm
    reuse.clear_all()
    assert render(payload)["index.html"] == calm


def test_a_cache_stays_within_its_count() -> None:
    """Given more parts than a cache may hold, the least recently used ones go."""
    cache: ContentCache[str] = ContentCache("test", max_items=3, max_size=1000)
    for number in range(5):
        cache.put(content_key(number), f"part {number}")
        assert cache.get(content_key(0)) is not None or number >= 3
    assert len(cache) == 3
    assert cache.get(content_key(0)) is not None  # kept fresh by the reads above
    assert cache.get(content_key(1)) is None and cache.get(content_key(2)) is None


def test_a_cache_stays_within_its_size_and_never_keeps_a_huge_part() -> None:
    """Given parts whose sizes pass the bound, the size stays within it; a huge part is refused."""
    cache: ContentCache[bytes] = ContentCache("test", max_items=1000, max_size=800)
    for number in range(50):
        cache.put(content_key(number), bytes(90))
        assert cache.size <= 800
    assert len(cache) == 8
    cache.put(content_key("huge"), bytes(101))  # more than an eighth of the bound
    assert cache.get(content_key("huge")) is None
    assert cache.size == sum(len(part) for _, part in cache._parts.values())


def test_keys_tell_apart_parts_that_join_to_the_same_text() -> None:
    """Given inputs that concatenate alike, their keys differ."""
    assert content_key("ab", "c") != content_key("a", "bc")
    assert content_key("python", "x") != content_key("python ", "x")
    assert content_key("a", 1) == content_key("a", "1")  # a number keys as its text


def test_a_budget_of_zero_turns_reuse_off_and_the_bounds_follow_the_setting() -> None:
    """Given PREVIEW_RENDER_CACHE_MB=0, nothing is kept; given 4, the caches hold about 4 MiB."""
    payload = load_payload(FULL)
    try:
        reuse.configure(0)
        render(payload)
        render(payload)
        assert [len(cache) for cache in reuse.CACHES] == [0, 0, 0]
        assert reuse.THUMBNAILS.hits == 0
        reuse.configure(4)
        assert sum(cache.max_size for cache in reuse.CACHES) == 4 * reuse.MIB
        render(payload)
        render(payload)
        assert reuse.THUMBNAILS.hits == 1 and len(reuse.MARKDOWN) > 0
    finally:
        reuse.configure(reuse.DEFAULT_MIB)


def test_a_render_reuses_parts_of_earlier_renders_only() -> None:
    """Given a tutorial whose steps repeat one body and one block, one render makes each one
    every time (its cost follows its content); the next render reuses them."""
    payload = load_payload(FULL)
    step = steps(payload)[2]
    payload["content"]["steps"] = [copy.deepcopy(step) for _ in range(5)]
    render(payload)
    assert (reuse.MARKDOWN.hits, reuse.CODE.hits) == (0, 0)
    assert (reuse.MARKDOWN.misses, reuse.CODE.misses) == (5, 5)
    payload["content"]["title"] = "Another"
    render(payload)
    assert (reuse.MARKDOWN.hits, reuse.CODE.hits) == (5, 5)
