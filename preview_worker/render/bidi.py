"""Text direction: the implicit rules of the Unicode Bidirectional Algorithm (UAX #9).

A title or summary is one paragraph without explicit embeddings; each character gets a
level (even: left to right, odd: right to left) and a line is shown in visual order.
Explicit formatting characters (LRE, RLI, PDF...) are taken as plain neutrals, and
brackets are not paired (rule N0): both only matter for text written to steer them.
"""

from __future__ import annotations

import unicodedata

LTR, RTL = 0, 1  # paragraph levels
# Languages written right to left (ISO 639-1 and 639-3 codes), and scripts that are.
RTL_LANGUAGES = frozenset(
    {"ar", "arc", "ckb", "dv", "fa", "he", "ku", "ps", "sd", "ug", "ur", "yi"}
)
RTL_SCRIPTS = frozenset({"arab", "hebr", "syrc", "thaa", "nkoo", "adlm", "rohg"})
LTR_SCRIPTS = frozenset({"latn", "cyrl"})

_STRONG = {"L": LTR, "R": RTL, "AL": RTL}
_NEUTRAL = frozenset({"B", "S", "WS", "ON", "BN", "LRE", "LRO", "RLE", "RLO", "PDF",
                      "LRI", "RLI", "FSI", "PDI"})


def language_level(language: str) -> int:
    """Return the paragraph level a BCP 47 tag implies: RTL for Arabic, Hebrew, Persian..."""
    parts = language.lower().split("-")
    scripts = [part for part in parts[1:] if len(part) == 4]
    if scripts and scripts[0] in RTL_SCRIPTS | LTR_SCRIPTS:
        return RTL if scripts[0] in RTL_SCRIPTS else LTR  # "az-Arab", "ku-Latn"
    return RTL if parts[0] in RTL_LANGUAGES else LTR


def has_rtl(text: str) -> bool:
    """Say whether a text holds anything shown right to left: RTL letters or Arabic digits."""
    return any(unicodedata.bidirectional(char) in ("R", "AL", "AN") for char in text)


def base_level(text: str, default: int = LTR) -> int:
    """Return a paragraph's level from its first strong character (rules P2, P3)."""
    for char in text:
        level = _STRONG.get(unicodedata.bidirectional(char))
        if level is not None:
            return level
    return default


def _resolve_weak(types: list[str], sos: str) -> None:
    """Resolve numbers, separators and marks in place (rules W1 to W7)."""
    previous, strong = sos, sos
    for index, kind in enumerate(types):
        if kind == "NSM":  # W1: a mark takes the type of what it marks
            kind = types[index] = previous
        if kind == "EN" and strong == "AL":  # W2: digits in Arabic text are Arabic numbers
            types[index] = "AN"
        if kind in _STRONG:
            strong = kind
        previous = types[index]
    for index, kind in enumerate(types):
        if kind == "AL":  # W3
            types[index] = "R"
    for index in range(1, len(types) - 1):  # W4: one separator inside a number
        before, kind, after = types[index - 1], types[index], types[index + 1]
        number = before == after and before in ("EN", "AN")
        if number and (kind == "CS" or kind == "ES" and before == "EN"):
            types[index] = before
    for index, kind in enumerate(types):  # W5: currency and percent signs next to digits
        if kind == "EN":
            for step in (-1, 1):
                near = index + step
                while 0 <= near < len(types) and types[near] == "ET":
                    types[near] = "EN"
                    near += step
    strong = sos
    for index, kind in enumerate(types):
        if kind in ("ES", "ET", "CS"):  # W6
            kind = types[index] = "ON"
        if kind in ("L", "R"):
            strong = kind
        elif kind == "EN" and strong == "L":  # W7: digits in Latin text are Latin
            types[index] = "L"


def _resolve_neutral(types: list[str], sos: str, eos: str, embedding: str) -> None:
    """Give runs of neutrals the direction around them, else the paragraph's (N1, N2)."""
    index = 0
    while index < len(types):
        if types[index] not in _NEUTRAL:
            index += 1
            continue
        end = index
        while end < len(types) and types[end] in _NEUTRAL:
            end += 1
        before = types[index - 1] if index else sos
        after = types[end] if end < len(types) else eos
        before, after = ("R" if kind in ("EN", "AN") else kind for kind in (before, after))
        direction = before if before == after else embedding
        types[index:end] = [direction] * (end - index)
        index = end


def levels(text: str, paragraph: int) -> list[int]:
    """Return each character's embedding level in a paragraph of a level (rules W, N and I)."""
    edge = "R" if paragraph == RTL else "L"
    types = [unicodedata.bidirectional(char) or "L" for char in text]
    _resolve_weak(types, edge)
    _resolve_neutral(types, edge, edge, edge)
    if paragraph == LTR:  # I1
        return [{"R": 1, "AN": 2, "EN": 2}.get(kind, 0) for kind in types]
    return [2 if kind in ("L", "EN", "AN") else 1 for kind in types]  # I2


def visual_order(line_levels: list[int]) -> list[int]:
    """Return the indices of a line's items in the order they are shown (rule L2)."""
    order = list(range(len(line_levels)))
    if not order:
        return order
    lowest_odd = min(level for level in line_levels) | 1
    for level in range(max(line_levels), lowest_odd - 1, -1):
        index = 0
        while index < len(order):
            if line_levels[order[index]] < level:
                index += 1
                continue
            end = index
            while end < len(order) and line_levels[order[end]] >= level:
                end += 1
            order[index:end] = reversed(order[index:end])
            index = end
    return order
