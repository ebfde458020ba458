"""infidelity and sensitivity_max against Captum's, class by class, with the same perturbations
replayed to both; and against closed forms on linear models."""

from __future__ import annotations

import copy
import functools

import captum.metrics
import pytest
import torch
from captum.attr import Saliency
from torch import nn

import saliency
from saliency.audit import Infidelity, Sensitivity, infidelity, sensitivity_max


class Replay:
    """A perturbation that hands out stored noise in order, chunk after chunk."""

    def __init__(self, noise: torch.Tensor, *, pairs: bool) -> None:
        self.noise, self.pairs, self.offset = noise, pairs, 0

    def __call__(self, xs: torch.Tensor, *_):
        part = self.noise[self.offset : self.offset + len(xs)]
        self.offset = (self.offset + len(xs)) % len(self.noise)
        return (part, xs - part) if self.pairs else xs + part


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    return model, x


@pytest.fixture
def conv():
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3)
    ).double()
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    return model, x


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_infidelity_equals_captum_per_class(net, normalize, request):
    model, x = request.getfixturevalue(net)
    n = 7
    a = saliency.gradients(model, x)
    noise = 0.1 * torch.randn(len(x) * n, *x.shape[1:], dtype=x.dtype)
    ours = infidelity(
        model, x, a, perturb=Replay(noise, pairs=True), n_perturb=n, normalize=normalize
    )
    assert isinstance(ours, Infidelity) and ours.infidelity.shape == a.classes.shape
    for k in range(a.classes.shape[1]):
        theirs = captum.metrics.infidelity(
            model, Replay(noise, pairs=True), x, a.values[:, k], target=k,
            n_perturb_samples=n, normalize=normalize,
        )  # fmt: skip
        torch.testing.assert_close(ours.infidelity[:, k], theirs, rtol=1e-9, atol=1e-12)
    forwards = []
    chunked = infidelity(
        lambda z: forwards.append(len(z)) or model(z), x, a, perturb=Replay(noise, pairs=True),
        n_perturb=n, normalize=normalize, max_memory={"mlp": 2_000, "conv": 20_000}[net],
    )  # fmt: skip
    assert len(forwards) > 3  # x, then the copies in several chunks
    torch.testing.assert_close(chunked.infidelity, ours.infidelity, rtol=1e-9, atol=1e-12)


def test_infidelity_shares_perturbations_across_classes(mlp):
    model, x = mlp
    rows = []

    def counting(z):
        rows.append(len(z))
        return model(z)

    a = saliency.gradients(model, x)
    infidelity(counting, x, a, n_perturb=9, seed=0)
    # x once to check that the attribution explains it, once for the scores, then every copy
    # once for all 4 classes
    assert rows == [5, 5, 5 * 9]


def test_infidelity_gaussian_scale_and_seed():
    torch.manual_seed(2)
    model = nn.Linear(8, 3).double()
    x = torch.randn(4, 8, dtype=torch.float64)
    zero = saliency.Attribution(
        values=torch.zeros(4, 3, 8, dtype=torch.float64), classes=torch.arange(3).expand(4, 3),
        outputs=model(x).detach(), method="test", params={"output": "logits"},
    )  # fmt: skip
    r = infidelity(model, x, zero, noise=0.05, n_perturb=4000, seed=0)
    # A zero map: infidelity is E[(w . I)^2] = sigma^2 ||w||^2, sigma = noise * range.
    sigma = 0.05 * (x.amax(1) - x.amin(1))
    want = sigma[:, None] ** 2 * model.weight.detach().pow(2).sum(1)[None]
    torch.testing.assert_close(r.infidelity, want, rtol=0.1, atol=0)
    exact = infidelity(model, x, saliency.gradients(model, x), seed=0)
    assert float(exact.infidelity.max()) < 1e-20  # linear: a . I is the exact change
    again = infidelity(model, x, zero, noise=0.05, n_perturb=50, seed=1)
    assert torch.equal(
        again.infidelity, infidelity(model, x, zero, noise=0.05, n_perturb=50, seed=1).infidelity
    )
    assert again.params["seed"] == 1
    s = again.summary()
    assert s["metric"] == "infidelity" and s["mean"] > 0


