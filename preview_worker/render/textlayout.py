"""Line breaking for the thumbnail: wrap at spaces and between CJK characters, then ellipsise."""

from __future__ import annotations

import unicodedata
from collections import deque
from collections.abc import Callable

ELLIPSIS = "\u2026"

Measure = Callable[[str], float]  # the width of a text in pixels

# Japanese and Chinese lines neither start with closing punctuation or small kana, nor end
# with an opening bracket (kinsoku): such characters stick to their neighbour.
NO_BREAK_BEFORE = frozenset(
    "、。，．・：；？！ー）」』】〉》〕］｝"  # closing punctuation
    "ぁぃぅぇぉっゃゅょゎァィゥェォッャュョヮヵヶ…々"  # small kana, ellipsis, iteration mark
)
NO_BREAK_AFTER = frozenset("（「『【〈《〔［｛")


def _is_wide(char: str) -> bool:
    """Say whether a character is wide (CJK), after which a line may break without a space."""
    return unicodedata.east_asian_width(char) in ("W", "F")


def _is_mark(char: str) -> bool:
    """Say whether a character combines with the one before it (a vowel sign, an accent)."""
    return unicodedata.category(char).startswith("M") or char in "\u200c\u200d"


def pieces(text: str) -> list[str]:
    """Split a text into the pieces a line may end after: words with their space, wide chars."""
    result: list[str] = []
    word = ""
    for char in " ".join(text.split()):
        if char in NO_BREAK_BEFORE and result and not word:
            result[-1] += char  # stays on the line of the piece before it
        elif char in NO_BREAK_BEFORE or char in NO_BREAK_AFTER:
            word += char
        elif _is_wide(char):
            opened = word[-1:] in NO_BREAK_AFTER
            result.extend([word + char] if opened else [word, char] if word else [char])
            word = ""
        elif char == " ":
            result.append(word + char)
            word = ""
        else:
            word += char
    return result + [word] if word else result


def _split_long(piece: str, measure: Measure, max_width: float) -> list[str]:
    """Break a piece too wide for a line (a long URL, say) into pieces that fit.

    A combining mark (a Thai vowel, a Devanagari sign) stays with the letter it marks.
    """
    result: list[str] = []
    part = ""
    for char in piece:
        if part and not _is_mark(char) and measure(part + char) > max_width:
            result.append(part)
            part = ""
        part += char
    return result + [part] if part else result


def ellipsise(line: str, measure: Measure, max_width: float) -> str:
    """Shorten a line until it fits with an ellipsis at its end."""
    line = line.rstrip()
    while line and measure(line + ELLIPSIS) > max_width:
        line = line[:-1].rstrip()
    return line + ELLIPSIS


def wrap(text: str, measure: Measure, max_width: float, max_lines: int) -> list[str]:
    """Return at most max_lines lines no wider than max_width; cut text ends with an ellipsis."""
    return wrap_or_cut(text, measure, max_width, max_lines)[0]


def wrap_or_cut(
    text: str, measure: Measure, max_width: float, max_lines: int
) -> tuple[list[str], bool]:
    """Return the wrapped lines and whether the text had to be cut to fit them."""
    # Each piece is measured once and widths are added: kerning across two pieces is lost,
    # a pixel or so, which the padding absorbs.
    space = measure(" ")
    lines: list[str] = []
    line, width = "", 0.0
    queue = deque(pieces(text))
    while queue and len(lines) < max_lines:
        piece = queue.popleft()
        word = piece.rstrip()
        word_width = measure(word)
        if width + word_width <= max_width:
            line += piece
            width += word_width + (space if word != piece else 0.0)
        elif line:
            lines.append(line.rstrip())
            line, width = "", 0.0
            queue.appendleft(piece)
        else:
            parts = _split_long(piece, measure, max_width)
            if len(parts) == 1:  # one glyph wider than the line: let the image clip it
                line, width = piece, word_width
            else:
                queue.extendleft(reversed(parts))
    if line and len(lines) < max_lines:
        lines.append(line.rstrip())
    if queue and lines:
        lines[-1] = ellipsise(lines[-1], measure, max_width)
    return lines, bool(queue)
