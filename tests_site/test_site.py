"""The built site, opened in a real headless Chromium: math typeset, figures loaded, no broken internal link,
nothing fetched from outside the site.

Run after the book is built (``make test-site`` builds it first). The browser comes from ``conftest.py``.
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import pytest

SITE = Path(os.environ.get("TTT_SITE_DIR", Path(__file__).resolve().parents[1] / "_build" / "html"))
PAGES = sorted(p.relative_to(SITE).as_posix() for p in (SITE / "book").glob("*.html")) if SITE.exists() else []


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.links = set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name"):
            if attrs.get(key):
                self.ids.add(attrs[key])
        for key in ("href", "src"):
            if attrs.get(key) and tag in ("a", "img", "link", "script"):
                self.links.append((tag, attrs[key]))


@functools.lru_cache(maxsize=None)
def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return parser


def test_site_was_built():
    assert (SITE / "index.html").exists(), f"no built site in {SITE}; run `make book-stored` first"
    assert len(PAGES) >= 10, f"expected every chapter under {SITE / 'book'}, found {PAGES}"


def test_no_broken_internal_links():
    broken = []
    for page in SITE.rglob("*.html"):
        if "_static" in page.parts or "_sources" in page.parts:
            continue
        for tag, link in _parse(page).links:
            parsed = urlparse(link)
            if parsed.scheme or link.startswith(("//", "mailto:", "javascript:", "data:")):
                continue
            target_rel, fragment = urldefrag(link)
            target = page if not target_rel else (page.parent / unquote(target_rel.split("?")[0])).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(SITE)}: <{tag}> {link} (missing file)")
            elif fragment and target.suffix == ".html" and tag == "a" and fragment not in _parse(target).ids:
                broken.append(f"{page.relative_to(SITE)}: <a> {link} (missing anchor #{fragment})")
    assert not broken, "broken internal links:\n" + "\n".join(broken[:50])


@pytest.fixture(scope="module")
def server():
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SITE))

    class Quiet(handler.func):  # type: ignore[misc, valid-type]
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(SITE)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


WAIT_FOR_PAGE = """
const done = arguments[arguments.length - 1];
const imgs = Array.from(document.images).map(img => img.complete ? Promise.resolve() :
    new Promise(r => { img.onload = r; img.onerror = r; }));
const math = (window.MathJax && MathJax.startup && MathJax.startup.promise) ? MathJax.startup.promise : Promise.resolve();
Promise.all([math, ...imgs]).then(() => done({
  hasMathJax: !!(window.MathJax && MathJax.startup),
  mathSource: document.querySelectorAll('.math, span.math, div.math').length,
  typeset: document.querySelectorAll('mjx-container').length,
  errors: document.querySelectorAll('mjx-merror').length,
  images: Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth]),
  resources: performance.getEntriesByType('resource').map(e => e.name),
}));
"""


@pytest.mark.parametrize("page", PAGES)
def test_page_renders(page, server, browser):
    browser.get(f"{server}/{page}")
    info = browser.execute_async_script(WAIT_FOR_PAGE)
    if info["mathSource"]:
        assert info["hasMathJax"], f"{page}: MathJax did not load"
        assert info["typeset"] >= info["mathSource"], (
            f"{page}: {info['mathSource']} math elements but only {info['typeset']} typeset by MathJax"
        )
        assert info["errors"] == 0, f"{page}: {info['errors']} MathJax errors"
    broken = [src for src, width in info["images"] if not width]
    assert not broken, f"{page}: images that did not load: {broken}"
    external = [url for url in info["resources"] if not url.startswith(server)]
    assert not external, f"{page}: fetched from outside the site: {external}"


def test_screenshot_of_first_chapter(server, browser, tmp_path_factory):
    """Keep a screenshot (``_build/screenshots``) for a human to look at; check it is not blank."""
    browser.get(f"{server}/book/01_setup.html")
    browser.execute_async_script(WAIT_FOR_PAGE)
    out = SITE.parent / "screenshots"
    out.mkdir(exist_ok=True)
    png = out / "01_setup.png"
    assert browser.save_screenshot(str(png))
    assert png.stat().st_size > 20_000
