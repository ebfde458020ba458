"""saliency.smoothgrad against independent recomputation at the same noisy inputs and Captum."""

from __future__ import annotations

import functools

import pytest
import torch
from captum.attr import NoiseTunnel, Saliency
from captum.testing.helpers.basic_models import BasicModel_MultiLayer
from torch import nn

import saliency
from saliency.methods import _gradients

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")


def tanh_mlp(d=5, c=3, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 12), nn.Tanh(), nn.Linear(12, c)).double().eval()


def noise_draws(x, n, std, seed):
    """The documented noise: copy j is std * randn(x.shape) drawn in order from Generator(seed)."""
    g = torch.Generator().manual_seed(seed)
    std = std.view(-1, *[1] * (x.ndim - 1))
    return [torch.randn(x.shape, generator=g, dtype=x.dtype) * std for _ in range(n)]


def relative_std(x, noise):
    flat = x.flatten(1)
    return noise * (flat.max(1).values - flat.min(1).values)


def jacobians(model, x, **kwargs):
    """Oracle: the full Jacobian [B, C, *in] by torch.func, one sample at a time."""

    def one(xi, *kw):
        return model(
            xi.unsqueeze(0), **dict(zip(kwargs, [k.unsqueeze(0) for k in kw], strict=True))
        ).squeeze(0)

    return torch.func.vmap(torch.func.jacrev(one))(x, *kwargs.values())


def draws_of(x, n, seed, noise=0.15):
    return noise_draws(x, n, relative_std(x, noise), seed)


@pytest.mark.parametrize("variant", ["mean", "squared", "var"])
def test_equals_independent_recomputation(variant):
    model = tanh_mlp()
    x = torch.randn(4, 5, dtype=torch.float64)
    n, seed = 7, 11
    a = saliency.smoothgrad(model, x, n_samples=n, variant=variant, seed=seed, strategy="loop")
    grads = torch.stack([jacobians(model, x + e) for e in draws_of(x, n, seed)])
    expected = {
        "mean": grads.mean(0),
        "squared": (grads**2).mean(0),
        "var": grads.var(0, unbiased=False),
    }[variant]
    torch.testing.assert_close(a.values, expected, rtol=1e-7, atol=1e-10)
    assert a.method == "smoothgrad" and a.params["variant"] == variant
    assert (
        a.params["seed"] == seed and a.params["noise"] == 0.15 and a.params["method"] == "gradients"
    )
    torch.testing.assert_close(a.outputs, model(x).detach())


@pytest.mark.parametrize(
    ("variant", "nt_type"),
    [("mean", "smoothgrad"), ("squared", "smoothgrad_sq"), ("var", "vargrad")],
)
def test_equals_captum_noise_tunnel_given_the_same_noise(monkeypatch, variant, nt_type):
    model = tanh_mlp()
    x = torch.randn(3, 5, dtype=torch.float64)
    n, seed, stdev = 6, 5, 0.4
    draws = noise_draws(x, n, torch.full((3,), stdev, dtype=torch.float64), seed)
    # Captum draws torch.normal(0, stdevs) for the copies laid out sample-major; hand it ours.
    sample_major = torch.stack(draws, 1).reshape(3 * n, 5)

    def normal(mean, std):
        assert std.shape == sample_major.shape and float(std.max()) == pytest.approx(stdev)
        return sample_major

    ours = saliency.smoothgrad(model, x, n_samples=n, noise_std=stdev, variant=variant, seed=seed)
    monkeypatch.setattr(torch, "normal", normal)
    for c in range(3):
        ref = NoiseTunnel(Saliency(model)).attribute(
            x, nt_type=nt_type, nt_samples=n, stdevs=stdev, target=c, abs=False
        )
        torch.testing.assert_close(ours.select(c), ref, rtol=1e-5, atol=1e-8)


def test_one_sample_without_noise_is_gradients():
    model = tanh_mlp()
    x = torch.randn(3, 5, dtype=torch.float64)
    g = saliency.gradients(model, x, strategy="loop")
    for kwargs in ({"noise": 0.0}, {"noise_std": 0.0}):
        a = saliency.smoothgrad(model, x, n_samples=1, strategy="loop", **kwargs)
        torch.testing.assert_close(a.values, g.values, rtol=0, atol=0)


