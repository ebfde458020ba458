"""deletion, insertion and ROAD against curves computed step by step by hand, a dense solve of
ROAD's imputation, and Quantus's PixelFlipping where it is installed."""

from __future__ import annotations

import copy
import functools
import json

import numpy as np
import pytest
import torch
from torch import nn

import saliency
from saliency import models
from saliency.audit import PerturbationCurves, deletion, insertion, road
from saliency.audit.curves_figures import plot_curves
from saliency.audit.imputation import noisy_linear_imputation


def _attribution(values: torch.Tensor, outputs: torch.Tensor, **params) -> saliency.Attribution:
    b, k = values.shape[:2]
    classes = params.pop("classes", torch.arange(k).expand(b, k))
    return saliency.Attribution(
        values=values, classes=classes, outputs=outputs, method="test", params=params
    )


def _oracle(score, x, maps, substrate, *, insertion=False, steps=None, lerf=False):
    """Curves one input at a time: every row, every point, its own loop."""
    n, k = maps.shape[:2]
    d = maps[0, 0].numel()
    steps = d if steps is None else steps
    out = np.zeros((n, k, steps + 1))
    for b in range(n):
        for c in range(k):
            m = maps[b, c].flatten().numpy()
            order = np.argsort(m if lerf else -m, kind="stable")
            for i in range(steps + 1):
                chosen = order[: i * d // steps]
                if insertion:
                    z = substrate[b].clone().flatten()
                    z[chosen] = x[b].flatten()[chosen]
                else:
                    z = x[b].clone().flatten()
                    z[chosen] = substrate[b].flatten()[chosen]
                out[b, c, i] = score(z.reshape(x[b].shape)[None], c)
    return out


@pytest.fixture
def tabular():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 12), nn.Tanh(), nn.Linear(12, 4))
    x = torch.randn(5, 7)
    values = torch.randn(5, 4, 7)  # no ties: every order is unique
    a = _attribution(values, model(x).detach(), output="logits")
    return model, x, a


def _score(model):
    return lambda z, c: float(model(z)[0, c].detach())


@pytest.mark.parametrize("steps", [7, 3])
def test_deletion_matches_step_by_step_curves(tabular, steps):
    model, x, a = tabular
    r = deletion(model, x, a, steps=steps, substrate=0.5, seed=0)
    ref = _oracle(_score(model), x, a.values, torch.full_like(x, 0.5), steps=steps)
    np.testing.assert_allclose(r.curves.numpy(), ref, rtol=1e-5, atol=1e-6)
    fractions = np.arange(steps + 1) * 7 // steps / 7
    np.testing.assert_allclose(r.fractions.numpy(), fractions)
    np.testing.assert_allclose(r.auc.numpy(), np.trapezoid(ref, fractions, axis=-1), rtol=1e-5)
    top = model(x).argmax(1)
    assert torch.equal(r.is_top[..., 0], torch.arange(4)[None] == top[:, None])
    assert r.kind == "deletion" and r.lower_is_better
    assert torch.equal(r.classes, a.classes)


def test_insertion_mirrors_deletion(tabular):
    model, x, a = tabular
    sub = torch.randn(5, 7)
    r = insertion(model, x, a, substrate=sub, seed=0)
    ref = _oracle(_score(model), x, a.values, sub, insertion=True)
    np.testing.assert_allclose(r.curves.numpy(), ref, rtol=1e-5, atol=1e-6)
    assert not r.lower_is_better
    torch.testing.assert_close(r.curves[..., -1], model(x).detach())
    torch.testing.assert_close(r.curves[..., 0], model(sub).detach())


