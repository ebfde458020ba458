"""class_sensitivity against scipy.stats.spearmanr per pair, per-pair similarities, and models whose
class maps are identical by construction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

import saliency
from saliency import models
from saliency.audit import ClassSensitivity, class_sensitivity
from saliency.audit import similarity as sim
from saliency.audit.randomization_figures import plot_class_similarity


@pytest.fixture(scope="module")
def digits_gradients():
    model, _ = models.load("digits")
    x, _ = models.held_out("digits", 24)
    return saliency.gradients(model, x)


class ClassBlind(nn.Module):
    """Every logit is a_k * g(x) for one scalar function g: one map for every class, up to scale."""

    def __init__(self, features: int = 6, scales=(1.0, -2.0, 0.5, 3.0)):
        super().__init__()
        torch.manual_seed(0)
        self.g = nn.Sequential(nn.Linear(features, 16), nn.Tanh(), nn.Linear(16, 1))
        self.register_buffer("a", torch.tensor(scales))

    def forward(self, x):
        return self.g(x) * self.a


def test_diagonal_is_one_and_pairs_match_scipy(digits_gradients):
    a = digits_gradients
    r = class_sensitivity(a)
    assert r.matrix.shape == (24, 10, 10)
    torch.testing.assert_close(
        r.matrix.diagonal(dim1=1, dim2=2), torch.ones(24, 10, dtype=torch.float64)
    )
    torch.testing.assert_close(r.matrix, r.matrix.transpose(1, 2))
    maps = a.values.abs().flatten(2).numpy()  # one channel: summing it changes nothing
    for b in (0, 7, 23):
        ref = scipy.stats.spearmanr(maps[b].T)[0]
        np.testing.assert_allclose(r.matrix[b].numpy(), ref, atol=1e-10)
        off = ref[~np.eye(10, dtype=bool)].reshape(10, 9)
        np.testing.assert_allclose(r.mean_other[b].numpy(), off.mean(1), atol=1e-10)
        assert r.off_diagonal[b].item() == pytest.approx(off.mean(), abs=1e-10)
    assert not r.flagged.any()  # a trained classifier explains its classes differently
    assert torch.equal(r.classes, a.classes)


@pytest.mark.parametrize("similarity", ["cosine", "ssim"])
def test_other_similarities_match_pairwise_calls(digits_gradients, similarity):
    a = digits_gradients
    r = class_sensitivity(a, similarity=similarity)
    maps = a.values.abs()[:, :, 0]  # [B, K, 8, 8]
    maps = maps / maps.flatten(2).amax(-1)[..., None, None]
    for i, j in ((0, 1), (3, 8), (9, 9)):
        if similarity == "cosine":
            ref = nn.functional.cosine_similarity(
                maps[:, i].flatten(1), maps[:, j].flatten(1), dim=1
            )
        else:
            ref = sim.ssim(maps[:, i], maps[:, j])
        torch.testing.assert_close(r.matrix[:, i, j], ref.double(), atol=1e-6, rtol=0)
    assert r.similarity == similarity


def test_flags_a_model_whose_class_maps_are_identical():
    model = ClassBlind()
    x = torch.randn(5, 6)
    r = class_sensitivity(saliency.gradients(model, x))
    assert r.flagged.all()
    torch.testing.assert_close(r.off_diagonal, torch.ones(5, dtype=torch.float64))
    # signed maps see the negative scale as an opposite map: not flagged then
    signed = class_sensitivity(saliency.gradients(model, x), abs=False)
    assert not signed.flagged.any()
    assert signed.matrix[0, 0, 1].item() == pytest.approx(-1.0)


def test_flags_exactly_the_class_blind_samples():
    blind, linear = ClassBlind(4), nn.Linear(4, 4)

    def model(x):
        # samples with x[:, 0] > 0 go through the class-blind path
        return torch.where(x[:, :1] > 0, blind(x), linear(x))

    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(1))
    r = class_sensitivity(saliency.gradients(model, x), similarity="cosine")
    assert torch.equal(r.flagged, x[:, 0] > 0)
    summary = r.summary()
    json.dumps(summary, allow_nan=False)
    assert summary["flagged"] == int((x[:, 0] > 0).sum())
    assert summary["flagged_samples"] == (x[:, 0] > 0).nonzero().flatten().tolist()


def test_chunks_under_max_memory_give_the_same_result(digits_gradients):
    a = digits_gradients
    whole = class_sensitivity(a, similarity="ssim")
    chunked = class_sensitivity(a, similarity="ssim", max_memory=1_000_000)  # four samples a chunk
    torch.testing.assert_close(chunked.matrix, whole.matrix, rtol=0, atol=0)
    with pytest.raises(MemoryError, match="max_memory"):
        class_sensitivity(a, max_memory=1000)


def test_constant_maps_are_undefined_not_flagged():
    # class 2 ignores the input: its gradient map is all zeros
    w = torch.tensor([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0], [0.0, 0.0, 0.0]])
    model = nn.Linear(3, 3)
    with torch.no_grad():
        model.weight.copy_(w)
    r = class_sensitivity(saliency.gradients(model, torch.randn(2, 3)))
    assert torch.isnan(r.matrix[:, 2]).all() and torch.isnan(r.matrix[:, :, 2]).all()
    assert torch.isfinite(r.matrix[:, :2, :2]).all()
    assert torch.isfinite(r.off_diagonal).all()  # the NaN pairs are left out of the means
    assert not r.flagged.any()
    json.dumps(r.summary(), allow_nan=False)


def test_rgb_channels_are_summed_before_comparing():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    a = saliency.gradients(model, torch.randn(2, 3, 8, 8))
    r = class_sensitivity(a)
    maps = a.values.sum(2).abs().flatten(2)
    ref = scipy.stats.spearmanr(maps[1].T.numpy())[0]
    np.testing.assert_allclose(r.matrix[1].numpy(), ref, atol=1e-10)


def test_figure(digits_gradients):
    r = class_sensitivity(digits_gradients)
    fig = plot_class_similarity(r, sample=3, class_names=[f"digit {i}" for i in range(10)])
    assert len(fig.axes) == 2
    assert fig.axes[0].get_xticklabels()[4].get_text() == "digit 4"
    blind = class_sensitivity(saliency.gradients(ClassBlind(), torch.randn(2, 6)))
    assert "flagged" in plot_class_similarity(blind, sample=1).axes[0].get_title()
    with pytest.raises(ValueError, match="sample: index 5"):
        plot_class_similarity(blind, sample=5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"similarity": "pearson"}, ValueError, "similarity: expected one of"),
        ({"threshold": 1.5}, ValueError, r"threshold: expected a similarity in \[-1, 1\]"),
        ({"threshold": "high"}, TypeError, "threshold: expected a number"),
        ({"abs": 1}, TypeError, "abs: expected True or False"),
    ],
)
def test_bad_arguments_are_named(digits_gradients, kwargs, error, match):
    with pytest.raises(error, match=match):
        class_sensitivity(digits_gradients, **kwargs)


def test_bad_attributions_are_named():
    model = nn.Linear(3, 4)
    with pytest.raises(ValueError, match="holds 1 class per sample"):
        class_sensitivity(saliency.gradients(model, torch.randn(2, 3), classes=[1]))
    with pytest.raises(TypeError, match=r"expected a saliency\.Attribution, got Tensor"):
        class_sensitivity(torch.randn(2, 4, 3))
    bad = saliency.gradients(model, torch.randn(2, 3))
    values = bad.values.clone()
    values[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf values for samples \[1\]"):
        class_sensitivity(saliency.Attribution(values, bad.classes, bad.outputs, "gradients"))


def test_result_type_is_exported(digits_gradients):
    assert isinstance(class_sensitivity(digits_gradients), ClassSensitivity)
