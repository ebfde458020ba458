"""The randomisation test and the batched similarities it rests on, against independent oracles:
scipy.stats.spearmanr, window-by-window SSIM (and scikit-image when installed), torch.func.jacrev
on hand-randomised copies of the model."""

from __future__ import annotations

import copy
import functools
import json
import warnings

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

import saliency
from saliency import models
from saliency.audit import RandomizationResult, randomization_test
from saliency.audit import similarity as sim
from saliency.audit.randomization_figures import plot_randomization


@pytest.fixture(scope="module")
def digits():
    model, _ = models.load("digits")
    x, y = models.held_out("digits", 32)
    return model, x, y


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 4)
    )


def fixed_reinit(module: nn.Module) -> None:
    """A re-initialisation an oracle can repeat: values from the parameter shapes alone."""
    with torch.no_grad():
        for i, p in enumerate(module.parameters()):
            p.copy_(torch.sin(torch.arange(p.numel()) * 1.7 + i + p.numel()).reshape(p.shape))


# -- similarities ------------------------------------------------------------------------------
def test_spearman_matches_scipy_with_ties_and_broadcasting():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3, 50, generator=g).round(decimals=1)  # many ties
    b = torch.randn(3, 50, generator=g).round(decimals=1)
    a[0, 0, :20] = 0.0
    ours = sim.spearman(a, b)
    assert ours.shape == (4, 3)
    for i in range(4):
        for j in range(3):
            assert ours[i, j].item() == pytest.approx(
                scipy.stats.spearmanr(a[i, j], b[j])[0], abs=1e-12
            )
    matrix = sim.spearman_matrix(a)
    ref = scipy.stats.spearmanr(a[2].T.numpy())[0]  # columns are the variables
    np.testing.assert_allclose(matrix[2].numpy(), ref, atol=1e-12)
    assert torch.isnan(sim.spearman(torch.ones(5), torch.arange(5.0)))


def test_correlations_stay_in_range_and_equal_maps_give_exactly_one():
    # Quantus's MPRT range checks: 1.0000000000000002 for a map against itself was out of range.
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        a = torch.randn(3, 64, generator=g)
        near = a + 1e-7 * torch.randn(3, 64, generator=g)  # rounding is where the edge is
        for value in (
            sim.spearman(a, near),
            sim.cosine(a, near),
            sim.cosine_matrix(torch.cat([a, near])),
            sim.spearman_matrix(torch.cat([a, -near])),
        ):
            assert bool(((value >= -1) & (value <= 1)).all())
        assert bool((sim.spearman(a, a) == 1).all()) and bool((sim.cosine(a, a) == 1).all())
        assert bool((sim.spearman(a, 3 * a + 1) == 1).all())
        assert bool((sim.spearman(a, -a) == -1).all())
        assert bool((sim.spearman_matrix(a).diagonal() == 1).all())
        assert bool((sim.cosine_matrix(a).diagonal() == 1).all())
    assert torch.isnan(sim.cosine(torch.zeros(4), torch.ones(4)))  # clamping keeps NaN


