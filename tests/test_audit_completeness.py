"""completeness against the score changes computed from the model directly, and its treatment of
rows whose score does not change."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import saliency
from saliency import models
from saliency.audit import Completeness, completeness


def _attribution(values, delta, outputs):
    b, k = values.shape[:2]
    return saliency.Attribution(
        values=values, classes=torch.arange(k).expand(b, k), outputs=outputs, method="test",
        delta=delta,
    )  # fmt: skip


def test_relative_gap_against_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 4)).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    baseline = torch.randn(1, 5, dtype=torch.float64)
    ig = saliency.integrated_gradients(model, x, baseline=baseline, steps=4, strategy="loop")
    r = completeness(ig, tol=0.05)
    change = (model(x) - model(baseline)).detach()  # F(x) - F(baseline), by hand
    torch.testing.assert_close(r.change, change)
    gap = ig.values.sum(-1) - change
    torch.testing.assert_close(r.gap, gap)
    torch.testing.assert_close(r.relative_gap, gap.abs() / change.abs())
    assert not r.flat.any()
    assert torch.equal(r.exceeds, gap.abs() / change.abs() > 0.05)
    assert 0 < int(r.exceeds.sum()) < 24  # 4 steps on a ReLU net: some rows off, not all
    s = r.summary()
    assert json.loads(json.dumps(s)) == s
    assert s["exceeding"] == int(r.exceeds.sum()) and s["rows"] == 24
    assert s["max"] == pytest.approx(float(r.relative_gap.max()))


def test_more_steps_close_the_gap_on_digits():
    model, _ = models.load("digits")
    x, y = models.held_out("digits", 16)

    def ig(steps):
        return saliency.integrated_gradients(model, x, y[:, None], steps=steps, strategy="loop")

    coarse, fine = completeness(ig(4)), completeness(ig(64))
    assert fine.relative_gap.median() < coarse.relative_gap.median()
    assert fine.summary()["median"] < 0.02


def test_flat_rows_are_measured_against_the_floor():
    outputs = torch.tensor([[10.0, -2.0, 0.5]])
    values = torch.tensor([[[1.0, 1.01], [1e-7, 0.0], [0.3, 0.0]]])
    # Row 1: the score barely moves (change 1e-7 - 1e-9), its gap is rounding noise.
    # Row 2: the score does not move either (change 0), but the map sums to 0.3: a real gap.
    delta = torch.tensor([[0.01, 1e-9, 0.3]])
    r = completeness(_attribution(values, delta, outputs), tol=0.01)
    assert r.flat.tolist() == [[False, True, True]]
    assert r.floor.tolist() == pytest.approx([1e-2])  # 1e-3 x the largest |output|
    assert r.relative_gap[0, 0].item() == pytest.approx(0.005)  # 0.01 of a change of 2
    assert r.relative_gap[0, 1].item() == pytest.approx(1e-7)
    assert r.relative_gap[0, 2].item() == pytest.approx(30.0)
    assert r.exceeds.tolist() == [[False, False, True]]
    custom = completeness(_attribution(values, delta, outputs), floor=1.0)
    assert custom.relative_gap[0, 2].item() == pytest.approx(0.3)
    assert custom.summary()["flat"] == 2


def test_zero_outputs_do_not_divide_by_zero():
    values = torch.zeros(2, 2, 3)
    r = completeness(_attribution(values, torch.zeros(2, 2), torch.zeros(2, 2)))
    assert bool(torch.isfinite(r.relative_gap).all()) and not r.exceeds.any()
    assert isinstance(r, Completeness)


def test_errors_name_the_argument():
    model = nn.Linear(3, 2)
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="records no completeness gap"):
        completeness(saliency.gradients(model, x))
    with pytest.raises(TypeError, match=r"attribution: expected a saliency\.Attribution"):
        completeness(torch.zeros(2, 2))
    ig = saliency.integrated_gradients(model, x, steps=2)
    with pytest.raises(ValueError, match="tol"):
        completeness(ig, tol=-0.1)
    with pytest.raises(ValueError, match="floor"):
        completeness(ig, floor=0.0)
    bad = _attribution(torch.full((1, 2, 3), float("nan")), torch.zeros(1, 2), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="NaN"):
        completeness(bad)
