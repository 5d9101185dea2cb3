"""Pages in a real headless Chromium: the rendered preview page and rq-dashboard behind auth.

They drive Debian's chromium (/usr/bin/chromium) through Playwright for Python; Playwright's
own browser downloads are never used. Without either, the whole module skips.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])"
)

from playwright.sync_api import (  # noqa: E402
    Browser,
    ConsoleMessage,
    Error,
    Page,
    Playwright,
    Request,
    expect,
    sync_playwright,
)

from preview_worker import queueing  # noqa: E402
from preview_worker.connections import connect
from preview_worker.render import render_preview_files  # noqa: E402
from preview_worker.settings import load_settings  # noqa: E402

from .conftest import load_payload, payload, service_environment  # noqa: E402
from .processes import serving  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
# Headless with no sandbox (we may run as root), and none of Chromium's own calls home:
# this machine's network is closed, and a test page must be the only thing it loads.
# Playwright gives every launch a new empty --user-data-dir of its own (it refuses one in args).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000
TOKEN = "browser-token-0123456789"
FULL = "preview_payload_full.json"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"
)


@dataclass
class Watched:
    """A page with everything it logged as an error and every request it made."""

    page: Page
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


def watch(page: Page) -> Watched:
    """Record a page's console errors, uncaught exceptions and requests from now on."""
    watched = Watched(page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            watched.errors.append(f"console: {message.text} ({message.location})")

    def on_page_error(error: Error) -> None:
        watched.errors.append(f"uncaught: {error}")

    def on_request(request: Request) -> None:
        watched.requests.append(request.url)

    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    page.on("request", on_request)
    page.set_default_timeout(TIMEOUT_MS)
    return watched


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Give the system Chromium, launched headless once for the module and closed after it."""
    driver: Playwright = sync_playwright().start()
    try:
        launched = driver.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS, timeout=30_000
        )
        try:
            yield launched
        finally:
            launched.close()
    finally:
        driver.stop()


class _PreviewHandler(BaseHTTPRequestHandler):
    """Serve the one preview page at /index.html, 404 for anything else, logging every path."""

    page = b""
    paths: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.paths.append(self.path)
        found = self.path == "/index.html"
        body = self.page if found else b"not found"
        self.send_response(200 if found else 404)
        content_type = "text/html; charset=utf-8" if found else "text/plain"
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


@dataclass
class PreviewSite:
    """The URL of the served preview page, and every path the server was asked for."""

    url: str
    paths: list[str]


@contextmanager
def serving_page(page: bytes) -> Iterator[PreviewSite]:
    """Serve one rendered page at /index.html on 127.0.0.1, as an artifact is served."""

    class Handler(_PreviewHandler):
        pass

    Handler.page, Handler.paths = page, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield PreviewSite(f"http://127.0.0.1:{server.server_port}/index.html", Handler.paths)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def preview_site() -> Iterator[PreviewSite]:
    """Serve the page rendered from the full payload."""
    with serving_page(render_preview_files(load_payload(FULL))["index.html"]) as site:
        yield site


@pytest.fixture
def preview_page(browser: Browser, preview_site: PreviewSite) -> Iterator[Watched]:
    """Give the preview page opened in a fresh browser context, with its errors and requests."""
    context = browser.new_context()
    watched = watch(context.new_page())
    response = watched.page.goto(preview_site.url, wait_until="load")
    assert response is not None and response.status == 200
    yield watched
    context.close()


def test_preview_page_shows_its_title_and_every_step(preview_page: Watched) -> None:
    """The page shows the payload's title as its one h1 and one visible heading per step."""
    content = load_payload(FULL)["content"]
    page = preview_page.page
    expect(page.locator("h1")).to_have_count(1)
    expect(page.locator("h1")).to_be_visible()
    expect(page.locator("h1")).to_have_text(content["title"])
    assert page.title() == content["title"]
    headings = page.locator("section.step > h2")
    expect(headings).to_have_count(len(content["steps"]))
    for number, step in enumerate(content["steps"], start=1):
        heading = headings.nth(number - 1)
        expect(heading).to_be_visible()
        expect(heading.locator("span.number")).to_have_text(str(number))
        expect(heading.locator("span:not(.number)")).to_have_text(step["title"])


def test_preview_page_highlights_its_code(preview_page: Watched) -> None:
    """Every code block with a language holds Pygments token spans the page's styles colour."""
    steps = load_payload(FULL)["content"]["steps"]
    blocks: list[dict[str, Any]] = preview_page.page.eval_on_selector_all(
        "section.step > pre.code[data-lang]",
        """blocks => blocks.map(block => {
            const code = block.querySelector("code");
            const plain = getComputedStyle(code).color;
            const colours = [...code.querySelectorAll("span[class]")]
                .map(span => getComputedStyle(span).color);
            return {
                lang: block.dataset.lang,
                visible: block.getBoundingClientRect().height > 0,
                spans: colours.length,
                coloured: [...new Set(colours.filter(colour => colour !== plain))],
            };
        })""",
    )
    assert [block["lang"] for block in blocks] == [
        step["code"]["language"] for step in steps if "code" in step
    ]
    for block in blocks:
        assert block["visible"], block
        # Pygments' token classes (k, s2, nf, w, ...), drawn in a colour of their own; the
        # bash lexer marks little but whitespace in plain commands, so one colour may be all.
        assert block["spans"] >= 5 and block["coloured"], block
    every_colour = {colour for block in blocks for colour in block["coloured"]}
    assert len(every_colour) >= 5, every_colour


def test_preview_page_has_no_console_errors(preview_page: Watched) -> None:
    """Loading the page logs no console error and throws no uncaught exception."""
    preview_page.page.wait_for_load_state("networkidle")
    assert preview_page.errors == []


def test_preview_page_requests_nothing_but_itself(
    preview_page: Watched, preview_site: PreviewSite
) -> None:
    """The page loads no font, style, image or script: its only request is its own URL."""
    preview_page.page.wait_for_load_state("networkidle")
    outside = [
        url for url in preview_page.requests
        if url != preview_site.url and not url.startswith("data:")
    ]
    assert outside == []
    assert preview_site.url in preview_page.requests
    assert set(preview_site.paths) == {"/index.html"}


def test_preview_page_fits_a_phone_screen(browser: Browser, preview_site: PreviewSite) -> None:
    """At a phone's 390 px width the page scrolls only downwards; wide code scrolls in its box."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    try:
        watched = watch(context.new_page())
        watched.page.goto(preview_site.url, wait_until="load")
        width = watched.page.evaluate("document.scrollingElement.scrollWidth")
        assert width <= 390
        assert watched.errors == []
    finally:
        context.close()


RTL_CONTENT = {
    "title": "مقدمة إلى الطوابير",
    "summary": "ملخص قصير للدرس",
    "language": "ar",
    "steps": [
        {
            "title": "تثبيت الأدوات",
            "body": "فقرة بالعربية.\n\nAn English paragraph on an Arabic page.",
            "code": {"source": "print('hello')", "language": "python"},
        }
    ],
}


def test_a_right_to_left_page_reads_right_to_left(browser: Browser) -> None:
    """An Arabic page is RTL and its title flush right; English and code stay left to right."""
    payload = {"tutorialId": "rtl", "content": RTL_CONTENT}
    with serving_page(render_preview_files(payload)["index.html"]) as site:
        context = browser.new_context()
        try:
            watched = watch(context.new_page())
            watched.page.goto(site.url, wait_until="load")
            layout: dict[str, Any] = watched.page.evaluate(
                """() => {
                    const box = element => element.getBoundingClientRect();
                    const text = element => {
                        const range = document.createRange();
                        range.selectNodeContents(element);
                        return range.getBoundingClientRect();
                    };
                    const direction = element => getComputedStyle(element).direction;
                    const h1 = document.querySelector("h1");
                    const english = [...document.querySelectorAll("section p")]
                        .find(p => p.textContent.startsWith("An English"));
                    const code = document.querySelector("pre.code");
                    return {
                        page: direction(document.documentElement),
                        title: direction(h1),
                        titleGapRight: box(h1).right - text(h1).right,
                        titleGapLeft: text(h1).left - box(h1).left,
                        english: direction(english),
                        englishGapLeft: text(english).left - box(english).left,
                        code: direction(code),
                    };
                }"""
            )
            assert watched.errors == []
        finally:
            context.close()
    assert layout["page"] == layout["title"] == "rtl", layout
    assert abs(layout["titleGapRight"]) <= 1 and layout["titleGapLeft"] > 100, layout
    assert layout["english"] == "ltr" and abs(layout["englishGapLeft"]) <= 1, layout
    assert layout["code"] == "ltr", layout


@pytest.fixture
def dashboard(redis_url: str, redis_client: redis.Redis, data_dir: Path) -> Iterator[str]:
    """Give the base URL of `preview-worker serve` with a token, its three queues registered."""
    environment = service_environment(redis_url, data_dir, PREVIEW_API_TOKENS=TOKEN)
    settings = load_settings(environment)
    connection = connect(redis_url)
    try:
        # RQ registers a queue on its first job: one job per priority makes all three exist.
        for priority in ("high", "normal", "low"):
            queueing.submit(
                connection, settings, payload(priority=priority, tutorialId=f"browser-{priority}")
            )
    finally:
        connection.close()
    with serving(environment, workers=1) as base:
        yield base


def test_dashboard_refuses_a_browser_without_the_token(browser: Browser, dashboard: str) -> None:
    """Opening /rq/ without the token gets 401 with a Basic challenge and none of the dashboard.

    A headed browser would ask for a user and password; headless Chromium gives up instead.
    """
    context = browser.new_context()
    try:
        answer = context.request.get(dashboard + "/rq/")
        assert answer.status == 401 and "unauthorized" in answer.text()
        assert answer.headers["www-authenticate"].startswith('Basic realm="preview dashboard"')
        assert "queues" not in answer.text()
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        with pytest.raises(Error, match="ERR_INVALID_AUTH_CREDENTIALS"):
            page.goto(dashboard + "/rq/")
    finally:
        context.close()


def test_dashboard_lists_the_three_queues(browser: Browser, dashboard: str) -> None:
    """With the token, /rq/ loads and its script fills the table with high, normal and low."""
    context = browser.new_context(extra_http_headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        watched = watch(context.new_page())
        response = watched.page.goto(dashboard + "/rq/")
        assert response is not None and response.status == 200
        rows = watched.page.locator("table#queues tbody tr[data-role=queue]")
        expect(rows).to_have_count(3)  # filled in by the page's fetch of the queue list
        names = rows.locator("td:first-child").all_inner_texts()
        assert sorted(name.strip() for name in names) == ["high", "low", "normal"]
        expect(watched.page.locator("body")).to_contain_text("normal")
        watched.page.wait_for_load_state("networkidle")
        assert watched.errors == []  # its icon too is found
        assert all(url.startswith(dashboard + "/") for url in watched.requests), watched.requests
    finally:
        context.close()


def test_a_browser_opens_the_dashboard_with_basic_auth(browser: Browser, dashboard: str) -> None:
    """Given the token as a Basic password (any user), Chromium opens /rq/; a wrong one is
    refused with the Basic challenge that makes a browser ask; the API stays bearer-only."""
    wrong = browser.new_context(http_credentials={"username": "ops", "password": "not-a-token"})
    try:
        page = wrong.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        refused = page.goto(dashboard + "/rq/")
        assert refused is not None and refused.status == 401
        assert refused.headers["www-authenticate"].startswith("Basic")
    finally:
        wrong.close()
    context = browser.new_context(http_credentials={"username": "ops", "password": TOKEN})
    try:
        watched = watch(context.new_page())
        response = watched.page.goto(dashboard + "/rq/")
        assert response is not None and response.status == 200
        rows = watched.page.locator("table#queues tbody tr[data-role=queue]")
        expect(rows).to_have_count(3)  # its script's own fetches passed with Basic too
        api = watched.page.goto(dashboard + "/api/preview/dlq")
        assert api is not None and api.status == 401  # Basic opens the dashboard only
    finally:
        context.close()


EDITOR_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>editor</title></head><body>
<ol id="log"></ol>
<script>
const source = new EventSource(EVENTS_URL);
for (const kind of ["queued", "started", "progress", "retrying", "finished",
                    "dead-lettered", "canceled"]) {
  source.addEventListener(kind, (message) => {
    const data = JSON.parse(message.data);
    const item = document.createElement("li");
    item.textContent = kind + (data.stage ? " " + data.stage + " " + data.percent : "");
    document.getElementById("log").append(item);
    if (["finished", "dead-lettered", "canceled"].includes(kind)) {
      source.close();
      document.body.dataset.ended = kind;
    }
  });
}
</script></body></html>
"""


def test_an_editor_page_follows_a_job_to_finished_with_event_source(
    browser: Browser, redis_url: str, data_dir: Path
) -> None:
    """Given an editor's page on another origin holding a job's signed eventsUrl, Chromium's
    EventSource shows the job's progress as it renders, up to finished."""
    import json
    import urllib.request

    from .processes import running_worker
    from .test_workers import slow_payload

    environment = service_environment(redis_url, data_dir, PREVIEW_API_TOKENS=TOKEN)
    with serving(environment, workers=1) as base:
        request = urllib.request.Request(
            base + "/api/preview/job", data=json.dumps(slow_payload(7)).encode(), method="POST",
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            events_url = base + json.loads(answer.read())["eventsUrl"]
        page = EDITOR_PAGE.replace("EVENTS_URL", json.dumps(events_url)).encode()
        with serving_page(page) as site:
            context = browser.new_context()
            watched = watch(context.new_page())
            watched.page.goto(site.url, wait_until="load")
            expect(watched.page.locator("#log li").first).to_have_text("queued")
            with running_worker(environment, "--burst"):
                expect(watched.page.locator("body")).to_have_attribute(
                    "data-ended", "finished", timeout=60_000
                )
            told = watched.page.locator("#log li").all_inner_texts()
            context.close()
    assert told[0] == "queued" and told[1] == "started" and told[-1] == "finished"
    assert "progress page 20" in told  # a slow page render is told while it runs
    # The little page server has no icon; anything else the console says is a failure.
    assert [error for error in watched.errors if "favicon.ico" not in error] == []
