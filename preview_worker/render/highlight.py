"""Code highlighting with Pygments: allowed lexers only, each block on a time budget."""

from __future__ import annotations

import functools
import html
import io
import re
import time
from collections.abc import Iterable, Iterator

from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name
from pygments.token import _TokenType

from preview_worker.render import limits, reuse

CODE_CLASS = "code"  # the class of every <pre> holding code; token styles are scoped to it

# The languages of tutorials that are highlighted; any other name is shown as plain text.
# Each was lexed against hostile inputs (tests/test_render.py, bench/lexers.py): none holds
# a single token for long, so the per-block budget can always cut in. Lexers that do
# (ini on a run of colons, matlab on blank lines) or loop for ever (mcschema) stay out.
ALLOWED_LANGUAGES = frozenset({
    "bash", "sh", "shell", "zsh", "console", "shell-session", "powershell", "ps1", "pwsh",
    "c", "cpp", "c++", "csharp", "c#", "cs", "java", "kotlin", "scala", "go", "golang",
    "rust", "rs", "swift", "objective-c", "objc", "dart", "python", "py", "python3",
    "javascript", "js", "typescript", "ts", "jsx", "tsx", "ruby", "rb", "php", "perl",
    "lua", "r", "haskell", "hs", "elixir", "julia", "sql", "graphql", "html", "xml",
    "css", "scss", "json", "yaml", "yml", "toml", "markdown", "md", "dockerfile",
    "docker", "make", "makefile", "nginx", "protobuf", "proto", "diff",
})
TOKENS_PER_CHECK = 16  # tokens between two looks at the clock

# One formatter serves every theme: with classes, the colours live in the page's style block.
_FORMATTER = HtmlFormatter(nowrap=True)
_CSS_COMMENT = re.compile(r"\s*/\*.*?\*/")


class _TooSlowToHighlight(Exception):
    """A block took longer than its highlighting budget."""


@functools.lru_cache(maxsize=256)
def lexer_for(language: str) -> Lexer | None:
    """Return the lexer of an allowed language name or alias, or None for plain text."""
    name = language.strip().lower()
    if name not in ALLOWED_LANGUAGES:
        return None
    # stripnl=False keeps the code's leading blank lines, as its author wrote them.
    return get_lexer_by_name(name, stripnl=False)


@functools.lru_cache(maxsize=8)
def token_css(style: str) -> str:
    """Return the CSS rules that colour highlighted tokens in a Pygments style."""
    formatter = HtmlFormatter(style=style)
    rules: list[str] = formatter.get_token_style_defs(f".{CODE_CLASS}")  # type: ignore[no-untyped-call]
    return "\n".join(_CSS_COMMENT.sub("", rule) for rule in rules)


def _timed(
    tokens: Iterable[tuple[_TokenType, str]], budget: limits.Budget
) -> Iterator[tuple[_TokenType, str]]:
    """Pass tokens on until the block's budget is spent; the render's budget is checked too."""
    seconds = min(budget.limits.highlight_seconds, budget.highlighting_left)
    give_up = time.monotonic() + seconds
    for count, token in enumerate(tokens):
        if count % TOKENS_PER_CHECK == 0:
            budget.check()
            if time.monotonic() > give_up:
                raise _TooSlowToHighlight
        yield token


def _highlighted(source: str, lexer: Lexer) -> str:
    """Return the source highlighted, or escaped when highlighting it takes too long."""
    budget = limits.current()
    if budget.highlighting_left <= 0:
        budget.plain_blocks += 1
        return html.escape(source, quote=False)  # this render spent its highlighting time
    output = io.StringIO()
    started = time.monotonic()
    try:
        _FORMATTER.format(_timed(lexer.get_tokens(source), budget), output)
    except _TooSlowToHighlight:
        budget.plain_blocks += 1
        return html.escape(source, quote=False)
    finally:
        budget.highlighting_left -= time.monotonic() - started
    return output.getvalue()


def _reused_highlight(source: str, language: str, lexer: Lexer) -> str:
    """Return the source highlighted, from an earlier render of the same code when there is one."""
    budget = limits.current()
    plain_before = budget.plain_blocks
    return reuse.CODE.remember(
        reuse.content_key(language.strip().lower(), source),
        lambda: _highlighted(source, lexer),
        exact=lambda: budget.plain_blocks == plain_before,
        render=budget.render,
    )


def highlight_code(source: str, language: str) -> str:
    """Return a <pre> element with the source highlighted, or escaped when no lexer fits."""
    lexer = lexer_for(language)
    body = (
        html.escape(source, quote=False) if lexer is None
        else _reused_highlight(source, language, lexer)
    )
    name = language.strip()[:32]
    label = f' data-lang="{html.escape(name)}"' if name else ""
    # Code reads left to right on every page, a right-to-left one too.
    return f'<pre class="{CODE_CLASS}" dir="ltr"{label}><code>{body}</code></pre>\n'
