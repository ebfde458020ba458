"""Adaptive Integrated Gradients says when rows missed ``tol``, and gives up early on rows that a
jump or a singular gradient along the path keeps from converging (issue 15, item 5)."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

import saliency


def relative_gaps(model, x, a):
    """Each row's |delta| over its change F(x) - F(0), measured on the model (the zero baseline),
    with the thousandth-of-the-largest-score floor that ``steps='auto'`` uses."""
    with torch.no_grad():
        fx, f0 = model(x), model(torch.zeros_like(x))
    change = (fx - f0).gather(1, a.classes)
    floor = 1e-3 * fx.abs().amax(1, keepdim=True)
    return a.delta.abs() / torch.maximum(change.abs(), floor)


def scale_invariant():
    """A bias-free linear layer under a LayerNorm: F(t x) is constant for t > 0 but not at t = 0,
    with a gradient of order 1 / sqrt(eps) there (Wav2Vec2's front end, in small)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 8, bias=False), torch.nn.LayerNorm(8, eps=1e-12), torch.nn.Linear(8, 3)
    ).eval()


def test_a_jump_at_the_baseline_is_reported_and_stopped_early():
    model = scale_invariant()
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    with pytest.warns(UserWarning, match="left 12 of 12.*rows above tol=0.01") as caught:
        a = saliency.integrated_gradients(model, x, steps="auto")
    report = a.params["unconverged"]
    gaps = relative_gaps(model, x, a)
    assert report["rows"] == int((gaps > 0.01).sum()) == 12 and report["of"] == 12
    assert report["worst_relative_gap"] == pytest.approx(float(gaps.max()), rel=1e-4)
    assert report["stopped_early"] == 12
    # Given up after three steady rounds (33 -> 257 points), not run to max_steps = 16385.
    assert a.params["steps_used"] == [[257] * 3] * 4
    message = str(caught[0].message)
    assert f"{report['worst_relative_gap']:.3g}" in message and "another baseline" in message
    # A row given up is still the fixed trapezoid rule with its points.
    fixed = saliency.integrated_gradients(model, x, steps=257, rule="riemann_trapezoid")
    torch.testing.assert_close(a.values, fixed.values, atol=1e-5, rtol=1e-4)


def test_a_step_inside_the_path_stalls_and_is_given_up():
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 3)
    x = torch.rand(3, 6) + 0.5

    def stepped(t):  # a jump of 2 in every logit halfway along the path from zero
        return lin(t) + 2.0 * (t.sum(1, keepdim=True) > 0.5 * x.sum(1).mean()).float()

    with pytest.warns(UserWarning, match="9 stopped early"):
        a = saliency.integrated_gradients(stepped, x, steps="auto")
    assert a.params["unconverged"]["rows"] == 9
    assert max(max(r) for r in a.params["steps_used"]) == 257


def test_rows_capped_by_max_steps_are_reported_without_early_stops():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
        torch.nn.Linear(64, 10),
    ).eval()  # fmt: skip
    x = 3 * torch.randn(6, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = saliency.integrated_gradients(model, x, steps="auto", max_steps=65)
    gaps = relative_gaps(model, x, a)
    missed = int((gaps > 0.01).sum())
    assert missed > 0  # ReLU networks need many more than 65 points on some rows
    assert a.params["unconverged"] == {
        "rows": missed,
        "of": 60,
        "worst_relative_gap": pytest.approx(float(gaps.max()), rel=1e-4),
        "stopped_early": 0,
    }
    (warning,) = [w for w in caught if "integrated_gradients" in str(w.message)]
    assert re.search(rf"left {missed} of 60 ", str(warning.message))
    assert "stopped early" not in str(warning.message)
    assert warning.filename == __file__  # points at the caller


def test_converged_rows_report_none_and_stay_quiet():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = saliency.integrated_gradients(model.eval(), torch.randn(4, 5), steps="auto")
    assert a.params["unconverged"] is None
    fixed = saliency.integrated_gradients(model, torch.randn(2, 5), steps=40)
    assert "unconverged" not in fixed.params  # only steps='auto' measures convergence
