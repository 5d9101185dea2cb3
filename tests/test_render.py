"""The renderer: a deterministic, safe HTML page and a legible PNG thumbnail from a payload."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from typing import Any
from urllib.parse import unquote

import pygments.lexers
import pytest
from fontTools.ttLib import TTFont  # type: ignore[import-untyped]
from PIL import Image, ImageChops, ImageDraw, ImageFont

from preview_worker.render import fonts, highlight, render_input, render_preview_files, reuse
from preview_worker.render.textlayout import ELLIPSIS, pieces, wrap
from preview_worker.render.theme import THEMES

from .conftest import load_payload

MINIMAL = "preview_payload_minimal.json"
FULL = "preview_payload_full.json"


class Page(HTMLParser):
    """An HTML document taken apart: every start tag with its attributes, and all text."""

    def __init__(self, document: str) -> None:
        """Parse a whole document."""
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(document)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Record a start tag."""
        self.tags.append((tag, {name: value or "" for name, value in attrs}))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Record a self-closing tag like any other."""
        self.handle_starttag(tag, attrs)

    def handle_data(self, data: str) -> None:
        """Record text, as a reader would see it."""
        self.text.append(data)

    def named(self, tag: str) -> list[dict[str, str]]:
        """Return the attributes of every element of a kind."""
        return [attrs for name, attrs in self.tags if name == tag]

    @property
    def visible_text(self) -> str:
        """Return the text of the document in one string."""
        return "".join(self.text)


def payload_with(**content: Any) -> dict[str, Any]:
    """Return the minimal payload with some content fields replaced."""
    payload = load_payload(MINIMAL)
    payload["content"].update(content)
    return payload


def page_of(payload: dict[str, Any]) -> str:
    """Render a payload's HTML page."""
    return render_preview_files(payload)["index.html"].decode("utf-8")


def thumbnail_of(payload: dict[str, Any]) -> Image.Image:
    """Render a payload's PNG thumbnail and decode it."""
    image = Image.open(io.BytesIO(render_preview_files(payload)["thumbnail.png"]))
    image.load()
    return image.convert("RGB")


def forget_caches() -> None:
    """Drop every cache of the renderer, as a new process would start."""
    fonts.clear_caches()
    highlight.lexer_for.cache_clear()
    highlight.token_css.cache_clear()
    reuse.clear_all()


# Determinism


@pytest.mark.parametrize("name", [MINIMAL, FULL])
def test_the_same_payload_renders_the_same_bytes_warm_and_cold(name: str) -> None:
    """Given a payload, when rendered twice, once with every cache dropped, the bytes match."""
    payload = load_payload(name)
    first = render_preview_files(payload)
    forget_caches()
    second = render_preview_files(copy.deepcopy(payload))
    assert set(first) == {"index.html", "thumbnail.png"}
    assert first == second


def test_the_same_payload_renders_the_same_bytes_in_another_process() -> None:
    """Given the full payload, another process with another hash seed renders the same bytes."""
    script = (
        "import hashlib, json, sys\n"
        "from preview_worker.render import render_preview_files\n"
        "files = render_preview_files(json.load(sys.stdin))\n"
        "print(json.dumps({n: hashlib.sha256(b).hexdigest() for n, b in files.items()}))\n"
    )
    payload = load_payload(FULL)
    child = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        timeout=120,
    )
    here = {
        name: hashlib.sha256(data).hexdigest()
        for name, data in render_preview_files(payload).items()
    }
    assert json.loads(child.stdout) == here


# Render input and formats


def test_defaults_are_applied_and_fields_that_change_nothing_are_left_out() -> None:
    """The minimal payload reads as the schema's defaults; ids and queue fields are ignored."""
    preview = render_input(load_payload(MINIMAL))
    assert (preview.language, preview.theme, preview.width, preview.height) == (
        "en",
        "light",
        1200,
        630,
    )
    assert preview.formats == ("html", "png")
    explicit = load_payload(MINIMAL) | {
        "tutorialId": "another",
        "revision": 9,
        "priority": "low",
        "dryRun": True,
        "output": {"formats": ["png", "html"], "theme": "light", "width": 1200, "height": 630},
    }
    explicit["content"]["language"] = "en"
    assert render_input(explicit).canonical() == preview.canonical()


