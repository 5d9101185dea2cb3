"""The PNG thumbnail: title, summary and step count in the theme's colours."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

from preview_worker.render import bidi, fonts, limits, reuse
from preview_worker.render.model import RenderInput
from preview_worker.render.textlayout import wrap, wrap_or_cut
from preview_worker.render.theme import Theme, theme_named

BASE_WIDTH, BASE_HEIGHT = 1200, 630  # the design size; other sizes scale from it
MIN_FONT_SIZE = 10  # pixels
LINE_HEIGHT = 1.3  # times the font size
BASELINE = 1.02  # from the top of a line to its baseline, times the font size
TITLE_SIZES = (60, 52, 44)  # design pixels: a long title steps down before it is cut
# Level 1, measured against every other choice (bench/png.py): Pillow's own per-row filter
# choice takes three quarters of the time at any level, so nothing encodes faster but no
# compression (2.3 MB); level 4 and up cost 8 ms more a render for 17-40% fewer bytes, and
# optimize=True 3-5x the time. The thumbnails hold 450-720 colours: no lossless palette.
PNG_OPTIONS: dict[str, Any] = {"compress_level": 1}


@dataclass(frozen=True)
class Style:
    """How one block of text is set: size in pixels, weight, colour and most lines."""

    size: int
    weight: int
    colour: str
    max_lines: int = 1

    @property
    def line_height(self) -> int:
        """Return the height of one line in pixels."""
        return round(self.size * LINE_HEIGHT)


# One piece of a line as it is drawn: a face, its text in logical order, and its direction.
Segment = tuple[fonts.FontSource, str, str]


class Canvas:
    """A thumbnail being drawn: the image, the fonts to use and where text may go."""

    def __init__(self, preview: RenderInput) -> None:
        """Start a blank thumbnail of the preview's size in its theme's background."""
        self.theme: Theme = theme_named(preview.theme)
        self.width, self.height = preview.width, preview.height
        self.scale = min(self.width / BASE_WIDTH, self.height / BASE_HEIGHT)
        self.padding = max(8, round(64 * self.scale))
        self.chain = fonts.fallback_chain(preview.language)
        self.language_level = bidi.language_level(preview.language)
        # The layout mirrors (bar, eyebrow and badge on the right) when the title reads RTL.
        self.rtl = bidi.base_level(preview.title, self.language_level) == bidi.RTL
        self.image = Image.new("RGB", (self.width, self.height), self.theme.background)
        self.draw = ImageDraw.Draw(self.image)

    def px(self, size: float) -> int:
        """Return a font size of the design scaled to this thumbnail, never illegibly small."""
        return max(MIN_FONT_SIZE, round(size * self.scale))

    def segments(self, text: str, paragraph: int) -> list[Segment]:
        """Split a line into runs of one face and one direction, in the order they are shown."""
        runs = self.chain.runs(text)
        if paragraph == bidi.LTR and not bidi.has_rtl(text):
            return [(source, run, "ltr") for source, run in runs]  # the usual case
        levels = bidi.levels(text, paragraph)
        pieces: list[tuple[fonts.FontSource, str, int]] = []
        position = 0
        for source, run in runs:
            for char, level in zip(run, levels[position : position + len(run)], strict=True):
                if pieces and pieces[-1][0] == source and pieces[-1][2] == level:
                    pieces[-1] = (source, pieces[-1][1] + char, level)
                else:
                    pieces.append((source, char, level))
            position += len(run)
        order = bidi.visual_order([level for _, _, level in pieces])
        return [
            (pieces[index][0], pieces[index][1], "rtl" if pieces[index][2] % 2 else "ltr")
            for index in order
        ]

    def measure(self, text: str, style: Style, paragraph: int = bidi.LTR) -> float:
        """Return the width of a line in pixels, each run shaped in the face that has it."""
        return sum(
            fonts.face(source, style.size, style.weight).getlength(run, direction=direction)
            for source, run, direction in self.segments(text, paragraph)
        )

    def line(
        self,
        x: float,
        top: int,
        text: str,
        style: Style,
        colour: str | None = None,
        paragraph: int = bidi.LTR,
    ) -> None:
        """Draw one line from its left edge with its top at a height, runs on one baseline."""
        baseline = top + round(style.size * BASELINE)
        for source, run, direction in self.segments(text, paragraph):
            font = fonts.face(source, style.size, style.weight)
            self.draw.text(
                (x, baseline), run, font=font, fill=colour or style.colour, anchor="ls",
                direction=direction,
            )
            x += font.getlength(run, direction=direction)

    def start(self, width: float) -> float:
        """Return the left edge of something a width wide set at the start of a line."""
        return self.width - self.padding - width if self.rtl else self.padding

    def fits(self, text: str, style: Style, max_lines: int) -> bool:
        """Say whether a text fits in some lines of a style without being cut."""
        paragraph = bidi.base_level(text, self.language_level)
        width = self.width - 2 * self.padding
        measure = lambda part: self.measure(part, style, paragraph)  # noqa: E731
        return not wrap_or_cut(text, measure, width, max_lines)[1]

    def block(self, top: int, text: str, style: Style, max_lines: int) -> int:
        """Draw a wrapped, ellipsised paragraph in its own direction; return the height it took."""
        paragraph = bidi.base_level(text, self.language_level)
        width = self.width - 2 * self.padding
        lines = wrap(text, lambda part: self.measure(part, style, paragraph), width, max_lines)
        for number, text_line in enumerate(lines):
            x: float = self.padding
            if paragraph == bidi.RTL:  # a right-to-left paragraph is set flush right
                x = self.width - self.padding - self.measure(text_line, style, paragraph)
            self.line(x, top + number * style.line_height, text_line, style, paragraph=paragraph)
        return len(lines) * style.line_height

    def badge(self, text: str, style: Style) -> None:
        """Draw a pill with a short text in the bottom corner where lines start."""
        height = round(style.size * 1.8)
        width = round(self.measure(text, style) + style.size * 1.6)
        left, top = round(self.start(width)), self.height - self.padding - height
        box = (left, top, left + width, top + height)
        self.draw.rounded_rectangle(box, radius=height // 2, fill=self.theme.accent)
        text_top = top + (height - style.line_height) // 2
        self.line(left + style.size * 0.8, text_top, text, style, self.theme.accent_text)


def _lines_that_fit(room: int, style: Style) -> int:
    """Return how many lines of a style fit in a height, at most the style's maximum."""
    return max(0, min(style.max_lines, room // style.line_height))


def _title_style(canvas: Canvas, title: str, room: int) -> Style:
    """Return the largest title style in which the title fits the room uncut, else the least."""
    for size in TITLE_SIZES:
        style = Style(canvas.px(size), fonts.BOLD, canvas.theme.text, max_lines=3)
        if canvas.fits(title, style, _lines_that_fit(room, style) or 1):
            break
    return style


def draw_thumbnail(preview: RenderInput) -> Image.Image:
    """Draw the thumbnail of a preview."""
    canvas = Canvas(preview)
    theme, px = canvas.theme, canvas.px
    eyebrow = Style(px(22), fonts.BOLD, theme.accent)
    summary = Style(px(30), fonts.REGULAR, theme.muted, max_lines=3)
    badge = Style(px(24), fonts.BOLD, theme.accent_text)
    bar = max(3, round(12 * canvas.scale))
    bar_left = canvas.width - bar if canvas.rtl else 0
    canvas.draw.rectangle((bar_left, 0, bar_left + bar - 1, canvas.height), fill=theme.accent)
    canvas.badge(preview.steps_label, badge)
    bottom = canvas.height - canvas.padding - round(badge.size * 1.8) - px(24)
    top = canvas.padding
    if bottom - top >= eyebrow.line_height + px(TITLE_SIZES[-1]) * 2:
        eyebrow_text = "TUTORIAL PREVIEW"
        canvas.line(canvas.start(canvas.measure(eyebrow_text, eyebrow)), top, eyebrow_text, eyebrow)
        top += eyebrow.line_height + px(12)
    title = _title_style(canvas, preview.title, bottom - top)
    top += canvas.block(top, preview.title, title, _lines_that_fit(bottom - top, title) or 1)
    room = _lines_that_fit(bottom - top - px(16), summary)
    if preview.summary and room:
        canvas.block(top + px(16), preview.summary, summary, room)
    return canvas.image


def missing_glyphs(preview: RenderInput) -> list[str]:
    """Return the characters of the title and summary that no shipped font can draw."""
    return fonts.fallback_chain(preview.language).missing(preview.title + preview.summary)


def encode_png(image: Image.Image) -> bytes:
    """Return an image as PNG bytes, with no timestamp or other metadata."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **PNG_OPTIONS)
    return buffer.getvalue()


def render_thumbnail(preview: RenderInput) -> bytes:
    """Return the thumbnail of a preview as PNG bytes, the same bytes for the same preview."""
    # What the thumbnail shows: an edit of a step's body or code leaves it as it was.
    key = reuse.content_key(
        preview.title, preview.summary, preview.steps_label, preview.language,
        preview.theme, preview.width, preview.height,
    )
    return reuse.THUMBNAILS.remember(
        key, lambda: encode_png(draw_thumbnail(preview)), exact=lambda: True,
        render=limits.current().render,
    )