def test_ranks_match_scipy_rankdata():
    x = torch.tensor([[3.0, 1.0, 3.0, 2.0, 3.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(sim.ranks(x).numpy(), scipy.stats.rankdata(x.numpy(), axis=1))


def test_cosine_matches_torch_and_zero_maps_are_nan():
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(2, 5, 30, generator=g)
    ref = nn.functional.cosine_similarity(maps[:, :, None], maps[:, None, :], dim=-1)
    torch.testing.assert_close(sim.cosine_matrix(maps), ref.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        sim.cosine(maps[:, 0], maps[:, 1]), ref[:, 0, 1].double(), atol=1e-6, rtol=0
    )
    assert torch.isnan(sim.cosine(torch.zeros(4), torch.ones(4)))


def naive_ssim(a: np.ndarray, b: np.ndarray, w: int = 7) -> float:
    """SSIM written window by window from Wang et al. (2004), sample covariances."""
    span = max(a.max(), b.max()) - min(a.min(), b.min())
    c1, c2 = (0.01 * span) ** 2, (0.03 * span) ** 2
    if a.ndim == 1:
        a, b = a[None], b[None]
        wins = [(slice(0, 1), slice(j, j + w)) for j in range(a.shape[1] - w + 1)]
    else:
        wins = [
            (slice(i, i + w), slice(j, j + w))
            for i in range(a.shape[0] - w + 1)
            for j in range(a.shape[1] - w + 1)
        ]
    scores = []
    for win in wins:
        pa, pb = a[win].ravel(), b[win].ravel()
        ma, mb = pa.mean(), pb.mean()
        va, vb = pa.var(ddof=1), pb.var(ddof=1)
        cov = ((pa - ma) * (pb - mb)).sum() / (len(pa) - 1)
        scores.append(
            ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
        )
    return float(np.mean(scores))


def test_ssim_matches_window_by_window_oracle_and_scikit_image():
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(3, 9, 11, generator=g), torch.rand(3, 9, 11, generator=g)
    b[1] = a[1] ** 2  # related maps, not just noise
    ours = sim.ssim(a, b)
    for i in range(3):
        assert ours[i].item() == pytest.approx(
            naive_ssim(a[i].double().numpy(), b[i].double().numpy()), abs=1e-10
        )
    s1, s2 = torch.rand(40, generator=g), torch.rand(40, generator=g)
    assert sim.ssim(s1, s2, dims=1).item() == pytest.approx(
        naive_ssim(s1.double().numpy(), s2.double().numpy()), abs=1e-10
    )
    matrix = sim.ssim_matrix(torch.stack([a[0], a[1], b[1]]))
    assert matrix[1, 2].item() == pytest.approx(ours[1].item(), abs=1e-12)
    assert matrix[2, 1].item() == pytest.approx(ours[1].item(), abs=1e-12)
    torch.testing.assert_close(matrix.diagonal(), torch.ones(3, dtype=torch.float64))
    # a 5x5 map gets a 5-wide window instead of scikit-image's error
    small = torch.rand(2, 5, 5, generator=g)
    assert sim.ssim(small[0], small[1]).item() == pytest.approx(
        naive_ssim(small[0].double().numpy(), small[1].double().numpy(), 5), abs=1e-10
    )
    with pytest.raises(ValueError, match="too small"):
        sim.ssim(torch.rand(2, 2), torch.rand(2, 2))
    skimage = pytest.importorskip("skimage.metrics")
    for i in range(3):
        x, y = a[i].double().numpy(), b[i].double().numpy()
        span = max(x.max(), y.max()) - min(x.min(), y.min())
        ref = skimage.structural_similarity(x, y, data_range=span)
        assert ours[i].item() == pytest.approx(ref, abs=1e-10)


# -- the test on the bundled digits model (the acceptance test) ------------------------
def test_digits_gradients_pass_cascading_randomisation(digits):
    model, x, _ = digits
    r = randomization_test(model, x, saliency.gradients, seed=0)
    assert r.steps == ("original", "classifier.3", "classifier.1", "features.2", "features.0")
    rho, ssim = r.similarity["spearman"], r.similarity["ssim"]
    assert rho.shape == ssim.shape == (5, 32, 10)
    # not vacuous: nothing randomised gives identical maps
    assert float(rho[0].min()) > 1 - 1e-9
    assert float(ssim[0].min()) > 1 - 1e-9
    assert torch.equal(r.classes, torch.arange(10).expand(32, 10))
    # fully randomised: the maps no longer resemble the original ones
    assert float(rho[-1].mean()) < 0.2
    assert float(ssim[-1].mean()) < 0.2
    assert float(rho[1].mean()) < 0.9  # the first step already changes them
    summary = r.summary()
    json.dumps(summary, allow_nan=False)
    assert summary["steps"] == list(r.steps)
    assert summary["final"]["spearman"] == pytest.approx(float(rho[-1].mean()))
    assert summary["spearman"]["mean"][0] == pytest.approx(1.0)


def test_caller_model_inputs_and_global_rng_are_untouched(digits):
    model, x, _ = digits
    model = copy.deepcopy(model).train()  # training mode must survive too (no dropout here)
    model.features[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    x_before = x.clone()
    rng = torch.get_rng_state()
    randomization_test(model, x, saliency.gradients, seed=3, order="independent")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert torch.equal(x, x_before)
    assert torch.equal(torch.get_rng_state(), rng)


# -- against an oracle that randomises copies by hand -----------------------------------------
def oracle(model, x, names, order, classes):
    """Spearman of |d out / d x| per step, from jacrev on copies randomised by hand."""

    def maps(m):
        jac = torch.func.vmap(torch.func.jacrev(lambda xi: m(xi[None])[0]))(x)  # [B, C, D]
        return jac[torch.arange(len(x))[:, None], classes].abs()

    base = maps(model).detach()
    out = [np.ones((len(x), classes.shape[1]))]
    work = copy.deepcopy(model)
    for name in names:
        if order == "independent":
            work = copy.deepcopy(model)
        fixed_reinit(work.get_submodule(name))
        now = maps(work).detach()
        out.append(
            np.array(
                [
                    [
                        scipy.stats.spearmanr(base[b, k], now[b, k])[0]
                        for k in range(classes.shape[1])
                    ]
                    for b in range(len(x))
                ]
            )
        )
    return np.stack(out)


@pytest.mark.parametrize("order", ["cascading", "independent"])
def test_matches_hand_randomised_copies(order):
    model = mlp()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(4))
    r = randomization_test(
        model, x, saliency.gradients, order=order, similarity="spearman", reinit=fixed_reinit
    )
    assert r.steps == ("original", "4", "2", "0")  # top down, in the order they run
    ref = oracle(model, x, ["4", "2", "0"], order, torch.arange(4).expand(5, 4))
    np.testing.assert_allclose(r.similarity["spearman"].numpy(), ref, atol=1e-6)


def test_layer_order_comes_from_the_forward_pass_not_registration():
    class Backwards(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(8, 3)  # registered first, runs last
            self.body = nn.Linear(5, 8)
            self.unused = nn.Linear(2, 2)  # never runs: nothing to randomise

        def forward(self, x):
            return self.head(torch.tanh(self.body(x)))

    r = randomization_test(Backwards(), torch.randn(4, 5), saliency.gradients, seed=0)
    assert r.steps == ("original", "head", "body")


def test_found_layers_own_parameters_only_and_given_layers_whole():
    class Rooted(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.full((3,), 2.0))  # the root's own parameter
            self.body = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))

        def forward(self, x):
            return self.body(x) * self.scale

    model, x = Rooted(), torch.randn(4, 5)
    states = []

    def spy(m, x, classes=None, **options):
        states.append({k: v.clone() for k, v in m.state_dict().items()})
        return saliency.gradients(m, x, classes, **options)

    r = randomization_test(model, x, spy, seed=0, order="independent")
    assert r.steps == ("original", "", "body.2", "body.0")  # the root runs last: its own step
    root_step = states[2]
    changed = {k for k, v in root_step.items() if not torch.equal(v, model.state_dict()[k])}
    assert changed == {"scale"}  # no reset_parameters: normal noise of the same magnitude
    states.clear()
    r = randomization_test(model, x, spy, seed=0, layers=["body"])
    assert r.steps == ("original", "body")
    changed = {k for k, v in states[2].items() if not torch.equal(v, model.state_dict()[k])}
    assert changed == {"body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"}


def test_a_step_that_changes_nothing_warns():
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3))  # LayerNorm: 1, 0
    with pytest.warns(UserWarning, match="layer '1' left its parameters unchanged"):
        r = randomization_test(model, torch.randn(3, 4), saliency.gradients, seed=0)
    assert r.steps == ("original", "2", "1", "0")


