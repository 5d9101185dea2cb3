"""Step bodies: CommonMark with raw HTML shown as text and only safe link schemes kept."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from html import escape
from typing import Any
from urllib.parse import unquote

from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict

from preview_worker.render import limits, reuse
from preview_worker.render.highlight import highlight_code

LINK_SCHEMES = frozenset({"http", "https", "mailto"})
IMAGE_DATA = re.compile(r"data:image/(png|jpeg|gif|webp)[;,]")  # raster only: never SVG
_SCHEME = re.compile(r"([a-z][a-z0-9+.-]*):")
# Browsers drop tabs and newlines anywhere in a URL ("java\tscript:" is a scheme); dropping
# every blank and control character, after percent-decoding, is stricter still.
_IGNORED_IN_URLS = re.compile(r"[\x00-\x20\x7f-\x9f]+")
EXTERNAL_REL = "nofollow noopener noreferrer"
HEADING_SHIFT = 2  # the page has the title as <h1> and steps as <h2>: a body's "#" is <h3>
# Longer link targets are not links: a reference definition to a long URL, used thousands
# of times, would multiply the page. Inline data: images are bounded by the page cap alone.
MAX_LINK_LENGTH = 2048  # characters
_RENDERED = "rendered"  # env key: characters this body has rendered so far
# Blocks whose direction follows their own first strong letter (dir="auto"), so a Hebrew
# paragraph reads right to left on an English page and an English one left to right on it.
_OWN_DIRECTION = frozenset(
    {"paragraph_open", "heading_open", "list_item_open", "blockquote_open", "th_open", "td_open"}
)


def _bare(url: str) -> str:
    """Return a URL as a browser reads its scheme: decoded, without blanks, in lower case."""
    return _IGNORED_IN_URLS.sub("", unquote(url)).lower()


def is_safe_url(url: str) -> bool:
    """Say whether a link may point at a URL: http(s), mailto, relative, or a raster image."""
    bare = _bare(url)
    if len(url) > MAX_LINK_LENGTH and IMAGE_DATA.match(bare) is None:
        return False
    scheme = _SCHEME.match(bare)
    if scheme is None:
        return True  # a relative URL or an anchor: no scheme for a browser either
    return scheme.group(1) in LINK_SCHEMES or IMAGE_DATA.match(bare) is not None


def _is_inline_image(src: str) -> bool:
    """Say whether an image can be shown in place without a request: a data: raster image."""
    return IMAGE_DATA.match(_bare(src)) is not None


def _image(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    """Show a data: image in place; any other image becomes a link, so the page loads nothing."""
    token = tokens[idx]
    src = str(token.attrGet("src") or "")
    alt = self.renderInlineAsText(token.children or [], options, env)
    title = token.attrGet("title")
    title_attr = f' title="{escape(str(title))}"' if title else ""
    if _is_inline_image(src):
        return f'<img src="{escape(src)}" alt="{escape(alt)}"{title_attr}>'
    return f'<a href="{escape(src)}" rel="{EXTERNAL_REL}"{title_attr}>{escape(alt or src)}</a>'


def _link_open(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    """Open a link, marking links that leave the page so they pass on no referrer."""
    token = tokens[idx]
    href = _bare(str(token.attrGet("href") or ""))
    if href.startswith(("http:", "https:", "//")):
        token.attrSet("rel", EXTERNAL_REL)
    return self.renderToken(tokens, idx, options, env)


class BudgetedRenderer(RendererHTML):
    """markdown-it's HTML renderer, checking the render's budget after every token."""

    def render(self, tokens: Sequence[Token], options: OptionsDict, env: EnvType) -> str:
        """Render block tokens, counting each part against the page's cap as it is made."""
        out: list[str] = []
        for index, token in enumerate(tokens):
            if token.type == "inline":  # counted part by part in renderInline
                out.append(self.renderInline(token.children or [], options, env))
                continue
            rule = self.rules.get(token.type)
            part = rule(tokens, index, options, env) if rule else self.renderToken(
                tokens, index, options, env
            )
            out.append(_counted(part, env))
        return "".join(out)

    def renderInline(self, tokens: Sequence[Token], options: OptionsDict, env: EnvType) -> str:
        """Render inline tokens, counting each against the page's cap as it is made."""
        out: list[str] = []
        for index, token in enumerate(tokens):
            rule = self.rules.get(token.type)
            part = rule(tokens, index, options, env) if rule else self.renderToken(
                tokens, index, options, env
            )
            out.append(_counted(part, env))
        return "".join(out)


def _counted(part: str, env: EnvType) -> str:
    """Add a rendered part to the body's count; raise once the page or the clock runs out."""
    env[_RENDERED] = env.get(_RENDERED, 0) + len(part)
    budget = limits.current()
    budget.check_size(env[_RENDERED])
    budget.check()
    return part


def _highlight(source: str, language: str, _attrs: str) -> str:
    """Highlight a fenced code block of a step's body."""
    return highlight_code(source, language)


@functools.lru_cache(maxsize=1)
def markdown_parser() -> MarkdownIt:
    """Return the configured Markdown parser, built once per process."""
    options: dict[str, Any] = {"html": False, "highlight": _highlight}
    parser = MarkdownIt("commonmark", options, renderer_cls=BudgetedRenderer)
    parser.enable(["table", "strikethrough"])
    parser.validateLink = is_safe_url  # type: ignore[method-assign]
    parser.add_render_rule("image", _image)
    parser.add_render_rule("link_open", _link_open)
    return parser


def render_markdown(text: str) -> str:
    """Return the HTML of a step's Markdown body, from an earlier render when there is one."""
    budget = limits.current()
    plain_before = budget.plain_blocks
    return reuse.MARKDOWN.remember(
        reuse.content_key(text),
        lambda: _rendered_markdown(text),
        exact=lambda: budget.plain_blocks == plain_before,
        render=budget.render,
    )


def _rendered_markdown(text: str) -> str:
    """Return the HTML of a step's Markdown body, its headings placed below the step's."""
    parser = markdown_parser()
    tokens = parser.parse(text)
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(int(token.tag[1]) + HEADING_SHIFT, 6)}"
        if token.type in _OWN_DIRECTION:
            token.attrSet("dir", "auto")
    return str(parser.renderer.render(tokens, parser.options, {}))