def test_top_rate_follows_the_rows_on_top_at_x_for_insertion_and_deletion():
    # Class 0 wins on the blank substrate (its bias), class 1 wins at x (feature 1, about 30).
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
        model.weight.zero_()
        model.weight[1, 1] = 1.0
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)) * 0.1
    x[:, 1] += 30
    a = saliency.gradients(model, x, times_input=True)
    # Class 1's map ranks feature 1 first: inserted at point 1, removed at point 1; class 1 is
    # on top from point 1 on (insertion, from the substrate) and until point 1 (deletion).
    inserted = insertion(model, x, a, steps=4, random_order=False)
    assert inserted.summary()["top_rate"] == [0.0, 1.0, 1.0, 1.0, 1.0]
    deleted = deletion(model, x, a, steps=4, random_order=False)
    assert deleted.summary()["top_rate"] == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_random_order_is_one_permutation_per_sample_shared_by_its_classes():
    torch.manual_seed(1)
    model = nn.Linear(6, 3)  # linear: each step changes class c by -W[c, j] x[j] for one j
    x = torch.randn(4, 6)
    a = _attribution(torch.randn(4, 3, 6), model(x).detach(), output="logits")
    r = deletion(model, x, a, steps=6, substrate=0.0, seed=3)
    steps = r.random_curves.diff(dim=-1)  # [B, K, 6]
    for b in range(4):
        effects = -(model.weight * x[b]).detach()  # [K, D]: removing feature j from every class
        used = []
        for i in range(6):
            match = [
                j for j in range(6) if torch.allclose(steps[b, :, i], effects[:, j], atol=1e-5)
            ]
            assert match, f"sample {b}, step {i}: no single feature explains the step"
            used.append(match[0])
        assert sorted(used) == list(range(6))
    again = deletion(model, x, a, steps=6, substrate=0.0, seed=3)
    assert torch.equal(again.random_curves, r.random_curves)
    other = deletion(model, x, a, steps=6, substrate=0.0, seed=4)
    assert not torch.equal(other.random_curves, r.random_curves)
    assert r.params["seed"] == 3
    assert deletion(model, x, a, substrate=0.0, random_order=False).random_auc is None


def test_faithful_map_beats_random_on_a_linear_model():
    torch.manual_seed(2)
    model = nn.Linear(10, 5)
    x = torch.randn(8, 10)
    exact = saliency.gradients(model, x, times_input=True)  # exact contributions at substrate 0
    r = deletion(model, x, exact, steps=10, seed=0)
    assert bool((r.auc <= r.random_auc + 1e-5).all())
    backwards = _attribution(-exact.values, exact.outputs, output="logits")
    worst = deletion(model, x, backwards, steps=10, seed=0)
    assert bool((worst.auc >= r.random_auc - 1e-5).all())
    s = r.summary()
    assert s["beats_random"] >= 30 and json.loads(json.dumps(s)) == s


def test_pixels_remove_every_channel_ranked_by_the_channel_sum():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    x = torch.randn(2, 3, 4, 4)
    values = torch.randn(2, 5, 3, 4, 4)
    a = _attribution(values, model(x).detach(), output="logits")
    r = deletion(model, x, a, steps=16, substrate=0.0, seed=0)
    assert r.params["features"] == "pixels"
    summed = values.sum(2)
    for b in range(2):
        for c in (0, 4):
            order = np.argsort(-summed[b, c].flatten().numpy(), kind="stable")
            z = x[b].clone().reshape(3, 16)
            for i in range(17):
                if i:
                    z[:, order[i - 1]] = 0.0
                want = float(model(z.reshape(1, 3, 4, 4))[0, c])
                assert r.curves[b, c, i].item() == pytest.approx(want, abs=1e-5)
    elements = deletion(model, x, a, steps=48, substrate=0.0, features="elements", seed=0)
    ref = _oracle(_score(model), x, values, torch.zeros_like(x))
    np.testing.assert_allclose(elements.curves.numpy(), ref, rtol=1e-5, atol=1e-5)


def test_points_that_change_nothing_are_not_run_and_give_the_same_curves():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(6, 8)
    x[:, ::2] = 0.0  # half the features already equal the substrate
    a = _attribution(torch.randn(6, 3, 8), model(x).detach(), output="logits")
    rows = []

    def counting(z):
        rows.append(len(z))
        return model(z)

    r = deletion(counting, x, a, steps=8, substrate="zeros", seed=0)
    ref = _oracle(_score(model), x, a.values, torch.zeros_like(x))
    np.testing.assert_allclose(r.curves.numpy(), ref, rtol=1e-5, atol=1e-6)
    every = 6 * 3 * 7 + 6 * 7 + 2 * 6  # map points, random points, the two shared ends
    assert sum(rows) < every - 60  # about half the points repeat the one before them


