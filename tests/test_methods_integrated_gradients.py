"""saliency.integrated_gradients against Captum's IntegratedGradients and its unit-test examples."""

from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients
from captum.testing.helpers.basic_models import (
    BasicModel,
    BasicModel2,
    BasicModel3,
    BasicModel_MultiLayer,
)
from captum.testing.helpers.classification_models import SigmoidModel, SoftmaxModel
from torch import nn

import saliency
from saliency.methods import _request, baselines

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")

RULES = ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"]


def tanh_mlp(d=6, c=4, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, c)).double().eval()


@pytest.mark.parametrize("rule", RULES)
def test_equals_captum_for_every_class(rule):
    model = tanh_mlp()
    x = torch.randn(4, 6, dtype=torch.float64)
    base = torch.linspace(-1, 1, 6, dtype=torch.float64).unsqueeze(0)  # broadcast over samples
    n = 7
    a = saliency.integrated_gradients(model, x, baseline=base, steps=n, rule=rule, strategy="loop")
    assert a.values.shape == (4, 4, 6) and a.delta.shape == (4, 4)
    assert a.method == "integrated_gradients" and a.params["rule"] == rule
    ig = IntegratedGradients(model)
    for c in range(4):
        ref, ref_delta = ig.attribute(
            x, baselines=base, target=c, n_steps=n, method=rule, return_convergence_delta=True
        )
        if rule == "riemann_trapezoid":
            # Captum's trapezoid weights sum to 1 - 1/n; ours are the textbook ones.
            ref = ref * n / (n - 1)
            gap = model(x)[:, c] - model(base.expand_as(x))[:, c]
            ref_delta = ref.sum(1) - gap.detach()
        torch.testing.assert_close(a.select(c), ref, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(a.delta[:, c], ref_delta, rtol=1e-4, atol=1e-6)


def two_inputs(model: nn.Module):
    # Captum's paper models take two 1-D inputs; here they are the two columns of x.
    return lambda x: model(x[:, 0], x[:, 1])


@pytest.mark.parametrize("rule", ["riemann_right", "gausslegendre"])
def test_ig_paper_examples(rule):
    # Sundararajan et al. 2017, section 2: f(3, 1) attributes 1.5 to x1 and -0.5 to x2.
    x = torch.tensor([[3.0, 1.0]])
    a2 = saliency.integrated_gradients(two_inputs(BasicModel2()), x, rule=rule, strategy="loop")
    a3 = saliency.integrated_gradients(two_inputs(BasicModel3()), x, rule=rule, strategy="loop")
    for a in (a2, a3):
        torch.testing.assert_close(a.values[0, 0], torch.tensor([1.5, -0.5]), atol=0.05, rtol=0)
    # implementation invariance: both models compute the same function
    torch.testing.assert_close(a2.values.sum(), a3.values.sum(), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("value", "base"), [(1.0, 0.0), (0.0, 0.0), (-1.0, 0.00001)])
def test_univariable_completeness(value, base):
    # Captum's univariable test: f(x) = min(x, 1), 500 trapezoid steps, |delta| < 0.07.
    x = torch.tensor([[value]])
    model = BasicModel()
    a = saliency.integrated_gradients(
        model, x, baseline=base, steps=500, rule="riemann_trapezoid", strategy="loop"
    )
    gap = model(x) - model(torch.tensor([[base]]))
    torch.testing.assert_close(a.delta[0], a.values.sum() - gap[0], atol=1e-6, rtol=0)
    assert float(a.delta.abs().max()) < 0.07
    # Gauss-Legendre never samples the kink at x = 1: exact for this piecewise-linear path.
    gl = saliency.integrated_gradients(model, x, baseline=base, steps=8, strategy="loop")
    assert float(gl.delta.abs().max()) < 1e-6


def test_classification_models_completeness():
    # Captum's classification tests: |delta| < 0.005 at 200 steps; here for every class.
    torch.manual_seed(1234)
    sig = SigmoidModel(20, 5, 1).eval()
    x = torch.arange(0.0, 20.0).unsqueeze(0)
    a = saliency.integrated_gradients(sig, x, steps=200, rule="riemann_right", strategy="loop")
    ref = IntegratedGradients(sig).attribute(x, target=0, n_steps=200, method="riemann_right")
    torch.testing.assert_close(a.values[:, 0], ref, rtol=1e-4, atol=1e-6)
    assert float(a.delta.abs().max()) < 0.005

    soft = SoftmaxModel(40, 20, 10).eval()
    x = torch.arange(0.0, 120.0).reshape(3, 40)
    a = saliency.integrated_gradients(soft, x, steps=200, strategy="loop")
    assert a.values.shape == (3, 10, 40) and float(a.delta.abs().max()) < 0.005

    targets = [5, 5, 2]
    base = torch.zeros(1, 40)
    a = saliency.integrated_gradients(
        soft, x, torch.tensor(targets).unsqueeze(1), baseline=base, steps=200,
        rule="riemann_trapezoid", strategy="loop",
    )  # fmt: skip
    ref = IntegratedGradients(soft).attribute(
        x, baselines=base, target=targets, n_steps=200, method="riemann_trapezoid"
    )
    torch.testing.assert_close(a.values[:, 0], ref * 200 / 199, rtol=1e-4, atol=1e-6)
    assert float(a.delta.abs().max()) < 0.005


def test_completeness_within_one_percent_for_every_class():
    model = tanh_mlp(d=10, c=5, seed=3)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)  # a curved function, not nearly linear
    x = torch.randn(16, 10, dtype=torch.float64) * 2
    a = saliency.integrated_gradients(model, x, steps=50, strategy="loop")
    gap = (a.outputs - model(torch.zeros_like(x))).detach()
    assert float(gap.abs().min()) > 1e-3  # relative gaps are meaningful here
    relative = a.delta.abs() / gap.abs()
    assert float(relative.max()) < 0.01
    coarse = saliency.integrated_gradients(model, x, steps=3, rule="riemann_left", strategy="loop")
    assert float(coarse.delta.abs().max()) > float(a.delta.abs().max())  # delta is informative


