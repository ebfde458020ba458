"""The whole docs site, built as ``make docs`` builds it and looked at in headless Chromium at a
laptop's width: every page that should show a picture shows one that loads, the executed
notebooks are there with their figures, no maths is left as raw TeX, nothing is cut off, and the
README's picture and speed-up are current.

The site is built once for the module (pictures and notebooks come from the docs cache, shared
with tests/test_notebooks.py; a cold cache draws and runs them, a minute or two).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
    return sys.modules[name]


browser = _load("saliency_tests_browser", Path(__file__).with_name("_browser.py"))

# Pages and the least number of pictures each must show (drawn by docs/_scripts/pictures.py, or
# the figures of an executed notebook).
PICTURES = {
    "": 1,
    "methods/gradients/": 1,
    "methods/smoothgrad/": 1,
    "methods/integrated-gradients/": 1,
    "methods/gradcam/": 1,
    "captum-methods/": 1,
    "audit/completeness/": 1,
    "audit/deletion-insertion/": 1,
    "audit/road/": 1,
    "audit/infidelity-sensitivity/": 1,
    "audit/randomization/": 1,
    "audit/class-sensitivity/": 1,
    "audit/margins/": 1,
    "audit/runs/": 1,
    "text/": 1,
    "generation/": 2,
    "pictures/": 2,
    "cli/": 1,
    "benchmarks/": 1,
    "notebooks/01_quickstart/": 3,
    "notebooks/02_methods/": 4,
    "notebooks/03_tabular/": 3,
    "notebooks/04_cost_and_memory/": 0,
    "notebooks/05_layers_and_text/": 4,
    "notebooks/06_generation/": 3,
}
# Pages checked for layout only.
OTHERS = ["concepts/", "engine/", "api/", "notebooks/", "architecture/", "models/", "captum/"]

# Run in each page once its fonts and pictures are in.
_INSPECT = """async () => {
  await document.fonts.ready;
  const article = document.querySelector('article');
  const images = [...article.querySelectorAll('img')];
  await Promise.all(images.map((img) => img.complete ? null :
    new Promise((done) => { img.onload = img.onerror = done; })));
  const rest = article.cloneNode(true);
  rest.querySelectorAll('.katex').forEach((e) => e.remove());
  // Anything wider than its box that does not scroll is cut off; pictures must fit the column.
  const column = article.getBoundingClientRect();
  const cut = [...article.querySelectorAll('.katex-display, div.arithmatex, .nb-output, pre, ' +
    '.md-typeset__table')]
    .filter((e) => e.scrollWidth > e.clientWidth + 1 &&
      !['auto', 'scroll'].includes(getComputedStyle(e).overflowX))
    .concat(images.filter((i) => i.getBoundingClientRect().right > column.right + 1))
    .map((e) => e.tagName + ': ' + (e.textContent || e.getAttribute('src')).slice(0, 60));
  // Code lines wrap (docs/assets/site.css) rather than scroll out of sight.
  const clipped = [...article.querySelectorAll('pre > code')]
    .filter((e) => e.scrollWidth > e.clientWidth + 1).map((e) => e.textContent.slice(0, 60));
  return {
    images: images.length,
    broken: images.filter((i) => !(i.naturalWidth > 0)).map((i) => i.getAttribute('src')),
    raw: (rest.textContent.match(/\\\\[\\[\\]()]/g) || []).length,
    katexErrors: document.querySelectorAll('.katex-error').length,
    cut: cut,
    clipped: clipped,
    overflow: document.documentElement.scrollWidth > window.innerWidth + 1,
  };
}"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    _need_browser()  # the build itself takes a screenshot of an audit report
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stderr[-4000:]}"
    return out


def _need_browser():
    reason = browser.unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must check the docs in a browser: {reason}")
        pytest.skip(reason)


def test_every_page_shows_its_pictures_and_nothing_is_cut(site):
    _need_browser()
    from playwright.sync_api import sync_playwright

    found, failed, blocked = {}, [], []
    with browser.serve(site) as base, sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=browser.chromium_path(), args=list(browser.FLAGS)
        )
        try:
            context = chromium.new_context(
                viewport={"width": 1280, "height": 900}, service_workers="block"
            )

            def route(r):
                if r.request.url.startswith((base, "data:", "blob:", "about:")):
                    r.continue_()
                else:
                    blocked.append(r.request.url)
                    r.abort("blockedbyclient")

            context.route("**/*", route)
            page = context.new_page()
            # Missing files answer 404; requests cut short by the next page's navigation (the
            # favicon, the search worker) fail as aborted and are not missing.
            page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
            page.on(
                "requestfailed",
                lambda r: None if "ABORTED" in (r.failure or "") else failed.append(r.url),
            )
            for path in [*PICTURES, *OTHERS]:
                page.goto(f"{base}/{path}", wait_until="load", timeout=60_000)
                found[path] = page.evaluate(_INSPECT)
        finally:
            chromium.close()
    assert blocked == [], f"requests that would leave the machine: {blocked}"
    assert [u for u in failed if u not in blocked] == []
    for path, result in found.items():
        least = PICTURES.get(path, 0)
        assert result["images"] >= least, (path, result)
        assert result["broken"] == [], (path, result["broken"])
        assert result["raw"] == 0 and result["katexErrors"] == 0, (path, "raw TeX", result)
        assert result["cut"] == [] and result["clipped"] == [], (path, "cut off", result)
        assert not result["overflow"], (path, "the page scrolls sideways")


def test_notebook_pages_carry_outputs_and_the_source(site):
    page = (site / "notebooks" / "01_quickstart" / "index.html").read_text()
    assert "identical: True" in page  # a printed output, not only the code
    assert (site / "notebooks" / "01_quickstart.ipynb").is_file()  # the download link's target
    assert "Download the notebook" in page


def test_readme_picture_is_what_the_script_draws_now():
    pictures = _load("saliency_docs_pictures", REPO / "docs" / "_scripts" / "pictures.py")
    from PIL import Image

    committed = np.asarray(Image.open(pictures.README).convert("RGB")).astype(int)
    drawn = np.asarray(pictures.readme_picture().convert("RGB")).astype(int)
    hint = "run: python docs/_scripts/pictures.py --readme"
    assert committed.shape == drawn.shape, hint
    # Exact up to a few pixels that float rounding on another CPU can flip.
    assert (np.abs(committed - drawn).max(axis=2) > 8).mean() < 1e-3, hint


def test_readme_speedup_is_the_measured_one():
    results = json.loads((REPO / "docs" / "img" / "benchmark-engine.json").read_text())
    mlp = {r["id"]: r for r in results["cases"]["mlp"]["rows"]}
    measured = mlp["captum"]["median_ms"] / mlp["auto"]["median_ms"]
    for page in (REPO / "README.md", REPO / "docs" / "index.md"):
        text = page.read_text()
        said = re.search(r"\*\*(\d+)x faster than Captum\*\*", text)
        assert said, f"{page.name}: no speed-up (python benchmarks/engine.py --render-only)"
        assert int(said.group(1)) == round(measured), page.name