def test_size_does_not_count_when_no_thumbnail_is_rendered() -> None:
    """Width and height shape only the PNG, so an HTML-only render input omits them."""
    small = payload_with() | {"output": {"formats": ["html"], "width": 300}}
    large = payload_with() | {"output": {"formats": ["html"], "width": 900}}
    assert render_input(small).canonical() == render_input(large).canonical()
    both = payload_with() | {"output": {"width": 300}}
    assert render_input(both).canonical() != render_input(payload_with()).canonical()


@pytest.mark.parametrize(
    ("formats", "names"),
    [
        (["html"], {"index.html"}),
        (["png"], {"thumbnail.png"}),
        (["png", "html"], {"index.html", "thumbnail.png"}),
    ],
)
def test_only_the_requested_formats_are_rendered(formats: list[str], names: set[str]) -> None:
    """Given output.formats, exactly those artifacts come out."""
    assert set(render_preview_files(payload_with() | {"output": {"formats": formats}})) == names


# The HTML page


def test_page_has_language_one_title_a_heading_per_step_and_contents() -> None:
    """The full payload's page: <html lang>, one <h1>, a numbered <h2> per step, a working TOC."""
    payload = load_payload(FULL)
    document = page_of(payload)
    page = Page(document)
    steps = payload["content"]["steps"]
    assert page.named("html") == [{"lang": "en-GB", "dir": "ltr"}]
    assert len(page.named("h1")) == 1
    step_ids = [attrs["id"] for attrs in page.named("section")]
    assert len(step_ids) == len(steps)
    anchors = [attrs["href"] for attrs in page.named("a") if attrs["href"].startswith("#")]
    assert anchors == [f"#{step_id}" for step_id in step_ids]
    headings = re.findall(r"<h2 id=\"step-\d+-title\">.*?</h2>", document)
    assert len(headings) == len(steps)
    assert all(step["title"].split(":")[0] in page.visible_text for step in steps)
    assert "7 steps" in page.visible_text


def test_page_is_responsive_self_contained_and_without_script() -> None:
    """The page sets a viewport and a max width, and loads nothing: no script, link or URL."""
    document = page_of(load_payload(FULL))
    page = Page(document)
    assert {"name": "viewport", "content": "width=device-width, initial-scale=1"} in page.named(
        "meta"
    )
    assert "max-width" in document
    csp = [attrs["content"] for attrs in page.named("meta") if attrs.get("http-equiv")]
    assert csp and "default-src 'none'" in csp[0]
    assert not page.named("script") and not page.named("link") and not page.named("iframe")
    assert len(page.named("style")) == 1
    assert "url(" not in document and "@import" not in document
    assert all(not attrs for tag, attrs in page.tags if tag == "style")
    sources = [attrs["src"] for tag, attrs in page.tags if "src" in attrs]
    assert all(source.startswith("data:image/") for source in sources)


def test_body_headings_sit_below_the_step_heading() -> None:
    """A '#' heading in a step body never makes a second <h1>."""
    page = Page(page_of(payload_with(steps=[{"title": "One", "body": "# Big\n\n## Less"}])))
    assert len(page.named("h1")) == 1
    assert len(page.named("h3")) == 1 and len(page.named("h4")) == 1


def test_code_is_highlighted_and_unknown_languages_are_plain_text() -> None:
    """Known languages get Pygments token classes; an unknown one is escaped plain text."""
    steps = [
        {"title": "Known", "code": {"language": "python", "source": "import os\n"}},
        {"title": "Unknown", "code": {"language": "no-such-language", "source": "a < b && c\n"}},
    ]
    document = page_of(payload_with(steps=steps))
    assert '<span class="kn">import</span>' in document
    assert "a &lt; b &amp;&amp; c" in document
    assert ".code .kn" in document  # the token styles are in the page's one style block


