"""Every notebook under notebooks/ is committed without outputs, runs top to bottom without error,
and shows a reader no warning block (nothing written to stderr).

The notebooks run through the docs build's own runner (docs/_scripts/generated.py), which keeps
each executed notebook in the docs cache under a hash of everything it depends on: the site shows
exactly the outputs checked here, and ``make docs`` after ``make test`` does not run them again.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _generated():
    name = "saliency_docs_generated"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, REPO / "docs" / "_scripts" / "generated.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found under notebooks/"
    assert [p.name for p in _generated().NOTEBOOKS] == [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_clean_and_runs_without_warnings(path):
    source = nbformat.read(path, as_version=4)
    code = [c for c in source.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip outputs first"
    generated = _generated()
    nb = generated.executed(path, log=lambda _: None)
    assert generated.problems(nb) == []
    ran = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.source for c in ran] == [c.source for c in code], "the cache holds another version"
    assert all(c.execution_count for c in ran), "a cell did not run"
    # Something for a reader to see: every notebook prints or draws.
    assert sum(len(c.outputs) for c in ran) >= len(ran) // 2


def test_problems_finds_errors_and_stderr():
    # The check above is only as good as this: feed it a notebook with both.
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import warnings"),
        nbformat.v4.new_code_cell("1 / 0"),
    ]
    nb.cells[0].outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="TqdmWarning: IProgress not found")
    ]
    nb.cells[1].outputs = [
        nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="division by zero")
    ]
    found = _generated().problems(nb)
    assert len(found) == 2
    assert "stderr" in found[0] and "IProgress" in found[0]
    assert "ZeroDivisionError" in found[1]
