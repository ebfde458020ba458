"""The audit report in a real headless browser: every picture loads, nothing is fetched."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

import saliency.audit
from saliency import models, viz


def _browser():
    path = Path(__file__).resolve().parent / "_browser.py"
    spec = importlib.util.spec_from_file_location("_browser", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("_browser", module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    model, info = models.load("digits")
    x, y = models.held_out("digits", 16)
    out = tmp_path_factory.mktemp("audit")
    saliency.audit.run(
        model, (x, y), out_dir=out, metrics=["deletion", "class_sensitivity"], batch_size=8,
        metric_options={"deletion": {"steps": 8}}, class_names=info.class_names,
        mean=info.mean, std=info.std, strategy="loop",
    )  # fmt: skip
    return out / "report.html"


def test_report_opens_offline_with_every_picture_loaded(report, tmp_path):
    browser = _browser()
    if reason := browser.unavailable():
        pytest.skip(reason)
    page = browser.evaluate(
        report,
        "Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])",
        screenshot=tmp_path / "report.png",
    )
    images = page.value
    # mean maps, distributions, and worst and best samples of three oriented columns
    assert len(images) >= 1 + 1 + 6
    assert all(done and width > 0 and height > 0 for done, width, height in images)
    assert page.requests == [report.resolve().as_uri()]  # the page itself, nothing else
    assert not page.blocked and not page.failed
    assert not page.console_errors and not page.page_errors


def test_report_is_self_contained_and_names_what_it_shows(report):
    text = report.read_text()
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text and "<link" not in text
    summary = json.loads((report.parent / "summary.json").read_text())
    assert f"{summary['accuracy']:.4g}" in text
    for heading in ("Confusion matrix", "Mean maps", "Metric distributions", "most faithful"):
        assert heading in text
    worst = summary["methods"]["gradients"]["columns"]["deletion.auc"]["highest"][0]
    assert f"#{worst['index']} class {worst['class']}: " in text


def test_input_pictures_undo_the_normalisation_and_enlarge_keeps_pixels():
    raw = torch.rand(2, 3, 5, 4) * 0.5 + 0.25  # pixels in [0.25, 0.75]
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    x = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    pictures = viz.input_pictures(x, mean=mean, std=std)
    lo = raw.amin(dim=(1, 2, 3), keepdim=True)
    hi = raw.amax(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(pictures, (raw - lo) / (hi - lo))
    big = viz.enlarge(pictures, min_size=12)
    assert big.shape == (2, 3, 15, 12)  # a whole factor of 3 on both sides
    assert torch.equal(big[:, :, ::3, ::3], pictures)
    assert viz.enlarge(pictures, min_size=4) is pictures
    with pytest.raises(ValueError, match="std: expected 1 value or one per channel"):
        viz.input_pictures(x, std=[1.0, 2.0])