def test_given_layers_by_name_or_module_in_the_order_given():
    model = mlp()
    x = torch.randn(3, 6)
    r = randomization_test(model, x, saliency.gradients, layers=[model[0], "4"], seed=1)
    assert r.steps == ("original", "0", "4")
    independent = randomization_test(
        model, x, saliency.gradients, layers=["2"], order="independent", reinit=fixed_reinit
    )
    ref = oracle(model, x, ["2"], "independent", torch.arange(4).expand(3, 4))
    np.testing.assert_allclose(independent.similarity["ssim"].shape, (2, 3, 4))
    np.testing.assert_allclose(independent.similarity["spearman"].numpy(), ref, atol=1e-6)


def test_wrapped_model_and_training_mode_dropout(digits):
    model, x, _ = digits

    class Wrapped(nn.Module):
        """The caller's habit: preprocessing around a model held as an attribute."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, images):
            return self.inner(images.clamp(-3, 3))

    r = randomization_test(Wrapped(model), x[:4], saliency.gradients, seed=0)
    assert r.steps[1] == "inner.classifier.3" and r.steps[-1] == "inner.features.0"
    assert float(r.similarity["spearman"][0].min()) > 1 - 1e-9
    noisy = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3)).train()
    with pytest.raises(ValueError, match="dropout"):  # the engine refuses random outputs
        randomization_test(noisy, torch.randn(3, 4), saliency.gradients, seed=0)


def test_a_layer_method_follows_its_layer_into_the_copy(digits):
    model, x, _ = digits
    x = x[:6]
    cam = functools.partial(saliency.gradcam, layer=model.features[2])  # a module of the caller's
    r = randomization_test(model, x, cam, similarity="spearman", seed=0)
    direct = randomization_test(model, x, saliency.gradcam, layer="features.2", seed=0)
    assert float(r.similarity["spearman"][0].nanmean()) > 1 - 1e-9
    torch.testing.assert_close(
        r.similarity["spearman"], direct.similarity["spearman"], equal_nan=True
    )
    # the randomised copy's maps changed: the layer followed the copy, not the caller's model
    assert float(r.similarity["spearman"][-1].nanmean()) < 0.9
    with pytest.raises(ValueError, match="layer: the Conv2d module is not part of the model"):
        randomization_test(model, x, saliency.gradcam, layer=nn.Conv2d(1, 1, 1), seed=0)


def test_seed_reproduces_and_differs():
    model, x = mlp(), torch.randn(6, 6)
    a = randomization_test(model, x, saliency.gradients, seed=5)
    b = randomization_test(model, x, saliency.gradients, seed=5)
    c = randomization_test(model, x, saliency.gradients, seed=6)
    torch.testing.assert_close(a.similarity["spearman"], b.similarity["spearman"], rtol=0, atol=0)
    assert not torch.allclose(a.similarity["spearman"][1:], c.similarity["spearman"][1:])
    assert (a.seed, a.summary()["seed"]) == (5, 5)


def test_a_drawn_seed_leaves_the_global_rng_alone_and_reproduces():
    model, x = mlp(), torch.randn(6, 6)
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    drawn = randomization_test(model, x, saliency.gradients)
    assert torch.equal(torch.get_rng_state(), rng)
    assert isinstance(drawn.seed, int) and drawn.summary()["seed"] == drawn.seed
    again = randomization_test(model, x, saliency.gradients, seed=drawn.seed)
    torch.testing.assert_close(
        again.similarity["spearman"], drawn.similarity["spearman"], rtol=0, atol=0
    )


def test_default_reinit_uses_the_layers_own_initialisation():
    model = mlp()
    x = torch.randn(4, 6)
    seen = {}

    def spy(m, x, classes=None, **options):
        seen.setdefault("models", []).append({k: v.clone() for k, v in m.state_dict().items()})
        return saliency.gradients(m, x, classes, **options)

    randomization_test(model, x, spy, seed=0, order="independent")
    original = model.state_dict()
    last_layer = seen["models"][2]  # after "original" on the model, "original" on the copy
    changed = {k for k, v in last_layer.items() if not torch.equal(v, original[k])}
    assert changed == {"4.weight", "4.bias"}
    bound = 1 / 12**0.5  # nn.Linear's reset_parameters: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert float(last_layer["4.weight"].abs().max()) <= bound


def test_classes_resolved_once_and_kept_for_every_step():
    model, x = mlp(), torch.randn(5, 6)
    calls = []

    def spy(m, x, classes=None, **options):
        calls.append(classes)
        return saliency.gradients(m, x, classes, **options)

    r = randomization_test(model, x, spy, classes=saliency.top_k(2), seed=0)
    top = model(x).topk(2, dim=1).indices
    assert torch.equal(r.classes, top)
    assert all(isinstance(c, torch.Tensor) and torch.equal(c, top) for c in calls[1:])
    assert r.similarity["spearman"].shape == (4, 5, 2)


def test_output_and_options_reach_the_method_without_overriding_a_partial():
    model, x = mlp(), torch.randn(3, 6)
    seen = []

    def spy(m, x, classes=None, **options):
        seen.append(dict(options))
        return saliency.gradients(m, x, classes, **options)

    randomization_test(model, x, functools.partial(spy, output="softmax"), seed=0)
    assert all(o["output"] == "softmax" for o in seen)
    seen.clear()
    randomization_test(
        model, x, spy, output="log_softmax", max_memory="64MB", times_input=True, seed=0
    )
    assert all(o["output"] == "log_softmax" and o["times_input"] for o in seen)
    assert all(o["max_memory"] == "64MB" for o in seen)


def test_forward_kwargs_reach_the_model():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x, *, scale):
            return self.lin(x * scale)

    x = torch.randn(3, 4)
    r = randomization_test(Scaled(), x, saliency.gradients, scale=torch.tensor(2.0), seed=0)
    assert r.steps == ("original", "lin")


def test_noisy_method_warns_and_a_seeded_one_does_not(digits):
    model, x, _ = digits
    x = x[:4]
    with pytest.warns(UserWarning, match="not deterministic"):
        r = randomization_test(
            model,
            x,
            functools.partial(saliency.smoothgrad, n_samples=4),
            similarity="spearman",
            seed=0,
        )
    assert float(r.similarity["spearman"][0].mean()) < 0.99
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = randomization_test(
            model, x, functools.partial(saliency.smoothgrad, n_samples=4, seed=0), seed=0
        )
    assert float(r.similarity["spearman"][0].min()) > 1 - 1e-9


def test_rgb_maps_have_channels_summed_before_absolute_values():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 3)
    )
    x = torch.randn(2, 3, 8, 8)
    r = randomization_test(model, x, saliency.gradients, seed=0, keep_maps=True)
    grads = saliency.gradients(model, x).values
    expect = grads.sum(2).abs()
    expect = expect / expect.flatten(2).amax(-1)[..., None, None]
    torch.testing.assert_close(r.maps[0], expect)
    assert r.maps.shape == (3, 2, 3, 8, 8)


def test_figure_draws_the_kept_maps(digits):
    model, x, _ = digits
    r = randomization_test(model, x[:3], saliency.gradients, seed=0, keep_maps=True)
    fig = plot_randomization(r, samples=[0, 2], classes=[0, 5, 9], similarity="ssim")
    assert len(fig.axes) == 2 * 3 * len(r.steps)
    assert "ssim" in fig.axes[1].get_title()
    with pytest.raises(ValueError, match="keep_maps=True"):
        plot_randomization(randomization_test(model, x[:2], saliency.gradients, seed=0))
    with pytest.raises(ValueError, match="not computed"):
        plot_randomization(r, similarity="cosine")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"order": "bottom_up"}, ValueError, "order: expected one of"),
        ({"similarity": "pearson"}, ValueError, "similarity: expected one of"),
        ({"similarity": []}, ValueError, "similarity: expected a name"),
        ({"layers": ["nope"]}, ValueError, r"no module 'nope'.*\['0', '2', '4'\]"),
        ({"layers": ["1"]}, ValueError, "module '1' has no parameters"),
        ({"layers": "0"}, TypeError, "layers: expected None or a non-empty list"),
        ({"layers": [nn.Linear(2, 2)]}, ValueError, "not part of the model"),
        ({"seed": 1.5}, TypeError, "seed: expected an int"),
        ({"abs": "yes"}, TypeError, "abs: expected True or False"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        randomization_test(mlp(), torch.randn(2, 6), saliency.gradients, **kwargs)


def test_bad_models_and_methods_are_named():
    x = torch.randn(2, 6)
    with pytest.raises(TypeError, match=r"model: .*nn\.Module"):
        randomization_test(lambda t: t[:, :3], x, saliency.gradients)
    with pytest.raises(TypeError, match=r"method: expected it to return a saliency\.Attribution"):
        randomization_test(mlp(), x, lambda m, x, classes=None, **o: m(x))
    with pytest.raises(ValueError, match="no module with parameters ran"):
        randomization_test(nn.Sequential(nn.Identity()), x, saliency.gradients)
    with pytest.raises(ValueError, match="'ssim' compares signals"):
        randomization_test(
            nn.Sequential(nn.Flatten(), nn.Linear(16, 2)),
            torch.randn(2, 1, 2, 2, 4),
            saliency.gradients,
        )


def test_result_type_is_exported():
    assert isinstance(
        randomization_test(mlp(), torch.randn(2, 6), saliency.gradients, seed=0),
        RandomizationResult,
    )