def test_chunks_under_max_memory_give_the_same_curves(tabular):
    model, x, a = tabular
    calls = []

    def counting(z):
        calls.append(len(z))
        return model(z)

    whole = deletion(counting, x, a, steps=7, substrate=0.5, seed=0)
    assert max(calls) == 5 * 4  # no budget: all B x K rows of a point in one forward
    n_whole = len(calls)
    calls.clear()
    small = deletion(counting, x, a, steps=7, substrate=0.5, seed=0, max_memory=4000)
    assert max(calls) < 20 and len(calls) > n_whole
    torch.testing.assert_close(small.curves, whole.curves)
    torch.testing.assert_close(small.random_curves, whole.random_curves)
    with pytest.raises(MemoryError, match="max_memory"):
        deletion(model, x, a, max_memory=10)


def test_output_transform_contrasts_and_forward_kwargs():
    torch.manual_seed(5)
    lin = nn.Linear(5, 4)

    class Scaled(nn.Module):
        def forward(self, x, scale):
            return {"logits": lin(x) * scale[:, None]}

    model = Scaled()
    x, scale = torch.randn(3, 5), torch.tensor([1.0, 2.0, -1.0])
    a = saliency.gradients(model, x, saliency.contrast([0, 1], [2, 3]), scale=scale)
    r = deletion(model, x, a, steps=5, substrate=0.0, seed=0, output="softmax", scale=scale)
    probs = lambda z, b: torch.softmax(lin(z) * scale[b], -1)  # noqa: E731
    for b in range(3):
        order = np.argsort(-a.values[b, 1].numpy(), kind="stable")
        z = x[b].clone()
        for i in range(6):
            if i:
                z[order[i - 1]] = 0.0
            p = probs(z[None], b)[0]
            assert r.curves[b, 1, i].item() == pytest.approx(float(p[1] - p[3]), abs=1e-6)
    assert r.params["output"] == "softmax"
    with pytest.raises(ValueError, match="callable"):
        deletion(model, x, _attribution(a.values, a.outputs, output="myfunc"), scale=scale)


def test_caller_model_and_inputs_are_untouched():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))
    model.train()
    for p in model[0].parameters():
        p.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 1, 4, 4)
    x_before = x.clone()
    a = _attribution(torch.randn(2, 3, 1, 4, 4), model(x).detach(), output="logits")
    rng = torch.random.get_rng_state()
    deletion(model, x, a, steps=4, substrate="blur")
    road(model, x, a, steps=4)
    insertion(model, x, a, steps=4, substrate="uniform")
    assert torch.equal(torch.random.get_rng_state(), rng)  # private generators only
    assert model.training and not model[0].weight.requires_grad and model[3].weight.requires_grad
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert torch.equal(x, x_before)