def test_top_k_is_resolved_at_x_and_contrasts_are_linear():
    model = tanh_mlp()
    x = torch.randn(5, 6, dtype=torch.float64)
    top = saliency.integrated_gradients(model, x, saliency.top_k(2), steps=8, strategy="loop")
    ids = model(x).topk(2, dim=1).indices
    assert torch.equal(top.classes, ids)
    explicit = saliency.integrated_gradients(model, x, ids, steps=8, strategy="loop")
    torch.testing.assert_close(top.values, explicit.values)
    full = saliency.integrated_gradients(model, x, steps=8, strategy="loop")
    c = saliency.integrated_gradients(
        model, x, saliency.contrast([0, 3], [2, 1]), steps=8, strategy="loop"
    )
    torch.testing.assert_close(c.values[:, 0], full.contrast(0, 2))
    torch.testing.assert_close(c.values[:, 1], full.contrast(3, 1))
    torch.testing.assert_close(c.delta[:, 0], full.delta[:, 0] - full.delta[:, 2])
    assert torch.equal(c.classes, torch.tensor([[0, 3]] * 5))


def test_output_transform_is_the_explained_function():
    model = tanh_mlp()
    x = torch.randn(3, 6, dtype=torch.float64)
    a = saliency.integrated_gradients(model, x, output="log_softmax", steps=40, strategy="loop")
    gap = torch.log_softmax(model(x), 1) - torch.log_softmax(model(torch.zeros_like(x)), 1)
    torch.testing.assert_close(a.values.sum(-1), gap.detach(), atol=1e-4, rtol=0)
    torch.testing.assert_close(a.outputs, torch.log_softmax(model(x), 1).detach())


def test_per_sample_forward_kwargs_follow_their_sample():
    model = BasicModel_MultiLayer().double()
    x = torch.tensor([[1.5, 2.0, 1.3], [0.5, 0.1, 2.3], [1.5, 2.0, 1.3]], dtype=torch.float64)
    add = torch.tensor([[0.1, -2.0, 0.3], [1.0, 1.0, 1.0], [-5.0, 0.0, 0.0]], dtype=torch.float64)
    a = saliency.integrated_gradients(
        model, x, steps=10, add_input=add, max_memory=4_000, strategy="loop"
    )
    for c in range(2):
        ref = IntegratedGradients(model).attribute(
            x, target=c, n_steps=10, additional_forward_args=(add,)
        )
        torch.testing.assert_close(a.select(c), ref, rtol=1e-4, atol=1e-7)


def test_shared_forward_kwargs_pass_through_unchanged():
    seen = []

    def model(x, scale, offset):
        seen.append((scale, offset.shape))
        return torch.tanh(x * scale + offset)

    x = torch.randn(4, 3, dtype=torch.float64)
    offset = torch.ones(3, dtype=torch.float64)  # not per-sample: its first dimension is not B
    saliency.integrated_gradients(model, x, steps=5, scale=2.0, offset=offset, strategy="loop")
    assert {s for s, _ in seen} == {2.0} and {o for _, o in seen} == {(3,)}


def test_baselines():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
    cnn = cnn.double().eval()
    x = torch.rand(2, 2, 8, 8, dtype=torch.float64)

    def ig(**kw):
        return saliency.integrated_gradients(cnn, x, steps=4, strategy="loop", **kw)

    zeros = ig(baseline="zeros")
    torch.testing.assert_close(zeros.values, ig(baseline=0).values)
    torch.testing.assert_close(zeros.values, ig(baseline=torch.zeros(2, 1, 1)).values)
    half = ig(baseline=lambda t: t * 0.5)
    torch.testing.assert_close(half.values, ig(baseline=x * 0.5).values)
    assert half.params["baseline"].endswith("<lambda>")
    blurred = ig(baseline="blur")
    torch.testing.assert_close(blurred.values, ig(baseline=baselines.blur(x)).values)
    assert blurred.params["baseline"] == "blur"

    u1, u2 = ig(baseline="uniform", seed=3), ig(baseline="uniform", seed=3)
    assert torch.equal(u1.values, u2.values) and u1.params["seed"] == 3
    assert not torch.equal(u1.values, ig(baseline="uniform", seed=4).values)
    drawn = ig(baseline="uniform")
    assert isinstance(drawn.params["seed"], int)
    again = ig(baseline="uniform", seed=drawn.params["seed"])
    assert torch.equal(drawn.values, again.values)  # the recorded seed reproduces it
    assert zeros.params["seed"] is None


