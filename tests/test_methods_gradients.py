"""saliency.gradients against Captum's Saliency and InputXGradient, one class at a time."""

from __future__ import annotations

import pytest
import torch
from captum.attr import InputXGradient, Saliency
from captum.testing.helpers.basic_models import BasicModel_ConvNet_One_Conv, BasicModel_MultiLayer
from torch import nn

import saliency

# Captum sets requires_grad on the inputs it is given, and says so.
pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(4 * 4 * 4, 16), nn.Tanh(), nn.Linear(16, 5),
    ).eval()  # fmt: skip


@pytest.mark.parametrize("strategy", ["loop", "vmap", "auto"])
def test_equals_captum_saliency_for_every_class(strategy):
    model = cnn()
    x = torch.randn(6, 1, 8, 8)
    a = saliency.gradients(model, x, strategy=strategy)
    assert a.values.shape == (6, 5, 1, 8, 8) and a.method == "gradients"
    assert torch.equal(a.classes, torch.arange(5).expand(6, 5))
    torch.testing.assert_close(a.outputs, model(x).detach())
    for c in range(5):
        ref = Saliency(model).attribute(x, target=c, abs=False)
        torch.testing.assert_close(a.select(c), ref, rtol=1e-5, atol=1e-5)
    absolute = saliency.gradients(model, x, [1, 3], abs=True, strategy=strategy)
    ref = Saliency(model).attribute(x, target=3)  # Captum's default is abs=True
    torch.testing.assert_close(absolute.select(3), ref, rtol=1e-5, atol=1e-5)


def test_times_input_equals_captum_input_x_gradient():
    model = BasicModel_ConvNet_One_Conv().eval()
    x = torch.randn(3, 1, 4, 4)
    a = saliency.gradients(model, x, times_input=True, strategy="loop")
    for c in range(a.values.shape[1]):
        ref = InputXGradient(model).attribute(x, target=c)
        torch.testing.assert_close(a.select(c), ref, rtol=1e-5, atol=1e-5)
    both = saliency.gradients(model, x, [1], times_input=True, abs=True, strategy="loop")
    torch.testing.assert_close(both.values[:, 0], a.select(1).abs())
    assert both.params["times_input"] and both.params["abs"]


def test_per_sample_targets_are_a_column_tensor():
    model = cnn()
    x = torch.randn(4, 1, 8, 8)
    captum_targets = [3, 0, 4, 4]  # Captum: one target per sample
    a = saliency.gradients(model, x, torch.tensor(captum_targets).unsqueeze(1), strategy="loop")
    ref = Saliency(model).attribute(x, target=captum_targets, abs=False)
    torch.testing.assert_close(a.values[:, 0], ref, rtol=1e-5, atol=1e-5)
    assert a.classes[:, 0].tolist() == captum_targets


def test_top_k_softmax_and_contrast():
    model = cnn()
    x = torch.randn(5, 1, 8, 8)
    a = saliency.gradients(model, x, saliency.top_k(2), output="softmax", strategy="loop")
    probs = torch.softmax(model(x), 1).detach()
    torch.testing.assert_close(a.outputs, probs)
    assert torch.equal(a.classes, probs.topk(2, dim=1).indices)
    soft = nn.Sequential(model, nn.Softmax(dim=1))
    for b in range(5):
        ref = Saliency(soft).attribute(x[b : b + 1], target=int(a.classes[b, 1]), abs=False)
        torch.testing.assert_close(a.values[b, 1], ref[0], rtol=1e-5, atol=1e-6)
    c = saliency.gradients(model, x, saliency.contrast(1, 4), strategy="loop")
    full = saliency.gradients(model, x, strategy="loop")
    torch.testing.assert_close(c.values[:, 0], full.contrast(1, 4), rtol=1e-5, atol=1e-6)
    assert c.params["classes"] == {"contrast": [[1], [4]]}


def test_forward_kwargs_pass_through():
    model = BasicModel_MultiLayer()
    x = torch.tensor([[1.5, 2.0, 1.3], [0.5, 0.1, 2.3], [1.5, 2.0, 1.3]])
    add = torch.tensor([[0.1, -2.0, 0.3], [1.0, 1.0, 1.0], [-5.0, 0.0, 0.0]])
    a = saliency.gradients(model, x, add_input=add, strategy="loop")
    for c in range(2):
        ref = Saliency(model).attribute(x, target=c, abs=False, additional_forward_args=(add,))
        torch.testing.assert_close(a.select(c), ref)


def test_leaves_model_and_input_alone():
    model = cnn().train()
    for p in model[0].parameters():
        p.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    x = torch.randn(2, 1, 8, 8)
    before = x.clone()
    saliency.gradients(model, x, times_input=True, abs=True, strategy="loop")
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(x, before) and not x.requires_grad


def test_constant_jacobian_scaled_in_place_safely():
    # An identity model's Jacobian may come back as a broadcast view: scaling must not fail.
    x = torch.randn(3, 4)
    for strategy in ("loop", "vmap", "replicate", "forward"):
        a = saliency.gradients(lambda t: t * 1.0, x, times_input=True, strategy=strategy)
        torch.testing.assert_close(a.values, torch.diag_embed(x))


def test_bad_arguments():
    model = cnn()
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(TypeError, match="times_input: expected True or False, got 1"):
        saliency.gradients(model, x, times_input=1)
    with pytest.raises(TypeError, match="abs: expected True or False, got 'yes'"):
        saliency.gradients(model, x, abs="yes")
    with pytest.raises(ValueError, match="classes: ids \\[7\\] are out of range"):
        saliency.gradients(model, x, [7])


def test_tight_memory_equals_unchunked():
    model = cnn()
    x = torch.randn(8, 1, 8, 8, dtype=torch.float64)
    model = model.double()
    full = saliency.gradients(model, x, strategy="loop")
    tight = saliency.gradients(model, x, strategy="loop", max_memory=60_000)
    torch.testing.assert_close(tight.values, full.values)
    # per-sample ids must follow their rows when the engine splits the batch
    ids = torch.tensor([[4, 0], [1, 2], [3, 3], [0, 1], [2, 4], [1, 1], [0, 0], [4, 2]])
    full = saliency.gradients(model, x, ids, strategy="loop")
    tight = saliency.gradients(model, x, ids, strategy="loop", max_memory=30_000)
    torch.testing.assert_close(tight.values, full.values)
    assert torch.equal(tight.classes, ids)
