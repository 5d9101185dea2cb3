"""Code highlighting with Pygments: lexers found once per name, styles built once per theme."""

from __future__ import annotations

import functools
import html
import re

from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

CODE_CLASS = "code"  # the class of every <pre> holding code; token styles are scoped to it

# One formatter serves every theme: with classes, the colours live in the page's style block.
_FORMATTER = HtmlFormatter(nowrap=True)
_CSS_COMMENT = re.compile(r"\s*/\*.*?\*/")


@functools.lru_cache(maxsize=256)
def lexer_for(language: str) -> Lexer | None:
    """Return the lexer of a language name or alias, or None for plain text."""
    name = language.strip().lower()
    if not name:
        return None
    try:
        # stripnl=False keeps the code's leading blank lines, as its author wrote them.
        return get_lexer_by_name(name, stripnl=False)
    except ClassNotFound:
        return None


@functools.lru_cache(maxsize=8)
def token_css(style: str) -> str:
    """Return the CSS rules that colour highlighted tokens in a Pygments style."""
    formatter = HtmlFormatter(style=style)
    rules: list[str] = formatter.get_token_style_defs(f".{CODE_CLASS}")  # type: ignore[no-untyped-call]
    return "\n".join(_CSS_COMMENT.sub("", rule) for rule in rules)


def highlight_code(source: str, language: str) -> str:
    """Return a <pre> element with the source highlighted, or escaped when no lexer fits."""
    lexer = lexer_for(language)
    if lexer is None:
        body = html.escape(source, quote=False)
    else:
        body = highlight(source, lexer, _FORMATTER)
    name = language.strip()[:32]
    label = f' data-lang="{html.escape(name)}"' if name else ""
    return f'<pre class="{CODE_CLASS}"{label}><code>{body}</code></pre>\n'
