"""The render input: the parts of a payload that shape the preview, with defaults applied."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

from preview_worker.schema import default_of

FORMATS = ("html", "png")  # the order artifacts are rendered and listed in
THEMES = ("light", "dark")
# The payload's defaults, as the schema states them.
DEFAULT_LANGUAGE: str = default_of("content", "language")
DEFAULT_FORMATS: list[str] = default_of("output", "formats")
DEFAULT_THEME: str = default_of("output", "theme")
DEFAULT_WIDTH: int = default_of("output", "width")  # pixels
DEFAULT_HEIGHT: int = default_of("output", "height")  # pixels


@dataclass(frozen=True)
class CodeBlock:
    """A step's piece of code and the name of its language ('' when not given)."""

    source: str
    language: str = ""


@dataclass(frozen=True)
class Step:
    """One step of a tutorial: a title, a Markdown body and optionally code."""

    title: str
    body: str = ""
    code: CodeBlock | None = None


@dataclass(frozen=True)
class RenderInput:
    """Everything a preview depends on, and nothing else."""

    title: str
    steps: tuple[Step, ...]
    summary: str = ""
    language: str = DEFAULT_LANGUAGE
    formats: tuple[str, ...] = tuple(DEFAULT_FORMATS)
    theme: str = DEFAULT_THEME
    width: int = DEFAULT_WIDTH
    height: int = DEFAULT_HEIGHT

    @property
    def steps_label(self) -> str:
        """Say how many steps there are: "1 step", "12 steps"."""
        count = len(self.steps)
        return f"{count} step" if count == 1 else f"{count} steps"

    def canonical(self) -> dict[str, Any]:
        """Return the input as plain JSON data; fields that change no artifact are left out."""
        output: dict[str, Any] = {"formats": list(self.formats), "theme": self.theme}
        if "png" in self.formats:
            output |= {"width": self.width, "height": self.height}
        steps = [_canonical_step(step) for step in self.steps]
        content = {"title": self.title, "summary": self.summary, "language": self.language}
        return {"content": content | {"steps": steps}, "output": output}


def _canonical_step(step: Step) -> dict[str, Any]:
    """Return one step as plain JSON data."""
    code = step.code
    listed = None if code is None else {"language": code.language, "source": code.source}
    return {"title": step.title, "body": step.body, "code": listed}


def _text(value: Any) -> str:
    """Return a payload string in NFC, so equal-looking text renders and hashes alike."""
    return unicodedata.normalize("NFC", value) if isinstance(value, str) else ""


def _step(raw: dict[str, Any]) -> Step:
    """Read one step of a payload."""
    code = raw.get("code")
    block = None
    if isinstance(code, dict):
        block = CodeBlock(source=_text(code.get("source")), language=_text(code.get("language")))
    return Step(title=_text(raw.get("title")), body=_text(raw.get("body")), code=block)


def render_input(payload: dict[str, Any]) -> RenderInput:
    """Read the render input of a valid payload, applying the schema's defaults."""
    content = payload.get("content") or {}
    output = payload.get("output") or {}
    wanted = set(output.get("formats") or DEFAULT_FORMATS)
    return RenderInput(
        title=_text(content.get("title")),
        summary=_text(content.get("summary")),
        language=str(content.get("language") or DEFAULT_LANGUAGE),
        steps=tuple(_step(raw) for raw in content.get("steps") or () if isinstance(raw, dict)),
        formats=tuple(name for name in FORMATS if name in wanted),
        theme=str(output.get("theme")) if output.get("theme") in THEMES else DEFAULT_THEME,
        width=int(output.get("width") or DEFAULT_WIDTH),
        height=int(output.get("height") or DEFAULT_HEIGHT),
    )