def test_noise_std_per_sample():
    model = tanh_mlp()
    x = torch.randn(3, 5, dtype=torch.float64)
    common = dict(n_samples=4, seed=1, strategy="loop")
    same = saliency.smoothgrad(model, x, noise_std=0.2, **common)
    each = saliency.smoothgrad(model, x, noise_std=torch.full((3,), 0.2, dtype=torch.float64),
                               **common)  # fmt: skip
    torch.testing.assert_close(each.values, same.values, rtol=0, atol=0)
    assert each.params["noise_std"] == [0.2, 0.2, 0.2]
    mixed = saliency.smoothgrad(
        model, x, noise_std=torch.tensor([0.0, 0.2, 0.2], dtype=torch.float64), **common
    )
    g = saliency.gradients(model, x, strategy="loop")
    torch.testing.assert_close(mixed.values[0], g.values[0], rtol=1e-12, atol=1e-15)  # no noise
    torch.testing.assert_close(mixed.values[1:], same.values[1:], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"noise_std: expected a number or a floating tensor"):
        saliency.smoothgrad(model, x, noise_std=torch.ones(2))
    with pytest.raises(ValueError, match="noise_std: expected finite, non-negative"):
        saliency.smoothgrad(model, x, noise_std=torch.tensor([0.1, -1.0, 0.1]))


def test_seeds_reproduce_and_differ_and_leave_the_global_rng_alone():
    model = tanh_mlp()
    x = torch.randn(3, 5, dtype=torch.float64)
    state = torch.get_rng_state()
    a = saliency.smoothgrad(model, x, n_samples=5, seed=1, strategy="loop")
    b = saliency.smoothgrad(model, x, n_samples=5, seed=1, strategy="loop")
    c = saliency.smoothgrad(model, x, n_samples=5, seed=2, strategy="loop")
    assert torch.equal(a.values, b.values) and not torch.equal(a.values, c.values)
    drawn = saliency.smoothgrad(model, x, n_samples=5, strategy="loop")
    again = saliency.smoothgrad(model, x, n_samples=5, seed=drawn.params["seed"], strategy="loop")
    assert torch.equal(drawn.values, again.values)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("variant", ["mean", "squared", "var"])
def test_chunked_equals_unchunked(variant):
    grad_module = _gradients
    model = tanh_mlp()
    x = torch.randn(6, 5, dtype=torch.float64)
    kw = {"n_samples": 5, "seed": 3, "variant": variant, "strategy": "loop"}
    full = saliency.smoothgrad(model, x, **kw)
    row = 3 * 5 * 8  # bytes of one result row
    held = (3 if variant == "var" else 1) * 6 * row
    real = grad_module.evaluate
    for per_call, most in ((6_000, 12), (1_900, 3)):  # two copies of the batch, half a copy
        rows = []

        def spy(model, inputs, *args, rows=rows, **kwargs):
            rows.append(inputs.shape[0])
            return real(model, inputs, *args, **kwargs)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(grad_module, "evaluate", spy)
            tight = saliency.smoothgrad(model, x, max_memory=held + per_call, **kw)
        torch.testing.assert_close(tight.values, full.values, rtol=1e-9, atol=1e-12)
        assert max(rows[1:] if variant == "var" else rows) == most  # var: first call is at x


def test_top_k_is_resolved_at_x_and_contrasts_pass_through():
    model = tanh_mlp()
    x = torch.randn(8, 5, dtype=torch.float64) * 0.1
    kw = {"n_samples": 6, "noise": 1.0, "seed": 0, "strategy": "loop"}  # noise flips top classes
    top = saliency.smoothgrad(model, x, saliency.top_k(1), **kw)
    assert torch.equal(top.classes[:, 0], model(x).argmax(1))
    full = saliency.smoothgrad(model, x, **kw)
    torch.testing.assert_close(top.values[:, 0], full.values[torch.arange(8), top.classes[:, 0]])
    c = saliency.smoothgrad(model, x, saliency.contrast(2, 0), **kw)
    torch.testing.assert_close(c.values[:, 0], full.contrast(2, 0))


def test_smooths_any_method():
    model = tanh_mlp()
    x = torch.randn(3, 5, dtype=torch.float64)
    n, seed = 4, 9
    inner = functools.partial(saliency.integrated_gradients, steps=6, rule="riemann_middle")
    a = saliency.smoothgrad(model, x, n_samples=n, seed=seed, method=inner, strategy="loop")
    expected = torch.stack(
        [
            saliency.integrated_gradients(
                model, x + e, steps=6, rule="riemann_middle", strategy="loop"
            ).values
            for e in draws_of(x, n, seed)
        ]
    ).mean(0)
    torch.testing.assert_close(a.values, expected)
    assert a.params["method"] == "integrated_gradients" and a.delta is None
    assert a.params["method_params"]["steps"] == 6
    assert a.params["method_params"]["rule"] == "riemann_middle"

    gxi = functools.partial(saliency.gradients, times_input=True)
    b = saliency.smoothgrad(model, x, n_samples=n, seed=seed, method=gxi, strategy="loop")
    expected = torch.stack(
        [jacobians(model, x + e) * (x + e).unsqueeze(1) for e in draws_of(x, n, seed)]
    ).mean(0)
    torch.testing.assert_close(b.values, expected)
    assert b.params["method_params"] == {"times_input": True, "abs": False}


