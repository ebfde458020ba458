"""The complete examples in the docs' pages run (blocks that start with their own imports).

Fragments that continue an earlier block, and signatures, are left to the reader.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
# Blocks that import but are not meant to run alone: they use the reader's own model and data.
FRAGMENTS = {
    "engine.md#1": "uses the reader's model and x",
    "pictures.md#1": "a list of signatures",
}
BLOCKS = [
    pytest.param(code, id=f"{page.relative_to(DOCS)}#{i}")
    for page in sorted(DOCS.rglob("*.md"))
    for i, code in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))
    if re.match(r"(import|from) ", code) and f"{page.relative_to(DOCS)}#{i}" not in FRAGMENTS
]


def test_docs_have_runnable_examples():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("code", BLOCKS)
def test_docs_example_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    exec(compile(code, "<docs example>", "exec"), {"__name__": "__docs__"})


def test_readme_examples_run_in_order(tmp_path, monkeypatch):
    # The README's blocks continue each other: run them in one namespace, top to bottom.
    readme = DOCS.parent / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace = {"__name__": "__readme__"}
    for code in blocks:
        exec(compile(code, "<README example>", "exec"), namespace)
    assert (tmp_path / "reverse.html").stat().st_size > 1000