def test_lexers_are_looked_up_once_per_language(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rendering twice looks each language's lexer up once, not once per code block."""
    calls: list[str] = []
    real = pygments.lexers.get_lexer_by_name

    def counting(name: str, **options: Any) -> Any:
        calls.append(name)
        return real(name, **options)

    highlight.lexer_for.cache_clear()
    monkeypatch.setattr("preview_worker.render.highlight.get_lexer_by_name", counting)
    code = {"language": "python", "source": "x = 1\n"}
    steps = [{"title": f"Step {number}", "code": code} for number in range(5)]
    render_preview_files(payload_with(steps=steps))
    render_preview_files(payload_with(steps=steps, title="Another"))
    assert calls == ["python"]


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_theme_colours_the_page_and_the_thumbnail(theme: str) -> None:
    """output.theme sets the page's colours and the thumbnail's background."""
    payload = payload_with() | {"output": {"theme": theme}}
    colours = THEMES[theme]
    assert f"--bg:{colours.background}" in page_of(payload)
    image = thumbnail_of(payload)
    assert hex_colour(image.getpixel((image.width - 1, image.height - 1))) == colours.background


# Untrusted content

# Each attack in a step body, and the words of it that must stay readable on the page.
XSS = [
    ("<script>alert(1)</script>", "<script>alert(1)</script>"),
    ('<img src=x onerror="alert(1)">', '<img src=x onerror="alert(1)">'),
    ("[x](javascript:alert(1))", "javascript:alert(1)"),
    ("[x](JaVaScRiPt:alert(1))", "JaVaScRiPt:alert(1)"),
    ("[x](java\nscript:alert(1))", "script:alert(1)"),
    ("[x](java&#x09;script:alert(1))", "script:alert(1)"),
    ("[x](&#106;avascript:alert(1))", "avascript:alert(1)"),
    ("[x](javascript%3Aalert(1))", "x"),
    ("[x](<javascript:alert(1)>)", "javascript:alert(1)"),
    ("<javascript:alert(1)>", "<javascript:alert(1)>"),
    ("[x](vbscript:msgbox(1))", "vbscript:msgbox(1)"),
    ("[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)", "data:text/html"),
    ("![x](data:text/html,<script>alert(1)</script>)", "<script>alert(1)</script>"),
    ("![x](data:image/svg+xml,<svg onload=alert(1)>)", "<svg onload=alert(1)>"),
    ("[x][ref]\n\n[ref]: javascript:alert(1)", "[ref]: javascript:alert(1)"),
    ('<div onclick="alert(1)">raw block</div>', '<div onclick="alert(1)">raw block</div>'),
    ('<iframe src="https://evil.example"></iframe>', '<iframe src="https://evil.example">'),
    ("<a href='javascript:alert(1)'>raw link</a>", "<a href='javascript:alert(1)'>raw link</a>"),
    ('[x](https://example.org "t\\" onmouseover=\\"alert(1)")', "x"),
    ("```\n</code></pre><script>alert(1)</script>\n```", "</code></pre><script>alert(1)</script>"),
    ("```</code></pre><script>alert(1)</script>\nx = 1\n```", "</code></pre><script>alert(1)</s"),
    ('```python" onmouseover="alert(1)\nx = 1\n```', 'python"'),
    ("<style>body{background:url(https://evil.example/x)}</style>", "<style>body{background:"),
]
BAD_URL = re.compile(r"(javascript|vbscript|data:text|data:image/svg)")
IGNORED_IN_URLS = re.compile(r"[\x00-\x20\x7f-\x9f]+")


def assert_harmless(document: str) -> Page:
    """Fail if a page could run script: a script element, an event handler, a script URL."""
    page = Page(document)
    assert not page.named("script") and not page.named("iframe")
    assert len(page.named("style")) == 1
    for tag, attrs in page.tags:
        assert not [name for name in attrs if name.startswith("on")], (tag, attrs)
        for name in ("href", "src", "action", "formaction"):
            bare = IGNORED_IN_URLS.sub("", unquote(attrs.get(name, ""))).lower()
            assert not BAD_URL.match(bare), (tag, attrs)
    return page


@pytest.mark.parametrize(("attack", "shown"), XSS)
def test_markdown_cannot_inject_script_and_the_text_stays_visible(attack: str, shown: str) -> None:
    """Given an attack in a step body, the page runs nothing and shows the text escaped."""
    page = assert_harmless(page_of(payload_with(steps=[{"title": "Step", "body": attack}])))
    labels = [attrs["data-lang"] for tag, attrs in page.tags if "data-lang" in attrs]
    assert shown in page.visible_text + "".join(labels)


@pytest.mark.parametrize(("attack", "_shown"), XSS)
def test_plain_text_fields_cannot_inject_script(attack: str, _shown: str) -> None:
    """Given an attack in the title, summary, a step title or code, it shows as text."""
    steps = [{"title": attack, "code": {"language": "html", "source": attack}}]
    page = assert_harmless(page_of(payload_with(title=attack, summary=attack, steps=steps)))
    # The <title>, the <h1>, the summary, the contents, the step heading and the code.
    assert page.visible_text.count(attack) >= 5


def test_scriptless_links_and_data_images_survive() -> None:
    """Safe links keep their targets; a PNG data image shows; an external image becomes a link."""
    body = (
        "[site](https://example.org/a) [mail](mailto:a@example.org)\n"
        "[top](#step-1) [rel](docs/x)\n\n"
        "![dot](data:image/png;base64,iVBORw0KGgo=) ![far](https://example.org/i.png)"
    )
    page = Page(page_of(payload_with(steps=[{"title": "Links", "body": body}])))
    hrefs = [attrs["href"] for attrs in page.named("a")]
    for href in ("https://example.org/a", "mailto:a@example.org", "#step-1", "docs/x"):
        assert href in hrefs
    assert [attrs["src"] for attrs in page.named("img")] == ["data:image/png;base64,iVBORw0KGgo="]
    assert "https://example.org/i.png" in hrefs
    external = [attrs for attrs in page.named("a") if attrs["href"].startswith("https:")]
    assert all("noreferrer" in attrs["rel"] for attrs in external)


# The PNG thumbnail


@pytest.mark.parametrize(("width", "height"), [(1200, 630), (160, 90), (2400, 2400), (630, 1200)])
def test_thumbnail_decodes_at_the_requested_size(width: int, height: int) -> None:
    """Given output.width and height, the PNG decodes with exactly that size."""
    payload = load_payload(FULL)
    payload["output"] |= {"width": width, "height": height}
    data = render_preview_files(payload)["thumbnail.png"]
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.size == (width, height)


def test_thumbnail_carries_no_metadata() -> None:
    """The PNG holds pixels only: no time, text or physical-size chunk."""
    data = render_preview_files(load_payload(FULL))["thumbnail.png"]
    chunks, position = [], 8
    while position < len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        chunks.append(data[position + 4 : position + 8].decode("ascii"))
        position += length + 12
    assert set(chunks) <= {"IHDR", "PLTE", "IDAT", "IEND"}


def hex_colour(pixel: Any) -> str:
    """Return an RGB pixel as #rrggbb."""
    red, green, blue = pixel
    return f"#{red:02x}{green:02x}{blue:02x}"


def difference(first: Image.Image, second: Image.Image) -> int:
    """Return how many pixels of two images differ."""
    histogram = ImageChops.difference(first, second).convert("L").point(lambda v: 255 if v else 0)
    return histogram.histogram()[255]


def glyph(face: ImageFont.FreeTypeFont, char: str) -> bytes:
    """Return the pixels of one character drawn alone in a face."""
    image = Image.new("L", (80, 80))
    ImageDraw.Draw(image).text((10, 10), char, font=face, fill=255)
    return image.tobytes()


TITLES = {
    "latin": ("Queues for previews", "Ünïcödé accents: ąčęł ñ"),
    "cyrillic": ("Очереди для превью", "Українська: їжак, ґанок"),
    "greek": ("Ουρές για προεπισκόπηση", "Καλημέρα κόσμε, άέήίόύώ"),
    "cjk": ("日本語のチュートリアル", "中文教程：后台预览"),
}


@pytest.mark.parametrize("script", sorted(TITLES))
def test_titles_in_four_scripts_are_drawn_with_real_glyphs(script: str) -> None:
    """Titles in Latin, Cyrillic, Greek and CJK put ink where the title goes, not tofu."""
    first, second = TITLES[script]
    blank = thumbnail_of(payload_with(title=" "))
    drawn = [thumbnail_of(payload_with(title=title)) for title in (first, second)]
    assert all(difference(blank, image) > 2000 for image in drawn)
    assert difference(drawn[0], drawn[1]) > 2000
    chain = fonts.fallback_chain("en")
    for char in set(first + second) - {" "}:
        source = chain.source_of(char)
        assert source is not None, char
        face = fonts.face(source, 40, fonts.REGULAR)
        tofu = glyph(face, "\U0010fffd")  # a code point no font has: its .notdef box
        assert glyph(face, char) != tofu, char


def test_fonts_are_loaded_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second render loads no font file and reads no character map again."""
    loads: list[str] = []
    real_truetype, real_ttfont = ImageFont.truetype, TTFont

    def truetype(*args: Any, **options: Any) -> Any:
        loads.append("truetype")
        return real_truetype(*args, **options)

    def ttfont(*args: Any, **options: Any) -> Any:
        loads.append("cmap")
        return real_ttfont(*args, **options)

    monkeypatch.setattr(ImageFont, "truetype", truetype)
    monkeypatch.setattr("preview_worker.render.fonts.TTFont", ttfont)
    fonts.clear_caches()
    render_preview_files(payload_with(title="Cold 日本語", summary="A summary"))
    assert "truetype" in loads and "cmap" in loads
    loads.clear()
    render_preview_files(payload_with(title="Warm 中文", summary="Another summary"))
    assert loads == []


LONG_TEXTS = [
    "Supercalifragilisticexpialidocious" * 6,
    "word " * 60,
    "日本語のとても長いタイトル" * 15,
    "https://example.org/" + "a/very/long/path/" * 12,
]


def background_only(image: Image.Image, box: tuple[int, int, int, int], colour: str) -> bool:
    """Say whether a region of an image holds nothing but one colour."""
    region = image.crop(box)
    return region.getcolors(1) is not None and hex_colour(region.getpixel((0, 0))) == colour


@pytest.mark.parametrize("text", LONG_TEXTS)
@pytest.mark.parametrize(("width", "height"), [(1200, 630), (400, 300), (630, 1200)])
def test_long_text_wraps_inside_the_margins(text: str, width: int, height: int) -> None:
    """Given a title and summary far too long, nothing is drawn in the right margin."""
    payload = payload_with(title=text[:200], summary=text) | {
        "output": {"width": width, "height": height}
    }
    image = thumbnail_of(payload)
    margin = max(8, round(64 * min(width / 1200, height / 630)))
    assert background_only(
        image, (width - margin + 1, 0, width, height), THEMES["light"].background
    )


# Line breaking


def test_wrap_fits_lines_and_ellipsises_what_is_cut() -> None:
    """Lines stay within the width and the line count; cut text ends with an ellipsis."""
    lines = wrap("one two three four five six seven", len, 9, 2)
    assert lines == ["one two", "three" + ELLIPSIS]
    assert all(len(line) <= 9 for line in lines)
    assert wrap("short", len, 9, 2) == ["short"]
    assert wrap("x" * 25, len, 10, 5) == ["x" * 10, "x" * 10, "x" * 5]


def test_cjk_breaks_between_characters_but_not_before_closing_punctuation() -> None:
    """Japanese wraps without spaces, and never starts a line with 、 or 。"""
    assert pieces("日本語、です。") == ["日", "本", "語、", "で", "す。"]
    lines = wrap("日本語、です。日本語、です。", len, 4, 5)
    assert all(not line.startswith(("、", "。")) for line in lines)
    assert "".join(lines) == "日本語、です。日本語、です。"
