"""The Generation page's table of known answers is what the bundled model gives (gradients row)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_pages_gradients_row_is_current():
    spec = importlib.util.spec_from_file_location(
        "saliency_docs_generation", REPO / "docs" / "img" / "make_generation_pictures.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    label = "gradients"
    row = script.hit_rates(methods={label: script.METHODS[label]})[0]
    page = script.PAGE.read_text()
    table = re.search(r"<!-- hits:start -->\n(.*?)\n<!-- hits:end -->", page, re.S).group(1)
    assert "| " + " | ".join(row) + " |" in table.splitlines()
    for name in ("generation-reverse.png", "generation-hover.png"):
        assert (REPO / "docs" / "img" / name).stat().st_size > 1000
        assert f"img/{name}" in page
