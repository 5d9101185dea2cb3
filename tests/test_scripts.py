"""Every script the shipped fonts cover, in thumbnails read back by OCR, and text direction.

Tesseract (Debian's tesseract-ocr with its language packs, installed by .ci/run) reads each
thumbnail; without it the OCR tests skip. The direction rules are held to python-bidi,
whose Rust core implements the whole Unicode Bidirectional Algorithm.
"""

from __future__ import annotations

import difflib
import io
import shutil
import subprocess
import unicodedata
from pathlib import Path

import pytest
from bidi import get_display  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from preview_worker.previews import store_preview
from preview_worker.render import bidi, fonts, render_preview_files
from preview_worker.render.textlayout import wrap
from preview_worker.store import FileStore

from .conftest import load_payload

TESSERACT = shutil.which("tesseract")
needs_ocr = pytest.mark.skipif(
    TESSERACT is None, reason="no tesseract (apt-get install tesseract-ocr tesseract-ocr-ara ...)"
)

# A title in each script, the content language, and Tesseract's model for it.
SCRIPTS = {
    "latin": ("Background previews for queues", "en", "eng"),
    "cyrillic": ("Очереди для фоновых превью", "ru", "rus"),
    "greek": ("Ουρές για προεπισκόπηση", "el", "ell"),
    "arabic": ("مقدمة إلى الطوابير في بايثون", "ar", "ara"),
    "hebrew": ("מבוא לתורים בפייתון", "he", "heb"),
    "devanagari": ("पायथन में कतारों का परिचय", "hi", "hin"),
    "thai": ("การแนะนำคิวในภาษาไพธอน", "th", "tha"),
    "chinese": ("后台预览的中文教程", "zh-Hans", "chi_sim"),
    "japanese": ("日本語のチュートリアル", "ja", "jpn"),
}


def thumbnail(title: str, language: str, summary: str = "") -> Image.Image:
    """Render only the thumbnail of a tutorial with a title in a language."""
    payload = load_payload("preview_payload_minimal.json")
    payload["content"] |= {"title": title, "summary": summary, "language": language}
    payload["output"] = {"formats": ["png"]}
    return Image.open(io.BytesIO(render_preview_files(payload)["thumbnail.png"]))


def read_back(image: Image.Image, models: str) -> list[str]:
    """Return the lines Tesseract reads in an image."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    assert TESSERACT is not None
    result = subprocess.run(
        # One uniform block of text: the default page analysis misses the Japanese title.
        [TESSERACT, "stdin", "stdout", "-l", models, "--psm", "6"],
        input=buffer.getvalue(), capture_output=True, timeout=60, check=True,
    )
    return [line for line in result.stdout.decode("utf-8").splitlines() if line.strip()]


def comparable(text: str) -> str:
    """Return text as OCR is compared: compatibility forms folded, no spaces or marks of order."""
    folded = unicodedata.normalize("NFKC", text)
    return "".join(char for char in folded if not char.isspace() and char not in "\u200e\u200f")


def likeness(expected: str, lines: list[str]) -> float:
    """Return how closely the best line read matches a text, from 0 (nothing) to 1 (exact)."""
    return max(
        (difflib.SequenceMatcher(None, comparable(expected), comparable(line)).ratio()
         for line in lines),
        default=0.0,
    )


@needs_ocr
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_ocr_reads_back_a_title_in_every_script(script: str) -> None:
    """The title drawn in each script is read back by Tesseract: shaped, ordered, not blank."""
    title, language, model = SCRIPTS[script]
    lines = read_back(thumbnail(title, language), model)
    # Thai and Devanagari come back with a character or two read as a look-alike.
    assert likeness(title, lines) >= 0.85, (title, lines)


@needs_ocr
def test_ocr_reads_a_title_mixing_arabic_latin_and_digits_in_order() -> None:
    """An Arabic title holding an English word and numbers keeps each part in its place."""
    title = "تعلم Python 3 في 10 دقائق"
    lines = read_back(thumbnail(title, "ar"), "ara+eng")
    assert likeness(title, lines) >= 0.9, lines


def ink_columns(image: Image.Image, top: int, bottom: int) -> tuple[int, int]:
    """Return the first and last columns, between two rows, holding dark (text) pixels."""
    band = image.crop((0, top, image.width - 20, bottom)).convert("L")  # not the accent bar
    box = band.point(lambda value: 255 if value < 128 else 0).getbbox()
    assert box is not None, "nothing was drawn"
    return box[0], box[2]


@pytest.mark.parametrize(("title", "language"), [("מבוא קצר", "he"), ("مقدمة قصيرة", "ar")])
def test_a_right_to_left_title_is_set_flush_right(title: str, language: str) -> None:
    """A short Hebrew or Arabic title ends at the right margin, far from the left one."""
    image = thumbnail(title, language)
    left, right = ink_columns(image, 120, 200)  # the first line of the title, at 1200 x 630
    padding = 64
    assert image.width - padding - 3 <= right <= image.width - padding + 1
    assert left > image.width // 2
    english_left, _ = ink_columns(thumbnail("A short title", "en"), 120, 200)
    assert english_left <= padding + 6


def test_a_character_no_font_has_is_a_visible_box_and_a_warning(data_dir: Path) -> None:
    """A private-use character is drawn as an empty box, and the job's result says so."""
    with_box = thumbnail("Queue \ue000 works", "en")
    without = thumbnail("Queue  works", "en")
    assert with_box.tobytes() != without.tobytes()
    payload = load_payload("preview_payload_minimal.json")
    payload["content"]["title"] = "Queue \ue000 works \U000f0001"
    stored = store_preview(FileStore(data_dir), payload).as_dict()
    assert stored["warnings"] == [
        "the thumbnail has no font for U+E000, U+F0001: drawn as empty boxes"
    ]
    again = store_preview(FileStore(data_dir), payload).as_dict()  # read from the manifest
    assert again["cached"] is True and again["warnings"] == stored["warnings"]
    payload["content"]["title"] = "Queue works"
    assert store_preview(FileStore(data_dir), payload).as_dict()["warnings"] == []


