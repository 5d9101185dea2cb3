"""Noto fonts shipped in the package (render/noto/), each loaded once per process, with fallback."""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from fontTools.ttLib import TTFont  # type: ignore[import-untyped]
from PIL import ImageFont, features

REGULAR = 400  # font weights, on the OpenType scale
BOLD = 700
# Unmodified Noto files, with their licence (OFL.txt): shipped, so that no font release
# elsewhere can change the bytes of a thumbnail without a new RENDERER_VERSION.
FONT_DIR = Path(__file__).resolve().parent / "noto"


@dataclass(frozen=True)
class FontSource:
    """One face in a font file shipped with the renderer."""

    filename: str
    index: int = 0  # the face in a font collection (.ttc)


NOTO_SANS = FontSource("NotoSans[wght].ttf")  # Latin, Greek, Cyrillic
NOTO_ARABIC = FontSource("NotoSansArabic[wght].ttf")
NOTO_HEBREW = FontSource("NotoSansHebrew[wght].ttf")
NOTO_DEVANAGARI = FontSource("NotoSansDevanagari[wght].ttf")
NOTO_THAI = FontSource("NotoSansThai[wght].ttf")
NOTO_SYMBOLS = FontSource("NotoSansSymbols[wght].ttf")
NOTO_EMOJI = FontSource("NotoEmoji[wght].ttf")  # outlines, one colour
NOTO_CJK = "NotoSansCJK-VF.otf.ttc"  # faces JP, KR, SC, TC, HK

# The face of Noto Sans CJK whose Han glyphs follow a language's conventions.
_CJK_FACES = {
    "ja": 0,
    "ko": 1,
    "zh": 2,
    "zh-hans": 2,
    "zh-cn": 2,
    "zh-sg": 2,
    "zh-hant": 3,
    "zh-tw": 3,
    "zh-hk": 4,
    "zh-mo": 4,
}


class FontMissing(RuntimeError):
    """A font file the thumbnail needs is missing from the install."""


def cjk_face(language: str) -> int:
    """Return the index of the CJK face for a BCP 47 language tag (Japanese by default)."""
    parts = language.lower().split("-")
    for length in (2, 1):
        face = _CJK_FACES.get("-".join(parts[:length]))
        if face is not None:
            return face
    return 0


class FontChain:
    """Faces tried in order for each character, remembering which face drew which character."""

    def __init__(self, sources: tuple[FontSource, ...]) -> None:
        """Use these faces, the first one for every character it has."""
        self.sources = sources
        self._choice: dict[str, FontSource | None] = {}

    def __repr__(self) -> str:
        """Show the faces of the chain."""
        return f"FontChain({[source.filename for source in self.sources]!r})"

    def source_of(self, char: str) -> FontSource | None:
        """Return the first face that has a glyph for a character, or None."""
        if char not in self._choice:
            code = ord(char)
            self._choice[char] = next(
                (source for source in self.sources if code in coverage(source)), None
            )
        return self._choice[char]

    def runs(self, text: str) -> list[tuple[FontSource, str]]:
        """Split a text into runs that one face draws, in the text's order.

        A letter goes to the first face that has it; a mark, digit, space or punctuation
        stays in the face of the run before it when that face has it, so that a word is
        shaped in one face. A character no face has goes to the first face, whose empty
        box (.notdef) shows it is missing rather than leaving a silent gap.
        """
        first = self.sources[0]
        if coverage(first).issuperset(map(ord, text)):
            return [(first, text)] if text else []  # the usual case, at the speed of a set
        result: list[tuple[FontSource, str]] = []
        for char in text:
            current = result[-1][0] if result else None
            if current is not None and _follows(char) and ord(char) in coverage(current):
                source = current
            else:
                source = self.source_of(char) or first
            if source == current:
                result[-1] = (source, result[-1][1] + char)
            else:
                result.append((source, char))
        return result

    def missing(self, text: str) -> list[str]:
        """Return the characters of a text that no face has, once each, in order."""
        found = dict.fromkeys(
            char for char in text if not char.isspace() and self.source_of(char) is None
        )
        return list(found)


def _follows(char: str) -> bool:
    """Say whether a character may stay in the face of the text before it (all but letters)."""
    return not unicodedata.category(char).startswith("L")


@functools.lru_cache(maxsize=64)
def fallback_chain(language: str) -> FontChain:
    """Return the faces to try, in order, for the characters of a text in a language."""
    cjk = FontSource(NOTO_CJK, cjk_face(language))
    return FontChain(
        (NOTO_SANS, NOTO_ARABIC, NOTO_HEBREW, NOTO_DEVANAGARI, NOTO_THAI, cjk, NOTO_SYMBOLS,
         NOTO_EMOJI)
    )


def font_path(source: FontSource) -> Path:
    """Return the file of a font source, or raise FontMissing when the install lacks it."""
    path = FONT_DIR / source.filename
    if not path.is_file():
        raise FontMissing(f"font {source.filename} is missing from {FONT_DIR}: reinstall")
    return path


@functools.lru_cache(maxsize=16)
def coverage(source: FontSource) -> frozenset[int]:
    """Return the code points a face has glyphs for, read from its cmap once."""
    font = TTFont(font_path(source), fontNumber=source.index, lazy=True)
    try:
        return frozenset(font.getBestCmap() or ())
    finally:
        font.close()


@functools.lru_cache(maxsize=128)
def face(source: FontSource, size: int, weight: int) -> ImageFont.FreeTypeFont:
    """Return a face at a pixel size and weight, loaded once per process."""
    # Raqm shapes (Arabic joining, Indic clusters, Thai marks), kerns and sets a run's direction.
    if not features.check_feature("raqm"):
        raise FontMissing("Pillow was built without Raqm: install Pillow's own wheel")
    font = ImageFont.truetype(
        str(font_path(source)), size, index=source.index, layout_engine=ImageFont.Layout.RAQM
    )
    axes = font.get_variation_axes()
    if axes:
        # Noto's variable fonts have a single axis, the weight; keep any other at its default.
        values: list[float] = [
            _clamp(weight, axis["minimum"], axis["maximum"])
            if axis.get("name") == b"Weight"
            else float(axis["default"] or 0)
            for axis in axes
        ]
        font.set_variation_by_axes(values)
    return font


def _clamp(value: int, low: int | None, high: int | None) -> float:
    """Return a value within an axis' bounds, where the font states them."""
    return float(min(max(value, low or value), high or value))


def clear_caches() -> None:
    """Forget every loaded font, as a fresh process would (for benchmarks and tests)."""
    for cached in (coverage, fallback_chain, face):
        cached.cache_clear()
