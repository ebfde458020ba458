"""Shared test fixtures: a real headless browser for the pages the project writes."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest


def _browser_module():
    # tests/ is not a package (pytest imports with importlib): load the helper by its path.
    path = Path(__file__).resolve().parent / "_browser.py"
    spec = importlib.util.spec_from_file_location("_browser", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("_browser", module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def browser():
    """``tests/_browser.py``, with Chromium available: skipped without it, except in CI, where
    a page that no browser checked would pass unseen."""
    module = _browser_module()
    if reason := module.unavailable():
        if os.environ.get("CI"):
            pytest.fail(f"CI must check pages in a browser: {reason}")
        pytest.skip(reason)
    return module