def test_uniform_and_blur_baselines_themselves():
    x = torch.stack([torch.linspace(-2, 3, 50), torch.linspace(10, 11, 50)]).view(2, 2, 5, 5)
    u = baselines.uniform(x, torch.Generator().manual_seed(0))
    assert u.shape == x.shape
    assert float(u[0].min()) >= -2 and float(u[0].max()) <= 3
    assert float(u[1].min()) >= 10 and float(u[1].max()) <= 11
    flat = torch.full((1, 3, 6, 6), 0.7)
    torch.testing.assert_close(baselines.blur(flat), flat)  # constant images stay constant
    with pytest.raises(ValueError, match=r"baseline='blur': expected images \[B, C, H, W\]"):
        baselines.blur(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="sigma: expected a positive number of pixels"):
        baselines.blur(flat, sigma=0)


def test_chunked_equals_unchunked_and_streams():
    grad_module = _request  # every engine call of a method goes through here
    model = tanh_mlp(d=5, c=3)
    x = torch.randn(6, 5, dtype=torch.float64)
    full = saliency.integrated_gradients(model, x, steps=9, strategy="loop")
    rows_per_call = []
    real = grad_module.evaluate

    def spy(model, inputs, *args, **kwargs):
        rows_per_call.append(inputs.shape[0])
        return real(model, inputs, *args, **kwargs)

    for budget in (20_000, 2_500):  # several points per call, then part of one point
        rows_per_call.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(grad_module, "evaluate", spy)
            tight = saliency.integrated_gradients(
                model, x, steps=9, strategy="loop", max_memory=budget
            )
        torch.testing.assert_close(tight.values, full.values)
        torch.testing.assert_close(tight.delta, full.delta)
        assert len(rows_per_call) > 1 and sum(rows_per_call) == 9 * 6
        assert max(rows_per_call) * 3 * 5 * 8 <= budget / 4
    assert max(rows_per_call) < 6  # the last budget split samples within a path point


def test_memory_too_small_for_the_running_sums():
    model = tanh_mlp()
    x = torch.randn(4, 6, dtype=torch.float64)
    with pytest.raises(MemoryError, match="max_memory=500 bytes is too small: the running sums"):
        saliency.integrated_gradients(model, x, max_memory=500)


def test_leaves_model_and_input_alone():
    model = tanh_mlp().train()
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    before = x.detach().clone()
    a = saliency.integrated_gradients(model, x, steps=4, strategy="loop")
    assert model.training and all(p.grad is None for p in model.parameters())
    assert torch.equal(x.detach(), before) and x.grad is None
    assert not a.values.requires_grad


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"steps": 0}, ValueError, "steps: expected a positive int, got 0"),
        ({"steps": 2.5}, ValueError, "steps: expected a positive int, got 2.5"),
        ({"steps": True}, ValueError, "steps: expected a positive int, got True"),
        ({"rule": "simpson"}, ValueError, "rule: expected one of .*got 'simpson'"),
        ({"rule": "riemann_trapezoid", "steps": 1}, ValueError, "trapezoid rule needs at least 2"),
        ({"baseline": torch.zeros(3)}, ValueError, r"baseline: shape \(3,\) cannot broadcast"),
        ({"baseline": "mean"}, ValueError, "baseline: expected a number, .* got 'mean'"),
        ({"baseline": True}, TypeError, "baseline: expected a number, not the bool"),
        ({"baseline": [0.0] * 6}, TypeError, "baseline: expected .* got list"),
        ({"baseline": lambda t: 0.0}, TypeError, "baseline: the callable must return a tensor"),
        ({"baseline": "blur"}, ValueError, "baseline='blur': expected images"),
        ({"baseline": "uniform", "seed": -1}, ValueError, "seed: expected None or a non-negative"),
        ({"strategy": "fastest"}, ValueError, "strategy: expected 'auto' or one of"),
        ({"output": "probabilities"}, ValueError, "output: expected one of"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    model = tanh_mlp()
    x = torch.randn(2, 6, dtype=torch.float64)
    with pytest.raises(error, match=match):
        saliency.integrated_gradients(model, x, **kwargs)


def test_single_point_rules():
    model = tanh_mlp()
    x = torch.randn(2, 6, dtype=torch.float64)
    mid = saliency.integrated_gradients(model, x, steps=1, rule="riemann_middle", strategy="loop")
    gl = saliency.integrated_gradients(model, x, steps=1, strategy="loop")
    torch.testing.assert_close(mid.values, gl.values)  # both: the gradient at the midpoint
    g = saliency.gradients(model, x / 2, strategy="loop").values * x.unsqueeze(1)
    torch.testing.assert_close(gl.values, g)