def test_per_sample_forward_kwargs_follow_their_sample():
    model = BasicModel_MultiLayer().double()
    x = torch.tensor([[1.5, 2.0, 1.3], [0.5, 0.1, 2.3], [1.5, 2.0, 1.3]], dtype=torch.float64)
    add = torch.tensor([[0.1, -2.0, 0.3], [1.0, 1.0, 1.0], [-5.0, 0.0, 0.0]], dtype=torch.float64)
    n, seed = 5, 2
    a = saliency.smoothgrad(
        model, x, n_samples=n, noise_std=0.5, seed=seed, add_input=add, max_memory=2_000
    )
    std = torch.full((3,), 0.5, dtype=torch.float64)
    grads = [jacobians(model, x + e, add_input=add) for e in noise_draws(x, n, std, seed)]
    torch.testing.assert_close(a.values, torch.stack(grads).mean(0))


def test_vargrad_is_exact_where_gradients_do_not_change():
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    with torch.no_grad():
        model.weight.mul_(1e4)  # large means: sum-of-squares minus squared sum would not cancel
    x = torch.randn(4, 6)
    v = saliency.smoothgrad(model, x, n_samples=9, variant="var", seed=0, strategy="loop")
    assert torch.equal(v.values, torch.zeros_like(v.values))


def test_zero_range_sample_warns_and_names_noise_std():
    model = tanh_mlp()
    x = torch.randn(3, 5, dtype=torch.float64)
    x[1] = 0.25
    with pytest.warns(UserWarning, match=r"samples \[1\] have a zero value range.*noise_std="):
        saliency.smoothgrad(model, x, n_samples=2, seed=0, strategy="loop")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        saliency.smoothgrad(model, x, n_samples=2, noise_std=0.1, seed=0, strategy="loop")
        saliency.smoothgrad(model, x, n_samples=2, noise=0.0, seed=0, strategy="loop")


def test_leaves_model_and_input_alone():
    model = tanh_mlp().train()
    x = torch.randn(3, 5, dtype=torch.float64)
    before = x.clone()
    saliency.smoothgrad(model, x, n_samples=3, variant="var", seed=0, strategy="loop")
    assert model.training and all(p.grad is None for p in model.parameters())
    assert torch.equal(x, before)


def not_an_attribution(model, x, classes=None, **kwargs):
    return torch.zeros(1)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_samples": 0}, ValueError, "n_samples: expected a positive int, got 0"),
        ({"n_samples": 2.0}, ValueError, "n_samples: expected a positive int, got 2.0"),
        ({"noise": -0.1}, ValueError, "noise: a standard deviation cannot be negative, got -0.1"),
        ({"noise": "big"}, TypeError, "noise: expected a finite number, got 'big'"),
        ({"noise": float("nan")}, TypeError, "noise: expected a finite number, got nan"),
        ({"noise_std": -1.0}, ValueError, "noise_std: a standard deviation cannot be negative"),
        ({"noise": 0.1, "noise_std": 0.2}, ValueError, "noise and noise_std: give one, not both"),
        ({"variant": "median"}, ValueError, "variant: expected one of .*got 'median'"),
        ({"method": "integrated_gradients"}, TypeError, "method: expected None or a method"),
        (
            {"method": not_an_attribution},
            TypeError,
            "method: expected a method following saliency.methods.Method",
        ),
        ({"seed": -1}, ValueError, "seed: expected None or a non-negative int, got -1"),
        ({"max_memory": 100}, MemoryError, "max_memory=100 bytes is too small"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    model = tanh_mlp()
    x = torch.randn(2, 5, dtype=torch.float64)
    with pytest.raises(error, match=match):
        saliency.smoothgrad(model, x, **{"n_samples": 2, **kwargs})


def test_streams_one_block_at_a_time():
    grad_module = _gradients
    model = tanh_mlp()
    x = torch.randn(6, 5, dtype=torch.float64)
    rows = []
    real = grad_module.evaluate

    def spy(model, inputs, *args, **kwargs):
        rows.append(inputs.shape[0])
        return real(model, inputs, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(grad_module, "evaluate", spy)
        saliency.smoothgrad(model, x, n_samples=10, seed=0, max_memory=20_000, strategy="loop")
    block = 3 * 5 * 8  # bytes of one row of the result
    held = 6 * block
    assert len(rows) > 1 and sum(rows) == 60
    assert max(rows) * block <= (20_000 - held) / 4


def test_shared_kwarg_as_long_as_the_noisy_batch_is_not_sliced():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 4)

    def model(x, temp):
        return lin(x) / temp

    x, temp = torch.randn(2, 3), torch.tensor([1.0, 2.0, 3.0, 4.0])  # per class, not per sample
    for method in (
        lambda: saliency.smoothgrad(model, x, n_samples=2, seed=0, strategy="replicate", temp=temp),
        lambda: saliency.integrated_gradients(model, x, steps=2, strategy="replicate", temp=temp),
    ):
        assert method().values.shape == (2, 4, 3)
