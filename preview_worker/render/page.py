"""The HTML preview page: self-contained, no script, nothing fetched from anywhere."""

from __future__ import annotations

import functools
from html import escape

from preview_worker.render import bidi, limits
from preview_worker.render.highlight import CODE_CLASS, highlight_code, token_css
from preview_worker.render.markdown import render_markdown
from preview_worker.render.model import RenderInput, Step
from preview_worker.render.theme import Theme, theme_named

# The page may use its own inline styles and data: images, and nothing else at all.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'none'"
)

_LAYOUT_CSS = """\
*,*::before,*::after{box-sizing:border-box}
html{-webkit-text-size-adjust:100%;text-size-adjust:100%}
body{margin:0;background:var(--bg);color:var(--text);font:1rem/1.6 system-ui,-apple-system,
"Segoe UI",Roboto,"Noto Sans","Helvetica Neue",Arial,"Noto Sans CJK JP","Hiragino Sans",
"Microsoft YaHei",sans-serif;overflow-wrap:break-word}
main{max-width:48rem;margin:0 auto;padding:2rem 1.25rem 4rem}
header{border-bottom:1px solid var(--border);padding-bottom:1.25rem;margin-bottom:1.5rem}
.eyebrow{margin:0;color:var(--accent);font-size:.8125rem;font-weight:600;letter-spacing:.06em;
text-transform:uppercase}
h1{font-size:clamp(1.75rem,5vw,2.5rem);line-height:1.2;margin:.5rem 0 .75rem}
h2{font-size:1.5rem;line-height:1.3;margin:0 0 .75rem}
h3,h4,h5,h6{line-height:1.3;margin:1.5rem 0 .5rem}
.summary{color:var(--muted);font-size:1.125rem;margin:0}
a{color:var(--accent);text-underline-offset:.15em}
nav{background:var(--surface);border:1px solid var(--border);border-radius:.5rem;
padding:1rem 1.25rem;margin-bottom:2rem}
nav h2{font-size:1rem;margin:0 0 .5rem}
nav ol{margin:0;padding-inline-start:1.5rem}
nav li{margin:.25rem 0}
.step{margin:0 0 2.5rem;scroll-margin-top:1rem}
.step>h2{display:flex;gap:.75rem;align-items:baseline}
.number{flex:none;display:inline-grid;place-items:center;min-width:2rem;height:2rem;
padding:0 .5rem;border-radius:1rem;background:var(--accent);color:var(--on-accent);
font-size:1rem}
code{font:.875em/1.5 ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",
"Noto Sans Mono",monospace;background:var(--surface);border-radius:.25rem;padding:.1em .3em}
pre.CODE_CLASS{position:relative;overflow-x:auto;background:var(--surface);
border:1px solid var(--border);border-radius:.5rem;padding:1rem;margin:1rem 0;
tab-size:4}
pre.CODE_CLASS code{background:none;padding:0;font-size:.875rem;white-space:pre}
pre.CODE_CLASS[data-lang]{padding-top:2rem}
pre.CODE_CLASS[data-lang]::before{content:attr(data-lang);position:absolute;top:.5rem;
right:.75rem;color:var(--muted);font:600 .75rem/1 system-ui,sans-serif;
text-transform:uppercase;letter-spacing:.05em}
table{display:block;overflow-x:auto;border-collapse:collapse;margin:1rem 0}
th,td{border:1px solid var(--border);padding:.4rem .75rem;text-align:start}
th{background:var(--surface)}
blockquote{margin:1rem 0;padding:.25rem 1rem;border-inline-start:.25rem solid var(--border);
color:var(--muted)}
img{max-width:100%;height:auto}
@media (max-width:30rem){main{padding:1.25rem 1rem 3rem}h2{font-size:1.25rem}}
""".replace("CODE_CLASS", CODE_CLASS)


@functools.lru_cache(maxsize=4)
def page_css(theme: Theme) -> str:
    """Return the page's whole style sheet for a theme, built once per theme."""
    variables = (
        f":root{{color-scheme:{theme.name};--bg:{theme.background};--surface:{theme.surface};"
        f"--text:{theme.text};--muted:{theme.muted};--accent:{theme.accent};"
        f"--on-accent:{theme.accent_text};--border:{theme.border}}}\n"
    )
    return variables + _LAYOUT_CSS + token_css(theme.pygments_style) + "\n"


def _contents(steps: tuple[Step, ...]) -> str:
    """Return the table of contents: one link per step."""
    items = "".join(
        f'<li dir="auto"><a href="#step-{number}">{escape(step.title)}</a></li>\n'
        for number, step in enumerate(steps, start=1)
    )
    return (
        '<nav aria-labelledby="contents">\n<h2 id="contents">Contents</h2>\n'
        f"<ol>\n{items}</ol>\n</nav>\n"
    )


def _step(number: int, step: Step) -> str:
    """Return one step: its numbered heading, its body and its code."""
    body = render_markdown(step.body) if step.body else ""
    code = highlight_code(step.code.source, step.code.language) if step.code else ""
    return (
        f'<section class="step" id="step-{number}" aria-labelledby="step-{number}-title">\n'
        f'<h2 id="step-{number}-title"><span class="number">{number}</span>'
        f'<span dir="auto">{escape(step.title)}</span></h2>\n{body}{code}</section>\n'
    )


def _header(preview: RenderInput) -> str:
    """Return the page's header: the title, the summary and the number of steps."""
    summary = (
        f'<p class="summary" dir="auto">{escape(preview.summary)}</p>\n' if preview.summary else ""
    )
    return (
        f'<header>\n<p class="eyebrow">Tutorial preview · {preview.steps_label}</p>\n'
        f'<h1 dir="auto">{escape(preview.title)}</h1>\n{summary}</header>\n'
    )


def render_page(preview: RenderInput) -> str:
    """Return the preview page of a tutorial as one HTML document, within the render's budget."""
    budget = limits.current()
    direction = "rtl" if bidi.language_level(preview.language) == bidi.RTL else "ltr"
    steps = "".join(
        budget.spend(_step(number, step)) for number, step in enumerate(preview.steps, start=1)
    )
    return (
        f'<!DOCTYPE html>\n<html lang="{escape(preview.language)}" dir="{direction}">\n<head>\n'
        '<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{escape(preview.title)}</title>\n"
        f"<style>\n{page_css(theme_named(preview.theme))}</style>\n</head>\n<body>\n<main>\n"
        f"{_header(preview)}{_contents(preview.steps)}{steps}</main>\n</body>\n</html>\n"
    )
