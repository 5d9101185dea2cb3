"""Pure rendering of a preview payload into artifacts: an HTML page and a PNG thumbnail.

Nothing here knows of Redis, RQ or Flask: the same payload always gives the same bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from preview_worker.canonical import canonical_json
from preview_worker.render import limits
from preview_worker.render.model import RenderInput, render_input
from preview_worker.render.page import render_page
from preview_worker.render.thumbnail import missing_glyphs, render_thumbnail

# Bump whenever the bytes rendered for some payload change: it is part of every artifact hash.
RENDERER_VERSION = "3"  # 2: only allowed languages are highlighted; 3: every script, shaped

# Artifact file name and content type of each output format, in the order they are rendered.
ARTIFACTS = {
    "html": ("index.html", "text/html; charset=utf-8"),
    "png": ("thumbnail.png", "image/png"),
}


def preview_hash(preview: RenderInput) -> str:
    """Return the SHA-256 of a render input and the renderer version: the artifacts' address."""
    return hashlib.sha256(canonical_json([RENDERER_VERSION, preview.canonical()])).hexdigest()


Checkpoint = Callable[[str], None]  # told each stage ("html", "png", ...) before it starts


def _no_checkpoint(stage: str) -> None:
    """Let every stage go ahead."""


def render_files(
    preview: RenderInput, checkpoint: Checkpoint = _no_checkpoint
) -> dict[str, bytes]:
    """Render the artifacts of a render input: file name -> bytes, in its formats only.

    The render keeps within the budget it runs in (limits.budgeted), or raises
    RenderLimitExceeded saying which bound it passed.
    """
    renderers = {"html": lambda: _page_bytes(preview), "png": lambda: render_thumbnail(preview)}
    files = {}
    # The caller's budget, or a default one, shared by every part of this render.
    with limits.budgeted(limits.current()) as budget:
        for name in preview.formats:
            checkpoint(name)  # a caller may stop the render here, e.g. when it was canceled
            budget.check()
            files[ARTIFACTS[name][0]] = renderers[name]()
    return files


def _page_bytes(preview: RenderInput) -> bytes:
    """Return the page as UTF-8, refusing one whose bytes pass the cap its characters kept."""
    data = render_page(preview).encode("utf-8")
    cap = limits.current().limits.page_bytes
    if len(data) > cap:
        raise limits.PageTooLarge(f"the page is larger than {cap} bytes")
    return data


MAX_NAMED_GLYPHS = 20  # a warning names at most this many missing characters


def render_warnings(preview: RenderInput) -> list[str]:
    """Return what the artifacts of a render input cannot show, in words for the author."""
    missing = missing_glyphs(preview) if "png" in preview.formats else []
    if not missing:
        return []
    named = ", ".join(f"U+{ord(char):04X}" for char in missing[:MAX_NAMED_GLYPHS])
    more = f" and {len(missing) - MAX_NAMED_GLYPHS} more" if len(missing) > MAX_NAMED_GLYPHS else ""
    return [f"the thumbnail has no font for {named}{more}: drawn as empty boxes"]


def render_preview_files(payload: dict[str, Any]) -> dict[str, bytes]:
    """Render the artifacts of a valid payload: file name -> bytes, honouring output.formats."""
    return render_files(render_input(payload))


__all__ = [
    "ARTIFACTS",
    "Checkpoint",
    "RENDERER_VERSION",
    "RenderInput",
    "preview_hash",
    "render_files",
    "render_input",
    "render_preview_files",
    "render_warnings",
]
