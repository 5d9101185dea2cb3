"""What one render may take: time, page size, and a way to be stopped from outside.

A render runs inside budgeted(budget); the page, the Markdown renderer and the highlighter
read the budget from there, so no signature between them has to carry it.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

DEFAULT_SECONDS = 60.0  # a whole render, page and thumbnail
DEFAULT_PAGE_BYTES = 16 * 1024 * 1024  # the largest HTML page; a full payload makes ~8 MiB
DEFAULT_HIGHLIGHT_SECONDS = 1.0  # one code block, after which it is shown as plain text
# All the blocks of one render together; past it, the remaining blocks are plain text.
DEFAULT_HIGHLIGHT_TOTAL_SECONDS = 10.0


class RenderLimitExceeded(Exception):
    """A render went past one of its bounds; the message says which, for people."""


class RenderTooSlow(RenderLimitExceeded):
    """The render ran longer than its time budget."""


class PageTooLarge(RenderLimitExceeded):
    """The page grew past its size cap while it was rendered."""


@dataclass(frozen=True)
class Limits:
    """The bounds of one render."""

    seconds: float = DEFAULT_SECONDS
    page_bytes: int = DEFAULT_PAGE_BYTES
    highlight_seconds: float = DEFAULT_HIGHLIGHT_SECONDS
    highlight_total_seconds: float = DEFAULT_HIGHLIGHT_TOTAL_SECONDS


_RENDERS = itertools.count()


def _go_on() -> None:
    """Never interrupt."""


class Budget:
    """The time and page bytes left to one render, and the check that may interrupt it."""

    def __init__(self, limits: Limits = Limits(), interrupt: Callable[[], None] = _go_on) -> None:
        """Start the clock; interrupt() is called at every check and raises to stop the render."""
        self.limits = limits
        self.deadline = time.monotonic() + limits.seconds
        self.spent = 0  # characters of the page committed so far
        self.highlighting_left = limits.highlight_total_seconds  # seconds, for every block
        # Code blocks shown plain for lack of time: what they show depends on the clock, so
        # nothing rendered with one may be reused (see reuse.py).
        self.plain_blocks = 0
        self.render = next(_RENDERS)  # tells this render apart from every other in the process
        self.interrupt = interrupt

    def __repr__(self) -> str:
        """Show the limits and what is spent."""
        return f"Budget({self.limits!r}, spent={self.spent})"

    def check(self) -> None:
        """Raise if the render was asked to stop or ran out of time."""
        self.interrupt()
        if time.monotonic() > self.deadline:
            raise RenderTooSlow(f"the render took longer than {self.limits.seconds:g} s")

    def check_size(self, pending: int) -> None:
        """Raise if the page would pass its cap with pending more characters."""
        # Characters, not bytes, while rendering: cheap to count; the bytes are checked at the end.
        if self.spent + pending > self.limits.page_bytes:
            raise PageTooLarge(f"the page is larger than {self.limits.page_bytes} bytes")

    def spend(self, part: str) -> str:
        """Commit a finished part of the page to its size; return it."""
        self.check_size(len(part))
        self.spent += len(part)
        return part


_current: ContextVar[Budget | None] = ContextVar("render_budget", default=None)


def current() -> Budget:
    """Return the budget of the running render; an unlimited clock outside one."""
    return _current.get() or Budget()


@contextlib.contextmanager
def budgeted(budget: Budget) -> Iterator[Budget]:
    """Run a render within a budget."""
    token = _current.set(budget)
    try:
        yield budget
    finally:
        _current.reset(token)
