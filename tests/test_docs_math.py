"""The docs site typesets its maths offline: the Integrated Gradients page, built with the site's
own theme, Markdown extensions and scripts (mkdocs.yml), looked at in a real headless Chromium."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGE = "methods/integrated-gradients.md"

# tests/ is not a package: load the helper beside this file by path.
_spec = importlib.util.spec_from_file_location(
    "saliency_tests_browser", Path(__file__).with_name("_browser.py")
)
browser = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = browser  # dataclasses look their module up while it executes
_spec.loader.exec_module(browser)

# Run in the page once fonts are in: how much maths there is, how much KaTeX typeset, and any
# TeX delimiters left as text outside the typeset formulas.
_INSPECT = """async () => {
  await document.fonts.ready;
  const math = [...document.querySelectorAll('.arithmatex')];
  const text = document.querySelector('article') || document.body;
  const rest = text.cloneNode(true);
  rest.querySelectorAll('.katex').forEach((e) => e.remove());
  return {
    math: math.length,
    typeset: math.filter((e) => e.querySelector('.katex-html')).length,
    display: document.querySelectorAll('.katex-display').length,
    errors: document.querySelectorAll('.katex-error').length,
    raw: (rest.textContent.match(/\\\\[\\[\\]()]/g) || []).length,
    fonts: [...document.fonts].filter((f) => f.family.includes('KaTeX') && f.status === 'loaded')
      .length,
  };
}"""


def build_page(config: Path, page: str, out: Path) -> Path:
    """Build one page of the docs with ``config``'s settings; return the site folder.

    The page and docs/assets are copied into ``out``; a config there inherits everything from
    ``config`` (theme, Markdown extensions, plugins, scripts and styles) but the pages, the
    strictness (links to the pages left out, and the generated pictures, are expected to dangle)
    and the hook that draws pictures and runs notebooks (tests/test_docs_site.py builds those).
    """
    docs = out / "docs"
    (docs / page).parent.mkdir(parents=True)
    shutil.copy(REPO / "docs" / page, docs / page)
    shutil.copytree(REPO / "docs" / "assets", docs / "assets")
    own = out / "mkdocs.yml"
    own.write_text(
        f"INHERIT: {config}\ndocs_dir: docs\nsite_dir: site\nstrict: false\nhooks: []\n"
        f"nav:\n  - {page}\n"
    )
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "-q", "-f", str(own)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, f"mkdocs build failed:\n{done.stderr[-3000:]}"
    return out / "site"


def test_integrated_gradients_page_typesets_its_maths_offline(tmp_path):
    reason = browser.unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must check the docs in a browser: {reason}")
        pytest.skip(reason)
    site = build_page(REPO / "mkdocs.yml", PAGE, tmp_path)
    # Served on the loopback, as a reader's browser gets it: search fetches its index.
    with browser.serve(site) as base:
        page = browser.evaluate(f"{base}/{PAGE.removesuffix('.md')}/", _INSPECT)
    # First what would need a network (a CDN script, web fonts): the usual cause of raw TeX.
    assert page.blocked == [], f"requests that would leave the machine: {page.blocked}"
    assert page.failed == [], f"local files the page needed but did not find: {page.failed}"
    assert all(u.startswith(base) for u in page.requests), page.requests
    found = page.value
    assert found["math"] >= 10, found  # the page's formulas reached the HTML as arithmatex
    assert found["typeset"] == found["math"], found  # and every one was typeset
    assert found["display"] >= 3 and found["errors"] == 0, found
    assert found["raw"] == 0, found  # no \( \) \[ \] left as text
    assert found["fonts"] >= 1, found  # KaTeX's own fonts, from the vendored copy
    assert page.page_errors == [], page.page_errors


def test_browser_helper_reports_what_a_page_asks_for(tmp_path):
    reason = browser.unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must check pages in a browser: {reason}")
        pytest.skip(reason)
    (tmp_path / "here.js").write_text("document.title = 'ran ' + (1 + 1);")
    (tmp_path / "page.html").write_text(
        "<html><head><script src='here.js'></script><script src='gone.js'></script></head>"
        "<body><img src='https://example.invalid/x.png'><p>text</p></body></html>"
    )
    page = browser.evaluate(tmp_path / "page.html", "document.title")
    assert page.value == "ran 2"
    assert page.blocked == ["https://example.invalid/x.png"]  # refused before it left
    assert [u.rsplit("/", 1)[-1] for u in page.failed] == ["gone.js"]
    with browser.serve(tmp_path) as base:
        served = browser.evaluate(f"{base}/page.html", "fetch('here.js').then((r) => r.status)")
    assert served.value == 200 and served.blocked == ["https://example.invalid/x.png"]
