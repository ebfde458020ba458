"""margins against the closed form of a linear model, bisection along the gradient-difference
direction and central finite differences (float64), and the checks on the attribution given."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import saliency
from saliency.audit import Margins, margins


def linear(seed: int = 0, d: int = 5, c: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(d, c).double()


class NearLinear(nn.Module):
    """A linear model plus ``eps`` times a small tanh network: linear as ``eps`` goes to 0."""

    def __init__(self, eps: float, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(5, 4)
        self.bend = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 4))
        self.eps = eps

    def forward(self, x):
        return self.lin(x) + self.eps * self.bend(x)


def near_linear(seed: int = 0, eps: float = 0.1) -> nn.Module:
    return NearLinear(eps, seed).double()


def bisect_boundary(model, x, c, k, direction, hi):
    """The step t along ``direction`` where f_c - f_k changes sign, by bisection."""

    def diff(t):
        out = model((x + t * direction)[None])[0].detach()
        return float(out[c] - out[k])

    lo = 0.0
    assert diff(lo) > 0 > diff(hi)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if diff(mid) > 0 else (lo, mid)
    return (lo + hi) / 2


def test_linear_model_matches_the_closed_form_exactly():
    model = linear()
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    m = margins(model, x, saliency.gradients(model, x))
    f = model(x).detach()
    w = model.weight.detach()
    c = f.argmax(1)
    assert torch.equal(m.reference, c)
    expect = (f.gather(1, c[:, None]) - f) / (w[c][:, None, :] - w[None]).norm(dim=-1)
    own = torch.arange(4)[None] == c[:, None]
    torch.testing.assert_close(m.distance[~own], expect[~own], rtol=1e-12, atol=1e-12)
    assert torch.isinf(m.distance[own]).all()
    assert (m.nearest != c).all()
    torch.testing.assert_close(m.nearest_distance, expect.masked_fill(own, torch.inf).amin(1))
    # moving that far towards the nearest class puts the sample on the boundary, exactly
    for b in range(6):
        k = int(m.nearest[b])
        u = w[k] - w[c[b]]
        moved = model((x[b] + m.nearest_distance[b] * u / u.norm())[None])[0].detach()
        assert float(moved[c[b]] - moved[k]) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("eps", [0.1, 0.01])
def test_near_linear_model_matches_bisection_and_finite_differences(eps):
    model = near_linear(eps=eps)
    x = torch.randn(8, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    a = saliency.gradients(model, x)
    m = margins(model, x, a)
    worst = 0.0
    for b in range(8):
        c = int(m.reference[b])
        for k in range(4):
            if k == c:
                continue
            g = a.values[b, k] - a.values[b, c]  # the direction in which f_c - f_k falls fastest
            u = g / g.norm()
            # finite differences check the denominator: d(f_c - f_k)/dt along u is -||J_c - J_k||
            h = 1e-5
            ends = model(torch.stack([x[b] + h * u, x[b] - h * u])).detach()
            slope = float(((ends[0, c] - ends[0, k]) - (ends[1, c] - ends[1, k])) / (2 * h))
            assert slope == pytest.approx(-float(m.gradient_gap[b, k]), rel=1e-7)
            root = bisect_boundary(model, x[b], c, k, u, hi=10 * float(m.distance[b, k]) + 10)
            worst = max(worst, abs(root - float(m.distance[b, k])) / root)
    # a first-order estimate: its error shrinks with the curvature (measured: 0.016 at eps 0.1,
    # 0.0015 at eps 0.01)
    assert worst < 0.25 * eps, worst


def test_labels_measure_from_the_label_and_show_crossed_samples():
    model = linear(3)
    x = torch.randn(20, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    pred = model(x).argmax(1)
    labels = (pred + 1) % 4  # every sample misclassified against these labels
    m = margins(model, x, saliency.gradients(model, x), labels=labels)
    assert torch.equal(m.reference, labels)
    assert (m.nearest_distance < 0).all()
    rows = torch.arange(20)
    assert (m.distance[rows, pred] < 0).all()  # the predicted class is already past the label
    assert (m.nearest_distance <= m.distance[rows, pred]).all()  # nearest: the most negative
    summary = m.summary()
    json.dumps(summary, allow_nan=False)
    assert summary["crossed"] == 20 and summary["undefined"] == 0
    assert sum(count for *_, count in summary["pairs"]) <= 20


def test_any_order_of_all_classes_gives_the_same_distances():
    model = near_linear(4)
    x = torch.randn(5, 5, dtype=torch.float64)
    plain = margins(model, x, saliency.gradients(model, x))
    ranked = margins(model, x, saliency.gradients(model, x, saliency.top_k(4)))
    torch.testing.assert_close(
        ranked.distance.gather(1, ranked.classes.argsort(1)), plain.distance, rtol=1e-10, atol=0
    )
    torch.testing.assert_close(ranked.nearest_distance, plain.nearest_distance)
    assert torch.equal(ranked.nearest, plain.nearest)


def test_softmax_outputs_and_forward_kwargs():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x, *, scale):
            return self.lin(x) * scale

    model, x = Scaled(), torch.randn(4, 3)
    a = saliency.gradients(model, x, output="softmax", scale=2.0)
    m = margins(model, x, a, scale=2.0)
    p = torch.softmax(model(x, scale=2.0), 1).detach()
    torch.testing.assert_close(m.gap, p.gather(1, m.reference[:, None]) - p)
    with pytest.raises(ValueError, match="differ from the model's"):
        margins(model, x, a, scale=3.0)


def test_a_callable_output_must_be_passed_again():
    model, x = linear(), torch.randn(3, 5, dtype=torch.float64)

    def half(out):
        return out / 2

    a = saliency.gradients(model, x, output=half)
    with pytest.raises(ValueError, match="pass the same callable as output="):
        margins(model, x, a)
    m = margins(model, x, a, output=half)
    torch.testing.assert_close(m.gap * 2, margins(model, x, saliency.gradients(model, x)).gap)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda m, x: saliency.gradients(m, x, times_input=True),
            "plain input gradients.*times_input",
        ),
        (lambda m, x: saliency.gradients(m, x, abs=True), "plain input gradients.*abs=True"),
        (lambda m, x: saliency.integrated_gradients(m, x, steps=4), "got integrated_gradients"),
        (
            lambda m, x: saliency.gradients(m, x, classes=[0, 1]),
            "every one of the model's 4 classes",
        ),
        (
            lambda m, x: saliency.gradients(m, x, classes=torch.tensor([[0, 0, 1, 2]] * len(x))),
            "every one of the model's 4",
        ),
        (
            lambda m, x: saliency.gradients(m, x, saliency.contrast([0, 1, 2, 3], [1, 2, 3, 0])),
            "not of contrasts",
        ),
        (lambda m, x: saliency.gradients(m, x + 1), "differ from the model's at x"),
        (lambda m, x: saliency.gradients(m, x, layer=m), "gradients at layer"),
        (lambda m, x: saliency.gradients(m, x[:2]), r"not input gradients of x \[3, 5\]"),
    ],
)
def test_wrong_attributions_are_refused(make, match):
    model, x = linear(), torch.randn(3, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        margins(model, x, make(model, x))


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (torch.tensor([0.0, 1.0, 2.0]), "labels: expected"),
        (torch.tensor([0, 1]), r"labels: expected \[B\] = \[3\]"),
        (torch.tensor([0, 1, 4]), r"labels: ids must lie in \[0, 4\)"),
    ],
)
def test_bad_labels_are_named(labels, match):
    model, x = linear(), torch.randn(3, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        margins(model, x, saliency.gradients(model, x), labels=labels)


def test_equal_gradients_give_infinite_distance_not_an_error():
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
        model.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    x = torch.tensor([[5.0, 0.0]])
    m = margins(model, x, saliency.gradients(model, x))
    assert m.reference.item() == 0
    assert m.distance[0, 1].item() == float("inf")  # classes 0 and 1 never meet
    assert m.nearest.item() == 2
    assert isinstance(m, Margins)
    assert m.nearest_distance.item() == pytest.approx(6.0 / 2**0.5)
