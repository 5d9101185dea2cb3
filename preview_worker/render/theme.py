"""The colours of the light and dark themes, shared by the page and the thumbnail."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Theme:
    """One colour scheme; every colour is a #rrggbb string."""

    name: str
    background: str  # page and thumbnail background
    surface: str  # table of contents, table headers, code label
    text: str
    muted: str  # summary, secondary text
    accent: str  # links, step numbers, the thumbnail's bar
    accent_text: str  # text drawn on the accent colour
    border: str
    pygments_style: str  # a style shipped with Pygments, for code


# Contrast of text and muted on background is at least 4.5:1 in both themes (WCAG AA).
THEMES = {
    "light": Theme(
        name="light",
        background="#ffffff",
        surface="#f6f8fa",
        text="#1f2328",
        muted="#59636e",
        accent="#0969da",
        accent_text="#ffffff",
        border="#d1d9e0",
        pygments_style="default",
    ),
    "dark": Theme(
        name="dark",
        background="#0d1117",
        surface="#151b23",
        text="#e6edf3",
        muted="#9198a1",
        accent="#4493f8",
        accent_text="#0d1117",
        border="#3d444d",
        pygments_style="github-dark",
    ),
}


def theme_named(name: str) -> Theme:
    """Return the theme of a name, the light one for any name not known."""
    return THEMES.get(name, THEMES["light"])
