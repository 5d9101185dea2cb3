"""Parts of earlier renders kept by content, so an edited tutorial re-renders only what changed.

An author edits one step and resubmits: the thumbnail (title, summary, step count, theme,
size, language) and every other step's Markdown and highlighted code are the same as last
time. Each worker process keeps what it rendered in bounded maps keyed by a digest of the
inputs; nothing is shared between processes, so nothing needs locking or invalidating
beyond the renderer's own version. A part is kept only when rendering it was exact: a code
block shown plain because its time ran out depends on the clock, not on its content.

Parts come from earlier renders only: a block repeated within one tutorial is rendered each
time, so what a render costs, and the limits that bound it, still follow from its content.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

Value = TypeVar("Value", str, bytes)

MIB = 1024 * 1024


def content_key(*parts: str | int) -> bytes:
    """Return a short digest of some inputs: what a cache is keyed by (never the inputs)."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        data = str(part).encode("utf-8", "surrogatepass")
        # Each part's length first, so ("ab", "c") and ("a", "bc") never share a key.
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.digest()


class ContentCache(Generic[Value]):
    """A map from content digests to rendered parts, least recently used out first.

    Bounded by count and by size (characters of text, bytes of images); a part larger than
    an eighth of the size bound is never kept, so one huge step cannot empty the cache.
    """

    def __init__(self, name: str, max_items: int, max_size: int) -> None:
        self.name = name
        self.max_items = max_items
        self.max_size = max_size
        self.size = 0
        self.hits = 0
        self.misses = 0
        # key -> (the render that made the part, if any; the part)
        self._parts: OrderedDict[bytes, tuple[int | None, Value]] = OrderedDict()
        self._lock = threading.Lock()  # a worker renders on one thread; a test may on more

    def __len__(self) -> int:
        """Return how many parts are kept."""
        return len(self._parts)

    def get(self, key: bytes, render: int | None = None) -> Value | None:
        """Return the part kept under a key unless this render made it; a hit becomes the
        most recent."""
        with self._lock:
            kept = self._parts.get(key)
            if kept is None or (render is not None and kept[0] == render):
                self.misses += 1
                return None
            self._parts.move_to_end(key)
            self.hits += 1
            return kept[1]

    def put(self, key: bytes, part: Value, render: int | None = None) -> None:
        """Keep a part under a key, letting the least recently used go past the bounds."""
        if self.max_items <= 0 or len(part) > self.max_size // 8:
            return
        with self._lock:
            if key in self._parts:
                return
            self._parts[key] = (render, part)
            self.size += len(part)
            while len(self._parts) > self.max_items or self.size > self.max_size:
                _, (_, dropped) = self._parts.popitem(last=False)
                self.size -= len(dropped)

    def clear(self) -> None:
        """Forget every part and the counts."""
        with self._lock:
            self._parts.clear()
            self.size = self.hits = self.misses = 0

    def remember(
        self, key: bytes, make: Callable[[], Value], exact: Callable[[], bool], render: int
    ) -> Value:
        """Return the part under key from an earlier render, else make it, keeping it when
        exact() says it may be."""
        part = self.get(key, render)
        if part is None:
            part = make()
            if exact():
                self.put(key, part, render)
        return part


# The bounds of one worker process (PREVIEW_RENDER_CACHE_MB, 64 by default), shared out:
# a thumbnail is about 40 KB of PNG, a full payload's Markdown and code about 100 KB of
# text, so 64 MiB hold the recent tutorials of a busy team of editors.
DEFAULT_MIB = 64
SHARES = {"thumbnails": 0.25, "markdown": 0.375, "code": 0.375}
MAX_PARTS = {"thumbnails": 256, "markdown": 8192, "code": 8192}
THUMBNAILS: ContentCache[bytes] = ContentCache("thumbnails", 0, 0)
MARKDOWN: ContentCache[str] = ContentCache("markdown", 0, 0)
CODE: ContentCache[str] = ContentCache("code", 0, 0)
CACHES = (THUMBNAILS, MARKDOWN, CODE)


def configure(mib: int) -> None:
    """Bound the caches of this process to about mib MiB in all; 0 turns reuse off."""
    for cache in CACHES:
        max_size = int(mib * MIB * SHARES[cache.name])
        max_items = MAX_PARTS[cache.name] if mib > 0 else 0
        if (cache.max_size, cache.max_items) != (max_size, max_items):
            cache.clear()
            cache.max_size, cache.max_items = max_size, max_items


configure(DEFAULT_MIB)


def clear_all() -> None:
    """Empty every cache of this process: the next render is a cold one."""
    for cache in CACHES:
        cache.clear()
