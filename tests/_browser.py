"""Open a local page in a real headless Chromium and evaluate JavaScript in it, offline.

A small helper for tests that must see what a reader sees (maths typeset by KaTeX, an HTML
report's scripts): the page is loaded from a file or URL, every request it makes is recorded,
and any request that would leave the machine is refused and reported. Uses Playwright's Python
package with the system's Chromium (Debian's ``chromium``; ``playwright install`` downloads a
browser and cannot work offline). Set ``SALIENCY_CHROMIUM`` to use another binary.

Example (in a test; tests/ is not a package, so load this file by path, as
tests/test_docs_math.py does)::

    if reason := browser.unavailable():
        pytest.skip(reason)
    page = browser.evaluate(path_to_html, "document.querySelectorAll('.katex').length")
    assert page.value > 0 and not page.blocked and not page.failed
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["FLAGS", "PageResult", "chromium_path", "evaluate", "serve", "unavailable"]

# Headless, and nothing that phones home: no GPU, first-run, sync, update or background fetches.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
_LOCAL = ("file:", "data:", "blob:", "about:")


@dataclass
class PageResult:
    """What a page did: the expression's value and every request, console error and crash."""

    value: object
    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)  # would have left the machine: refused
    failed: list[str] = field(default_factory=list)  # asked for but not delivered (missing file)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)


def chromium_path() -> str | None:
    """The Chromium binary to drive: ``$SALIENCY_CHROMIUM``, else ``chromium`` on the PATH."""
    return os.environ.get("SALIENCY_CHROMIUM") or shutil.which("chromium")


def unavailable() -> str | None:
    """Why no browser can run here (a sentence for ``pytest.skip``), or None when one can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    if chromium_path() is None:
        return "no Chromium binary (apt-get install -y chromium, or set SALIENCY_CHROMIUM)"
    return None


def evaluate(
    target: str | os.PathLike,
    expression: str,
    *,
    wait_for: str | None = None,
    timeout: float = 30.0,
    screenshot: str | os.PathLike | None = None,
    viewport: tuple[int, int] = (1200, 900),
) -> PageResult:
    """Load ``target`` (a file path or URL), then return the value of JS ``expression``.

    The expression runs after the ``load`` event and, when given, after the JS expression
    ``wait_for`` turns truthy; a Promise is awaited. Requests to anything but ``file:``,
    ``data:``, ``blob:`` and ``about:`` URLs, or the origin of a loopback ``target`` (a site
    served by :func:`serve`), are refused and listed in ``blocked``. ``screenshot`` saves a
    full-page PNG there, to look at.
    """
    from playwright.sync_api import sync_playwright

    reason = unavailable()
    if reason:
        raise RuntimeError(f"no headless browser: {reason}")
    url = target if isinstance(target, str) and "://" in target else Path(target).resolve().as_uri()
    parts = urlsplit(url)
    local = _LOCAL
    if parts.scheme in ("http", "https") and parts.hostname in ("127.0.0.1", "localhost", "::1"):
        local = (*_LOCAL, f"{parts.scheme}://{parts.netloc}/")
    result = PageResult(value=None)

    def route(r) -> None:
        if r.request.url.startswith(local):
            r.continue_()
        else:
            result.blocked.append(r.request.url)
            r.abort("blockedbyclient")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=list(FLAGS))
        try:
            context = browser.new_context(
                viewport={"width": viewport[0], "height": viewport[1]}, service_workers="block"
            )
            context.route("**/*", route)
            page = context.new_page()
            page.on("request", lambda r: result.requests.append(r.url))
            page.on("requestfailed", lambda r: result.failed.append(r.url))
            page.on(
                "console",
                lambda m: result.console_errors.append(m.text) if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: result.page_errors.append(str(e)))
            page.goto(url, wait_until="load", timeout=timeout * 1000)
            if wait_for is not None:
                page.wait_for_function(wait_for, timeout=timeout * 1000)
            result.value = page.evaluate(expression)
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    # A refused request also shows up as failed; keep "failed" for what was really missing.
    result.failed = [u for u in result.failed if u not in result.blocked]
    return result


@contextlib.contextmanager
def serve(directory: str | os.PathLike) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1 (a free port) while the block runs.

    Yields the base URL, ``http://127.0.0.1:PORT``. For sites whose scripts fetch files
    (mkdocs-material's search), which browsers refuse over ``file:``.
    """
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        # A browser closed while a file was in flight (the page was done): not a failure.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # the test reads the browser's record of requests, not the server's log
