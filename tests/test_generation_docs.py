"""The Generation page's table of known answers is what the bundled model gives (gradients row)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_pages_gradients_row_is_current():
    spec = importlib.util.spec_from_file_location(
        "saliency_docs_pictures", REPO / "docs" / "_scripts" / "pictures.py"
    )
    pictures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pictures)
    label = "gradients"
    row = pictures.hit_rates(methods={label: pictures.GENERATION_METHODS[label]})[0]
    page = pictures.GENERATION_PAGE.read_text()
    table = re.search(r"<!-- hits:start -->\n(.*?)\n<!-- hits:end -->", page, re.S).group(1)
    hint = "run: python docs/_scripts/pictures.py --generation-table"
    assert "| " + " | ".join(row) + " |" in table.splitlines(), hint
    for name in ("generation-reverse", "generation-hover"):
        assert name in pictures.PICTURES
        assert f"img/generated/{name}.png" in page