def test_infidelity_output_contrast_and_kwargs():
    torch.manual_seed(3)
    lin = nn.Linear(5, 4).double()

    class Scaled(nn.Module):
        def forward(self, x, scale):
            return (lin(x) * scale[:, None],)

    model = Scaled()
    x, scale = torch.randn(3, 5, dtype=torch.float64), torch.tensor([1.0, 2.0, -1.0]).double()
    a = saliency.gradients(model, x, saliency.contrast([0, 1], [2, 3]), scale=scale)
    r = infidelity(model, x, a, seed=0, scale=scale)
    assert float(r.infidelity.max()) < 1e-20  # gradients of a linear contrast: exact
    soft = infidelity(model, x, a, seed=0, output="softmax", scale=scale)
    assert float(soft.infidelity.min()) > 0


def test_sensitivity_equals_captum_per_class(conv):
    model, x = conv
    n = 6
    noise = torch.empty(len(x) * n, *x.shape[1:], dtype=x.dtype).uniform_(-0.05, 0.05)
    # Captum perturbs copies sample by sample (row b * n + j); ours perturbation by perturbation
    # (row j * B + b): the same noise, handed out in our order.
    ours_noise = noise.view(len(x), n, *x.shape[1:]).transpose(0, 1).reshape(noise.shape)
    ours = sensitivity_max(
        model, x, saliency.gradients, perturb=Replay(ours_noise, pairs=False), n_perturb=n
    )
    assert isinstance(ours, Sensitivity) and ours.sensitivity.shape == (3, 3)
    explain = functools.partial(Saliency(model).attribute, abs=False)
    for k in range(3):
        theirs = captum.metrics.sensitivity_max(
            explain, x, perturb_func=Replay(noise, pairs=False), n_perturb_samples=n, target=k
        )
        torch.testing.assert_close(ours.sensitivity[:, k], theirs, rtol=1e-9, atol=1e-12)
    chunked = sensitivity_max(
        model, x, saliency.gradients, perturb=Replay(ours_noise, pairs=False), n_perturb=n,
        max_memory=30_000,
    )  # fmt: skip
    torch.testing.assert_close(chunked.sensitivity, ours.sensitivity, rtol=1e-9, atol=1e-12)


