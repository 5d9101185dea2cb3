"""PNG encodings of the thumbnail: median milliseconds and bytes of each save() option.

Each thumbnail is drawn once, then encoded REPEATS times by every option, the options taken in
turn (in a rotating order) within each repetition so that a noisy neighbour slows them alike.
Every output is decoded and compared with the drawn pixels: only lossless options are listed.
A 256-colour palette is lossless only for a thumbnail of at most 256 colours, so it is tried
only there; antialiased text usually has more (the header line gives each thumbnail's count).
"""

from __future__ import annotations

import argparse
import copy
import gc
import io
import json
import statistics
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL
from PIL import Image, features

from preview_worker.render import thumbnail
from preview_worker.render.model import render_input

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the titles in each script are the ones the OCR tests read back

from tests.test_scripts import SCRIPTS  # noqa: E402

PAYLOADS = ROOT / "payloads"
REPEATS = 31  # encodings per option and thumbnail; odd, so the median is one of them
STRATEGIES = {zlib.Z_RLE: "Z_RLE", zlib.Z_FIXED: "Z_FIXED", zlib.Z_HUFFMAN_ONLY: "Z_HUFFMAN"}


@dataclass(frozen=True)
class Option:
    """One way to write the thumbnail: save() arguments, after a palette conversion or not."""

    label: str
    save: dict[str, Any] = field(default_factory=dict)
    palette: bool = False

    def encode(self, image: Image.Image) -> bytes:
        """Return the image as PNG bytes written this way."""
        if self.palette:
            image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
        buffer = io.BytesIO()
        image.save(buffer, "PNG", **self.save)
        return buffer.getvalue()

    def fits(self, image: Image.Image) -> bool:
        """Say whether this option can write the image losslessly at all."""
        return not self.palette or image.getcolors(256) is not None


def options() -> list[Option]:
    """Return the options measured: every level, the zlib strategies, optimize, a palette."""
    # Pillow filters each row adaptively and asks zlib for Z_FILTERED unless told otherwise.
    listed = [Option(f"compress_level={level}", {"compress_level": level}) for level in range(10)]
    # Z_FILTERED and Z_DEFAULT_STRATEGY differ only in zlib's lazy matching, levels 4 to 9.
    listed += [
        Option(f"compress_level={level}, Z_DEFAULT", {"compress_level": level, "compress_type": 0})
        for level in range(4, 10)
    ]
    listed += [
        Option(f"compress_level=1, {name}", {"compress_level": 1, "compress_type": strategy})
        for strategy, name in STRATEGIES.items()
    ]
    # optimize=True means level 9 and one more filter tried per row, whatever compress_level says.
    listed.append(Option("optimize=True", {"optimize": True}))
    listed.append(Option("P 256, compress_level=9", {"compress_level": 9}, palette=True))
    return listed


def thumbnails() -> dict[str, Image.Image]:
    """Draw representative thumbnails: both payloads in both themes, an RTL and a CJK title."""
    full = json.loads((PAYLOADS / "preview_payload_full.json").read_text("utf-8"))
    minimal = json.loads((PAYLOADS / "preview_payload_minimal.json").read_text("utf-8"))
    arabic_title, arabic, _ = SCRIPTS["arabic"]
    chinese_title, chinese, _ = SCRIPTS["chinese"]
    variants = {
        "full-dark": (full, "dark", {}),
        "full-light": (full, "light", {}),
        "min-light": (minimal, "light", {}),
        "min-dark": (minimal, "dark", {}),
        "ar-light": (minimal, "light", {"title": arabic_title, "language": arabic}),
        "zh-dark": (full, "dark", {"title": chinese_title, "language": chinese}),
    }
    drawn = {}
    for name, (base, theme, content) in variants.items():
        payload = copy.deepcopy(base)
        payload["content"] |= content
        payload["output"] = payload.get("output", {}) | {"theme": theme}
        drawn[name] = thumbnail.draw_thumbnail(render_input(payload))
    return drawn


def lossless(image: Image.Image, data: bytes) -> bool:
    """Say whether PNG bytes decode to exactly the pixels of an image."""
    decoded = Image.open(io.BytesIO(data)).convert(image.mode)
    return decoded.size == image.size and decoded.tobytes() == image.tobytes()


def timings(
    images: dict[str, Image.Image], listed: list[Option], repeats: int
) -> dict[tuple[str, str], list[float]]:
    """Return the seconds of each (thumbnail, option) encoding, options alternating."""
    seconds: dict[tuple[str, str], list[float]] = {}
    pairs = [(name, option) for name in images for option in listed if option.fits(images[name])]
    gc.disable()  # a collection inside one encoding would be charged to that option
    try:
        for repeat in range(repeats):
            shift = repeat % len(pairs)
            for name, option in pairs[shift:] + pairs[:shift]:
                start = time.perf_counter()
                option.encode(images[name])
                seconds.setdefault((name, option.label), []).append(time.perf_counter() - start)
    finally:
        gc.enable()
    return seconds


def deflate_in_use() -> str:
    """Describe the zlib Pillow calls: its version, zlib-ng's flag, the libraries mapped."""
    mapped = set()
    maps = Path("/proc/self/maps")  # Linux only: which libz files the process has loaded
    if maps.exists():
        paths = {line.split()[-1] for line in maps.read_text().splitlines() if "/" in line}
        mapped = {path for path in paths if Path(path).name.startswith(("libz.", "libz-"))}
    return (
        f"Pillow {PIL.__version__}: zlib {features.version('zlib')}, "
        f"zlib_ng feature {features.check_feature('zlib_ng')} "
        f"({features.version_feature('zlib_ng')}); mapped: {', '.join(sorted(mapped)) or '?'}"
    )


def main() -> None:
    """Print each option's median encoding time and bytes for every thumbnail."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=REPEATS, help="encodings per option")
    arguments = parser.parse_args()
    images, listed = thumbnails(), options()
    outputs = {
        (name, option.label): option.encode(image)
        for name, image in images.items()
        for option in listed
        if option.fits(image)
    }
    for (name, label), data in outputs.items():
        assert lossless(images[name], data), (name, label)
    seconds = timings(images, listed, arguments.repeats)
    print(deflate_in_use())
    colours = {name: len(image.getcolors(1 << 24) or ()) for name, image in images.items()}
    print("colours: " + ", ".join(f"{name} {count}" for name, count in colours.items()))
    current = thumbnail.PNG_OPTIONS
    print(f"median ms and bytes of {arguments.repeats} encodings; * marks PNG_OPTIONS today")
    print(f"{'option':<28}" + "".join(f"{name:>16}" for name in images))
    for option in listed:
        mark = "*" if option.save == current and not option.palette else " "
        cells = []
        for name in images:
            if (name, option.label) not in outputs:
                cells.append(f"{'n/a':>16}")  # more colours than a palette holds
                continue
            median = statistics.median(seconds[name, option.label]) * 1000
            cells.append(f"{median:>8.1f}{len(outputs[name, option.label]):>8}")
        print(f"{mark}{option.label:<27}" + "".join(cells))


if __name__ == "__main__":
    main()