def test_substrates():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 2))
    x = torch.randn(2, 2, 3, 3)
    a = _attribution(torch.randn(2, 2, 2, 3, 3), model(x).detach(), output="logits")
    far = lambda sub: deletion(model, x, a, steps=3, substrate=sub, seed=0).curves[..., -1]  # noqa: E731
    torch.testing.assert_close(far("mean"), model(x.mean((2, 3), keepdim=True).expand_as(x)))
    torch.testing.assert_close(far("zero"), far("zeros"))
    torch.testing.assert_close(far(lambda z: z * 0 + 1.0), far(1.0))
    torch.testing.assert_close(far(torch.ones(1, 2, 1, 1)), far(1.0))
    u1 = deletion(model, x, a, steps=3, substrate="uniform", seed=1).curves
    assert torch.equal(u1, deletion(model, x, a, steps=3, substrate="uniform", seed=1).curves)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"steps": 0}, ValueError, "steps"),
        ({"steps": 17}, ValueError, "steps"),
        ({"steps": 2.5}, ValueError, "steps"),
        ({"substrate": "black"}, ValueError, "substrate"),
        ({"substrate": torch.zeros(3, 4)}, ValueError, "substrate"),
        ({"features": "rows"}, ValueError, "features"),
        ({"abs": 1}, TypeError, "abs"),
        ({"seed": -1}, ValueError, "seed"),
        ({"output": "probabilities"}, ValueError, "output"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    x = torch.randn(2, 1, 4, 4)
    a = _attribution(torch.randn(2, 2, 1, 4, 4), model(x).detach(), output="logits")
    with pytest.raises(error, match=match):
        deletion(model, x, a, **kwargs)


def test_bad_inputs_are_named():
    model = nn.Linear(4, 2)
    x = torch.randn(3, 4)
    a = saliency.gradients(model, x)
    with pytest.raises(ValueError, match=r"attribution: values \[3, 2, 4\] do not explain x"):
        deletion(model, torch.randn(3, 5), a)
    with pytest.raises(TypeError, match="attribution"):
        deletion(model, x, a.values)
    with pytest.raises(TypeError, match="x: expected a floating"):
        deletion(model, x.long(), a)
    with pytest.raises(ValueError, match="features='pixels'"):
        deletion(model, x, a, features="pixels")
    with pytest.raises(ValueError, match="substrate='blur'"):
        deletion(model, x, a, substrate="blur")
    with pytest.raises(ValueError, match="ROAD"):
        road(model, x, a)


# -- ROAD ------------------------------------------------------------------------------------------


def _dense_imputation(img: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """The ROAD system written out pixel by pixel and solved densely."""
    c, h, w = img.shape
    unknown = [(i, j) for i in range(h) for j in range(w) if removed[i, j]]
    index = {p: n for n, p in enumerate(unknown)}
    a = np.zeros((len(unknown), len(unknown)))
    rhs = np.zeros((len(unknown), c))
    for n, (i, j) in enumerate(unknown):
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                q = (i + di, j + dj)
                if (di, dj) == (0, 0) or not (0 <= q[0] < h and 0 <= q[1] < w):
                    continue
                weight = 1 / 6 if di == 0 or dj == 0 else 1 / 12
                a[n, n] += weight
                if removed[q]:
                    a[n, index[q]] -= weight
                else:
                    rhs[n] += weight * img[:, q[0], q[1]].double().numpy()
    out = img.clone().double()
    for n, (i, j) in enumerate(unknown):
        out[:, i, j] = torch.from_numpy(np.linalg.solve(a, rhs)[n])
    return out


def test_imputation_matches_a_dense_solve():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, 5, 7, generator=g, dtype=torch.float64)
    removed = torch.rand(6, 5, 7, generator=g) < torch.linspace(0.1, 0.95, 6)[:, None, None]
    removed[0] = False
    removed[0, 0, 0] = True  # a corner: three neighbours only
    got = noisy_linear_imputation(x, removed, noise=0.0)
    for r in range(6):
        torch.testing.assert_close(got[r], _dense_imputation(x[r], removed[r]), atol=1e-10, rtol=0)
    assert torch.equal(got[~removed[:, None].expand_as(x)], x[~removed[:, None].expand_as(x)])


def test_imputation_noise_and_errors():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 16, 16, generator=g)
    removed = torch.rand(4, 16, 16, generator=g) < 0.5
    x_before = x.clone()
    plain = noisy_linear_imputation(x, removed, noise=0.0)
    noisy = noisy_linear_imputation(x, removed, noise=0.05, generator=g)
    diff = (noisy - plain)[removed[:, None].expand_as(x)]
    assert diff.std().item() == pytest.approx(0.05, rel=0.1)
    assert torch.equal(noisy[~removed[:, None].expand_as(x)], x[~removed[:, None].expand_as(x)])
    assert torch.equal(x, x_before)
    with pytest.raises(ValueError, match="every pixel"):
        noisy_linear_imputation(x, torch.ones(4, 16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="removed"):
        noisy_linear_imputation(x, removed[:, :8])
    with pytest.raises(ValueError, match="noise"):
        noisy_linear_imputation(x, removed, noise=-1.0)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_road_curves_match_dense_imputation(order):
    torch.manual_seed(8)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 5, 3))
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64)
    model = model.double()
    values = torch.randn(2, 3, 2, 4, 5, dtype=torch.float64)
    a = _attribution(values, model(x).detach(), output="logits")
    r = road(model, x, a, order=order, steps=5, noise=0.0, seed=0)
    assert r.kind == f"road_{order}" and r.fractions.tolist() == [0.0, 0.2, 0.4, 0.6, 0.8]
    summed = values.sum(2).flatten(2)
    for b in range(2):
        for c in range(3):
            m = summed[b, c].numpy()
            rank_order = np.argsort(m if order == "lerf" else -m, kind="stable")
            for i in range(5):
                removed = torch.zeros(20, dtype=torch.bool)
                removed[rank_order[: i * 20 // 5]] = True
                z = _dense_imputation(x[b], removed.reshape(4, 5)) if i else x[b]
                want = float(model(z[None])[0, c])
                assert r.curves[b, c, i].item() == pytest.approx(want, abs=1e-9)
    noisy = road(model, x, a, order=order, steps=5, seed=0)
    assert not torch.equal(noisy.curves, r.curves)
    assert torch.equal(noisy.curves, road(model, x, a, order=order, steps=5, seed=0).curves)
    with pytest.raises(ValueError, match="order"):
        road(model, x, a, order="most")


def test_road_on_digits_is_ordered_as_the_paper_expects():
    model, _ = models.load("digits")
    x, y = models.held_out("digits", 16)
    a = saliency.integrated_gradients(model, x, y[:, None], steps=16)
    morf = road(model, x, a, seed=0, output="softmax")
    lerf = road(model, x, a, order="lerf", seed=0, output="softmax")
    # Removing the most relevant pixels first must hurt more than the least relevant first,
    # and more than a random order.
    assert morf.auc.mean() < morf.random_auc.mean() < lerf.auc.mean()
    assert morf.summary()["top_rate"][-1] < lerf.summary()["top_rate"][-1]


# -- digits, pixel flipping, figures ---------------------------------------------------------------


def test_digits_deletion_and_insertion_beat_random():
    model, info = models.load("digits")
    x, y = models.held_out("digits", 16)
    black = (0 - info.mean[0]) / info.std[0]
    a = saliency.integrated_gradients(model, x, steps=16)
    d = deletion(model, x, a, substrate=black, output="softmax", seed=0)
    i = insertion(model, x, a, substrate=black, output="softmax", seed=0)
    own = a.classes == y[:, None]  # the label's rows
    assert d.auc[own].mean() < 0.5 * d.random_auc[own].mean()
    assert i.auc[own].mean() > 1.2 * i.random_auc[own].mean()  # measured 0.76 vs 0.56
    assert isinstance(d, PerturbationCurves)
    norm = d.normalized_auc[~d.normalized_auc.isnan()]
    assert bool(((norm >= 0) & (norm <= 1)).all())


@pytest.mark.filterwarnings("ignore::UserWarning")  # Quantus warns about its own settings
def test_pixel_flipping_settings_reproduce_quantus():
    quantus = pytest.importorskip("quantus")
    model, _ = models.load("digits")
    x, y = models.held_out("digits", 12)
    a = saliency.gradients(model, x, y[:, None], times_input=True)
    values = a.values + 1e-4 * torch.randn(a.values.shape)  # no ties: any sort agrees
    a = _attribution(values, a.outputs, classes=a.classes, output="logits")
    ours = deletion(
        model, x, a, steps=64, substrate=x.amin((1, 2, 3), keepdim=True), output="softmax",
        features="elements", random_order=False,
    )  # fmt: skip
    metric = quantus.PixelFlipping(features_in_step=1, disable_warnings=True)
    theirs = metric(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=values[:, 0].numpy(),
        device="cpu", softmax=True,
    )  # fmt: skip
    np.testing.assert_allclose(ours.curves[:, 0, 1:].numpy(), np.array(theirs), atol=1e-5)


def test_curve_figure():
    torch.manual_seed(9)
    model = nn.Linear(6, 3)
    x = torch.randn(4, 6)
    r = deletion(model, x, saliency.gradients(model, x, times_input=True), steps=6, seed=0)
    fig = plot_curves(r, samples=[0, 2], classes=[1])
    assert len(fig.axes) == 2
    lines = fig.axes[0].get_lines()
    np.testing.assert_allclose(lines[0].get_ydata(), r.curves[0, 1].numpy())
    with pytest.raises(ValueError, match="samples"):
        plot_curves(r, samples=[9])


def test_methods_as_partials_and_class_subsets():
    torch.manual_seed(10)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6))
    x = torch.randn(3, 5)
    method = functools.partial(saliency.gradients, times_input=True)
    a = method(model, x, saliency.top_k(2))
    r = deletion(model, x, a, steps=5, substrate=0.0, seed=0)
    ids = a.classes
    scores = model(x).detach().gather(1, ids)
    torch.testing.assert_close(r.curves[..., 0], scores)
    assert r.curves.shape == (3, 2, 6)