def test_sensitivity_default_noise_is_uniform_in_the_radius():
    # Gradients c_k x of 0.5 c_k ||x||^2: every class changes by c_k u, so the sensitivity is
    # max ||u|| / ||x||, whose supremum for u uniform in [-r, r]^2 is r sqrt(2).
    x = torch.tensor([[3.0, 4.0], [0.5, -1.0]], dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def model(z):
        return 0.5 * z.pow(2).sum(1, keepdim=True) * c

    r = sensitivity_max(model, x, saliency.gradients, perturb_radius=0.1, n_perturb=3000, seed=0)
    bound = 0.1 * 2**0.5 / x.norm(dim=1, keepdim=True)
    assert bool((r.sensitivity <= bound + 1e-12).all())
    assert bool((r.sensitivity >= 0.95 * bound).all())
    torch.testing.assert_close(r.sensitivity, r.sensitivity[:, :1].expand(2, 3))
    again = sensitivity_max(model, x, saliency.gradients, perturb_radius=0.1, n_perturb=5, seed=4)
    same = sensitivity_max(model, x, saliency.gradients, perturb_radius=0.1, n_perturb=5, seed=4)
    assert torch.equal(again.sensitivity, same.sensitivity) and again.params["seed"] == 4
    assert again.summary()["metric"] == "sensitivity_max"


def test_sensitivity_reuses_classes_of_x_and_the_given_attribution(mlp):
    model, x = mlp
    calls = []

    def method(model, x, classes=None, **options):
        calls.append((len(x), classes))
        return saliency.gradients(model, x, classes, **options)

    r = sensitivity_max(model, x, method, classes=saliency.top_k(2), seed=0, n_perturb=3)
    top = model(x).detach().topk(2).indices
    assert torch.equal(r.classes, top)
    # x once, then one call per perturbation on the 5 copies, with the classes of x
    assert [n for n, _ in calls] == [5, 5, 5, 5]
    assert all(torch.equal(classes, top) for _, classes in calls[1:])
    a = saliency.gradients(model, x, saliency.top_k(2))
    again = sensitivity_max(model, x, method, attribution=a, seed=0, n_perturb=3)
    torch.testing.assert_close(again.sensitivity, r.sensitivity)
    assert len(calls) == 7  # no second explanation of x
    with pytest.raises(ValueError, match="classes: give either"):
        sensitivity_max(model, x, method, attribution=a, classes=[0])


def test_sensitivity_of_a_seeded_partial_and_a_contrast(mlp):
    model, x = mlp
    sg = functools.partial(saliency.smoothgrad, n_samples=4, seed=0)
    r = sensitivity_max(model, x, sg, classes=saliency.contrast(0, 1), seed=0, n_perturb=2)
    assert r.sensitivity.shape == (5, 1) and bool((r.sensitivity > 0).all())
    linear = nn.Linear(6, 3).double()
    flat = sensitivity_max(linear, x, saliency.gradients, seed=0, norm=float("inf"))
    assert float(flat.sensitivity.max()) == 0.0


def test_a_seeded_smoothgrad_gives_each_copy_its_samples_noise(mlp):
    # With a zero radius every copy is x itself: the explanations must not move at all, so a
    # seeded SmoothGrad must draw for each copy the noise its sample got at x.
    model, x = mlp
    sg = functools.partial(saliency.smoothgrad, n_samples=6, seed=0)
    still = sensitivity_max(model, x, sg, perturb_radius=0.0, n_perturb=3, seed=0)
    assert float(still.sensitivity.abs().max()) < 1e-12
    given = sensitivity_max(
        model, x, sg, attribution=sg(model, x), perturb_radius=0.0, n_perturb=2, seed=0
    )
    assert float(given.sensitivity.abs().max()) < 1e-12
    # a budget that splits the 5 samples into groups explains x again in those groups
    grouped = sensitivity_max(
        model, x, sg, attribution=sg(model, x), perturb_radius=0.0, n_perturb=2, seed=0,
        max_memory=2_500,
    )  # fmt: skip
    assert float(grouped.sensitivity.abs().max()) < 1e-12
    # noise that moves the input still counts
    moved = sensitivity_max(model, x, sg, perturb_radius=0.1, n_perturb=3, seed=0)
    assert bool((moved.sensitivity > 0).all())


def test_nothing_is_mutated(conv):
    model, x = conv
    model.train()
    state = copy.deepcopy(model.state_dict())
    x0 = x.clone()
    a = saliency.gradients(model, x)
    rng = torch.random.get_rng_state()
    infidelity(model, x, a)
    sensitivity_max(model, x, saliency.gradients, n_perturb=2)
    assert torch.equal(torch.random.get_rng_state(), rng)  # private generators only
    assert model.training and torch.equal(x, x0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"perturb": "uniform"}, ValueError, "perturb"),
        ({"perturb": lambda z: z}, TypeError, "perturb"),
        ({"perturb": lambda z: (z[:1], z)}, ValueError, "perturb"),
        ({"n_perturb": 0}, ValueError, "n_perturb"),
        ({"noise": -1.0}, ValueError, "noise"),
        ({"normalize": "yes"}, TypeError, "normalize"),
        ({"seed": 1.5}, ValueError, "seed"),
        ({"max_memory": 10}, MemoryError, "max_memory"),
    ],
)
def test_infidelity_bad_arguments(mlp, kwargs, error, match):
    model, x = mlp
    with pytest.raises(error, match=match):
        infidelity(model, x, saliency.gradients(model, x), **kwargs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"norm": "l2"}, ValueError, "norm"),
        ({"norm": -1}, ValueError, "norm"),
        ({"perturb_radius": -0.1}, ValueError, "perturb_radius"),
        ({"perturb": 3}, TypeError, "perturb"),
        ({"perturb": lambda z: z[:, :2]}, ValueError, "perturb"),
        ({"n_perturb": 2.0}, ValueError, "n_perturb"),
        ({"max_memory": 10}, MemoryError, "max_memory"),
    ],
)
def test_sensitivity_bad_arguments(mlp, kwargs, error, match):
    model, x = mlp
    with pytest.raises(error, match=match):
        sensitivity_max(model, x, saliency.gradients, **kwargs)


def test_sensitivity_bad_method(mlp):
    model, x = mlp
    with pytest.raises(TypeError, match="method"):
        sensitivity_max(model, x, "gradients")
    with pytest.raises(TypeError, match="method: expected a callable returning an Attribution"):
        sensitivity_max(model, x, lambda m, z, classes=None, **o: z)
    with pytest.raises(TypeError, match="x: expected a floating"):
        sensitivity_max(model, x.long(), saliency.gradients)