def test_each_script_is_drawn_in_its_own_shipped_face() -> None:
    """Every letter of the titles above has a face in the chain: none is left to a box."""
    for title, language, _ in SCRIPTS.values():
        chain = fonts.fallback_chain(language)
        assert chain.missing(title) == [], title
        faces = {source.filename for source, _ in chain.runs(title)}
        assert len(faces) == 1, (title, faces)  # spaces stay in the face of their words


def test_a_long_word_is_broken_between_clusters_not_inside_one() -> None:
    """A Thai or Hindi word too long for a line never starts a line with a combining mark."""
    for word in ("การแนะนำคิวในภาษาไพธอน" * 3, "परिचयकतारोंपायथन" * 3):
        lines = wrap(word, len, 7, 20)
        assert "".join(lines) == word
        assert all(not unicodedata.category(line[0]).startswith("M") for line in lines), lines


# Text direction


@pytest.mark.parametrize(
    ("language", "level"),
    [("ar", 1), ("he-IL", 1), ("fa", 1), ("ur", 1), ("yi", 1), ("en", 0), ("hi", 0),
     ("az-Arab", 1), ("ku-Latn", 0), ("ku", 1), ("sr-Cyrl", 0), ("zh-Hant", 0)],
)
def test_the_language_tag_gives_the_paragraph_direction(language: str, level: int) -> None:
    """Arabic, Hebrew, Persian... read right to left; a script subtag decides when given."""
    assert bidi.language_level(language) == level


# Letters of both directions, European and Arabic digits, and neutrals that are not mirrored
# (brackets are paired by rule N0, which a title has no need of).
BIDI_TEXT = st.text(alphabet="abc XYZ אבג مرح 019 ٣٤ .,:;-+%$#!?'/", max_size=24)


@settings(max_examples=400, deadline=None)
@given(text=BIDI_TEXT, paragraph=st.sampled_from([bidi.LTR, bidi.RTL]))
def test_visual_order_matches_the_reference_algorithm(text: str, paragraph: int) -> None:
    """Our levels and reordering show every text as python-bidi's full algorithm does."""
    order = bidi.visual_order(bidi.levels(text, paragraph))
    shown = "".join(text[index] for index in order)
    assert shown == get_display(text, base_dir="LR"[paragraph])


def test_a_paragraph_takes_the_direction_of_its_first_letter() -> None:
    """Digits and punctuation do not decide; with no letter at all, the language does."""
    assert bidi.base_level("123 שלום abc") == bidi.RTL
    assert bidi.base_level("- abc שלום") == bidi.LTR
    assert bidi.base_level("123 !", default=bidi.RTL) == bidi.RTL
