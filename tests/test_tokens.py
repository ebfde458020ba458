"""Token and patch reductions of attributions, against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

import saliency
from saliency.tokens import patch_scores, token_scores


def attribution(values, delta=None, method="gradients") -> saliency.Attribution:
    values = torch.as_tensor(values, dtype=torch.float32)
    b, k = values.shape[:2]
    classes = torch.arange(k).expand(b, k)
    outputs = torch.arange(b * 3, dtype=torch.float32).view(b, 3)
    return saliency.Attribution(values, classes, outputs, method, {"steps": 4}, delta)


# One sample, one class, two tokens of width 2.
TOKENS = [[[[3.0, 4.0], [1.0, -1.0]]]]


def test_token_reductions_by_hand():
    a = attribution(TOKENS, delta=torch.tensor([[0.25]]))
    summed = token_scores(a)
    assert summed.values.tolist() == [[[7.0, 0.0]]]
    torch.testing.assert_close(
        token_scores(a, "norm").values, torch.tensor([[[5.0, math.sqrt(2)]]])
    )
    embeddings = torch.tensor([[[1.0, 0.0], [2.0, 2.0]]])
    assert token_scores(a, "times_input", embeddings).values.tolist() == [[[3.0, 0.0]]]
    # The sum leaves each row's total, hence its completeness gap, as it was; the others do not.
    assert summed.delta.tolist() == [[0.25]]
    assert token_scores(a, "norm").delta is None
    assert token_scores(a, "times_input", embeddings).delta is None
    assert torch.equal(summed.classes, a.classes) and torch.equal(summed.outputs, a.outputs)
    assert summed.method == "gradients"
    assert summed.params == {"steps": 4, "token_scores": "sum"}


def test_integrated_gradients_token_sums_keep_completeness():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(6 * 4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    ).double()
    embedded = torch.randn(2, 6, 4, dtype=torch.float64)
    a = saliency.integrated_gradients(model, embedded, steps=64)
    s = token_scores(a)
    assert s.values.shape == (2, 3, 6)
    gap = (model(embedded) - model(torch.zeros_like(embedded))).detach()
    torch.testing.assert_close(s.values.sum(-1) - gap, s.delta)
    torch.testing.assert_close(s.delta, a.delta)


def test_times_input_is_gradient_times_input_per_token():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(5 * 3, 2))
    embedded = torch.randn(4, 5, 3)
    g = saliency.gradients(model, embedded)
    by_token = token_scores(g, "times_input", embeddings=embedded)
    gxi = saliency.gradients(model, embedded, times_input=True)
    torch.testing.assert_close(by_token.values, gxi.values.sum(-1))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"attribution": torch.zeros(1, 1, 2, 2)}, TypeError, "attribution: expected a saliency"),
        ({"attribution": attribution([[[1.0, 2.0]]])}, ValueError, r"\[B, K, T, E\].*\[1, 1, 2\]"),
        ({"how": "mean"}, ValueError, "how: expected one of"),
        ({"how": "times_input"}, ValueError, r"embeddings: .*shape \[1, 2, 2\]"),
        ({"how": "times_input", "embeddings": torch.ones(1, 2, 3)}, ValueError, r"got \[1, 2, 3\]"),
        ({"how": "times_input", "embeddings": [[1.0]]}, TypeError, "embeddings: expected a torch"),
        ({"embeddings": torch.ones(1, 2, 2)}, ValueError, "embeddings: only how='times_input'"),
    ],
)
def test_token_errors(kwargs, error, match):
    kwargs = {"attribution": attribution(TOKENS), **kwargs}
    with pytest.raises(error, match=match):
        token_scores(**kwargs)


def test_patch_reductions_by_hand():
    grid = torch.arange(16.0).view(1, 1, 1, 4, 4)  # one sample, one class, one channel
    a = attribution(grid, delta=torch.tensor([[1.5]]))
    pooled = patch_scores(a, patch=2)
    assert pooled.values.tolist() == [[[[10.0, 18.0], [42.0, 50.0]]]]
    assert pooled.delta.tolist() == [[1.5]]
    assert pooled.params == {"steps": 4, "patch_scores": {"patch": 2, "how": "sum"}}
    signs = torch.tensor([[1.0, -1.0], [-2.0, 2.0]]).repeat(2, 2).view(1, 1, 1, 4, 4)
    assert patch_scores(attribution(signs), 2).values.tolist() == [[[[0.0, 0.0], [0.0, 0.0]]]]
    abs_sum = patch_scores(attribution(signs, delta=torch.tensor([[1.0]])), 2, "abs_sum")
    assert abs_sum.values.tolist() == [[[[6.0, 6.0], [6.0, 6.0]]]] and abs_sum.delta is None
    two_channels = torch.stack([grid[0, 0, 0], -grid[0, 0, 0]]).view(1, 1, 2, 4, 4)
    norm = patch_scores(attribution(two_channels), 4, "norm")
    assert norm.values.shape == (1, 1, 1, 1)
    torch.testing.assert_close(norm.values.flatten(), (2 * grid.square().sum()).sqrt().view(1))
    channel_free = patch_scores(attribution(grid[:, :, 0]), 2)  # [B, K, H, W]
    assert torch.equal(channel_free.values, pooled.values)


def test_patch_scores_of_a_vit_sized_batch():
    values = torch.randn(2, 3, 3, 32, 48)
    pooled = patch_scores(attribution(values), 16).values
    assert pooled.shape == (2, 3, 2, 3)
    torch.testing.assert_close(pooled[1, 2, 1, 2], values[1, 2, :, 16:32, 32:48].sum())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patch": 3}, r"patch: the maps are 4 x 4 pixels, not a whole number of 3 x 3"),
        ({"patch": 0}, "patch: expected a positive int"),
        ({"patch": True}, "patch: expected a positive int"),
        ({"how": "max"}, "how: expected one of"),
        ({"attribution": attribution(TOKENS[0])}, r"attribution: expected values .* \[1, 2, 2\]"),
    ],
)
def test_patch_errors(kwargs, match):
    kwargs = {"attribution": attribution(torch.ones(1, 1, 1, 4, 4)), **kwargs}
    with pytest.raises(ValueError, match=match):
        patch_scores(**kwargs)
