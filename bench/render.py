"""Renders per second, cold (in memory, never a cache hit): the naive path against ours.

The naive path is what each render costs when nothing is kept between renders: Pygments
lexers and styles looked up again, the Markdown parser rebuilt, fonts and their character maps
loaded again, and the PNG written with Pillow's default compression. `--profile` prints where
the time of the optimised full render goes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from preview_worker.render import fonts, highlight, markdown, page, render_preview_files, thumbnail

PAYLOADS = Path(__file__).resolve().parent.parent / "payloads"
ROUND = 0.5  # seconds of one measurement
ROUNDS = 7  # alternating naive and optimised, so that a noisy neighbour slows both alike
ENCODE_PNG = thumbnail.encode_png


def forget_everything() -> None:
    """Drop every cache the renderer keeps, as if each render ran in a new process."""
    fonts.clear_caches()
    for cached in (highlight.lexer_for, highlight.token_css, markdown.markdown_parser):
        cached.cache_clear()
    page.page_css.cache_clear()


def encode_png_default(image: Image.Image) -> bytes:
    """Write a PNG the obvious way: RGB at Pillow's default compression (zlib level 6)."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def render_naive(payload: dict[str, Any]) -> None:
    """Render with nothing kept between renders and the obvious PNG encoding."""
    forget_everything()
    thumbnail.encode_png = encode_png_default
    try:
        render_preview_files(payload)
    finally:
        thumbnail.encode_png = ENCODE_PNG


def rate(render: Callable[[dict[str, Any]], object], payload: dict[str, Any]) -> float:
    """Return how many times per second render(payload) runs, over ROUND seconds."""
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < ROUND:
        render(payload)
        count += 1
    return count / elapsed


def rates(payload: dict[str, Any]) -> tuple[float, float]:
    """Return renders per second, naive and optimised: medians of rounds taken in turn."""
    render_naive(payload)  # warm up imports before timing
    render_preview_files(payload)
    rounds = [
        (rate(render_naive, payload), rate(render_preview_files, payload)) for _ in range(ROUNDS)
    ]
    return statistics.median(a for a, _ in rounds), statistics.median(b for _, b in rounds)


def profile(payload: dict[str, Any]) -> None:
    """Print the functions where an optimised full render spends its time."""
    render_preview_files(payload)
    profiler = cProfile.Profile()
    profiler.runcall(lambda: [render_preview_files(payload) for _ in range(20)])
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


def main() -> None:
    """Print renders per second for each example payload, naive and optimised."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="profile the full payload")
    options = parser.parse_args()
    payloads = {
        name: json.loads((PAYLOADS / f"preview_payload_{name}.json").read_text("utf-8"))
        for name in ("minimal", "full")
    }
    if options.profile:
        profile(payloads["full"])
        return
    print(f"{'payload':<10} {'naive/s':>9} {'optimised/s':>12} {'speed-up':>9}")
    for name, payload in payloads.items():
        naive, optimised = rates(payload)
        print(f"{name:<10} {naive:>9.1f} {optimised:>12.1f} {optimised / naive:>8.1f}x")


if __name__ == "__main__":
    main()
