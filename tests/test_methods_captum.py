"""saliency.from_captum against Captum itself, called by hand once per class."""

from __future__ import annotations

import functools
import warnings
from types import SimpleNamespace

import pytest
import torch
from captum.attr import (
    DeepLift,
    GuidedBackprop,
    GuidedGradCam,
    IntegratedGradients,
    LayerActivation,
    LayerGradCam,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from torch import nn

import saliency
from saliency.methods import Method
from saliency.methods._captum import from_captum

# The oracle calls Captum directly, which announces what it does on every call.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients"),
    pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU"),
    pytest.mark.filterwarnings("ignore:Setting forward, backward hooks"),
]

TOL = {"rtol": 1e-5, "atol": 1e-6}


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(4 * 4 * 4, 12), nn.ReLU(), nn.Linear(12, 5),
    ).eval()  # fmt: skip


def images(b: int = 4) -> torch.Tensor:
    return torch.randn(b, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def by_hand(explainer, x, columns, **kwargs) -> torch.Tensor:
    """Captum once per class column: ``[B, K, *shape]``."""
    return torch.stack([explainer.attribute(x, target=t, **kwargs) for t in columns], dim=1)


def per_sample(ids: torch.Tensor) -> list[list[int]]:
    """Captum's per-sample target lists, one per class column of ``[B, K]`` ids."""
    return [ids[:, k].tolist() for k in range(ids.shape[1])]


@pytest.mark.parametrize("captum_class", [GuidedBackprop, DeepLift, Saliency])
def test_hook_and_gradient_methods_equal_captum_for_every_class(captum_class):
    model, x = cnn(), images()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Captum's per-call notices do not reach the caller
        a = from_captum(captum_class, model, x)
    assert a.values.shape == (4, 5, 1, 8, 8) and a.method == f"captum.{captum_class.__name__}"
    assert torch.equal(a.classes, torch.arange(5).expand(4, 5))
    torch.testing.assert_close(a.outputs, model(x).detach())
    assert a.delta is None
    torch.testing.assert_close(a.values, by_hand(captum_class(model), x, range(5)), **TOL)


def test_occlusion_with_windows_and_strides():
    model, x = cnn(), images(3)
    kwargs = {
        "sliding_window_shapes": (1, 3, 3),
        "strides": (1, 2, 2),
        "baselines": 0.5,
        "perturbations_per_eval": 9,
    }
    a = from_captum(Occlusion, model, x, [4, 0], **kwargs)
    torch.testing.assert_close(a.values, by_hand(Occlusion(model), x, [4, 0], **kwargs), **TOL)
    assert a.params["attribute_kwargs"]["sliding_window_shapes"] == [1, 3, 3]


def test_integrated_gradients_with_steps_baselines_and_delta():
    model, x = cnn(), images()
    base = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))  # per sample
    kwargs = {"baselines": base, "n_steps": 16, "method": "riemann_middle"}
    a = from_captum(IntegratedGradients, model, x, [1, 3], return_convergence_delta=True, **kwargs)
    ig = IntegratedGradients(model)
    refs = [ig.attribute(x, target=c, return_convergence_delta=True, **kwargs) for c in (1, 3)]
    torch.testing.assert_close(a.values, torch.stack([r[0] for r in refs], 1), **TOL)
    torch.testing.assert_close(a.delta, torch.stack([r[1] for r in refs], 1), **TOL)
    assert a.params["attribute_kwargs"]["baselines"] == "tensor[4, 1, 8, 8]"
    # internal_batch_size only changes how Captum batches its path points
    b = from_captum(IntegratedGradients, model, x, [1, 3], internal_batch_size=7, **kwargs)
    torch.testing.assert_close(b.values, a.values, **TOL)


@pytest.mark.parametrize("by_name", [True, False])
def test_layer_grad_cam_on_a_conv_layer(by_name):
    model, x = cnn(), images()
    layer = "0" if by_name else model[0]
    a = from_captum(LayerGradCam, model, x, layer=layer, relu_attributions=True)
    ref = by_hand(LayerGradCam(model, model[0]), x, range(5), relu_attributions=True)
    assert a.values.shape == (4, 5, 1, 8, 8)
    torch.testing.assert_close(a.values, ref, **TOL)
    assert a.params["layer"] == "0" and a.params["attribute_kwargs"] == {"relu_attributions": True}
    g = from_captum(GuidedGradCam, model, x, [2], layer="0")
    torch.testing.assert_close(g.values, by_hand(GuidedGradCam(model, model[0]), x, [2]), **TOL)


def test_every_class_form():
    model, x = cnn(), images()
    gb = GuidedBackprop(model)
    logits = model(x).detach()
    ids = torch.tensor([[4, 0], [1, 1], [3, 2], [0, 4]])
    top = logits.topk(3, dim=1).indices
    cases = [
        (None, torch.arange(5).expand(4, 5)),
        (2, torch.full((4, 1), 2)),
        ([3, 1], torch.tensor([3, 1]).expand(4, 2)),
        (torch.tensor([3, 1]), torch.tensor([3, 1]).expand(4, 2)),
        (ids, ids),
        (ids.numpy(), ids),
        (saliency.top_k(3), top),
    ]
    for classes, expected in cases:
        a = from_captum(GuidedBackprop, model, x, classes)
        assert torch.equal(a.classes, expected)
        torch.testing.assert_close(a.values, by_hand(gb, x, per_sample(expected)), **TOL)
    assert a.params["classes"] == {"top_k": 3}


class Difference(nn.Module):
    """The oracle for a contrast: the model's score difference as a one-output model."""

    def __init__(self, model: nn.Module, a: int, b: int) -> None:
        super().__init__()
        self.model, self.a, self.b = model, a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.softmax(self.model(x), dim=1)
        return (out[:, self.a] - out[:, self.b]).unsqueeze(1)


def test_contrast_explains_the_difference_itself():
    model, x = cnn(), images()
    a = from_captum(DeepLift, model, x, saliency.contrast([1, 4], [0, 2]), output="softmax")
    assert torch.equal(a.classes, torch.tensor([1, 4]).expand(4, 2))
    for k, (i, j) in enumerate([(1, 0), (4, 2)]):
        ref = DeepLift(Difference(model, i, j)).attribute(x, target=0)
        torch.testing.assert_close(a.values[:, k], ref, **TOL)
    torch.testing.assert_close(a.outputs, torch.softmax(model(x), 1).detach())
    assert a.params["classes"] == {"contrast": [[1, 4], [0, 2]]}


def test_output_transforms_index_the_transformed_scores():
    model, x = cnn(), images()
    soft = nn.Sequential(model, nn.Softmax(dim=1))
    a = from_captum(GuidedBackprop, model, x, saliency.top_k(2), output="softmax")
    probs = soft(x).detach()
    torch.testing.assert_close(a.outputs, probs)
    assert torch.equal(a.classes, probs.topk(2, dim=1).indices)
    ref = by_hand(GuidedBackprop(soft), x, per_sample(a.classes))
    torch.testing.assert_close(a.values, ref, **TOL)
    kw = {"sliding_window_shapes": (1, 4, 4), "strides": 4}
    b = from_captum(Occlusion, model, x, [0, 3], output=lambda out: out.log_softmax(1), **kw)
    logsoft = nn.Sequential(model, nn.LogSoftmax(dim=1))
    torch.testing.assert_close(b.values, by_hand(Occlusion(logsoft), x, [0, 3], **kw), **TOL)
    assert b.params["output"].endswith("<locals>.<lambda>")


class Tupled(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.net = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x), x.mean()


class WithLogits(Tupled):
    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.net(x), hidden=x)


class AsDict(Tupled):
    def forward(self, x: torch.Tensor) -> dict:
        return {"features": x, "logits": self.net(x)}


@pytest.mark.parametrize("wrapper", [Tupled, WithLogits, AsDict])
def test_models_returning_tuples_objects_and_mappings(wrapper):
    model, x = cnn(), images()
    a = from_captum(GuidedBackprop, wrapper(model), x, [0, 2])
    torch.testing.assert_close(a.values, by_hand(GuidedBackprop(model), x, [0, 2]), **TOL)
    torch.testing.assert_close(a.outputs, model(x).detach())


class Scaled(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.net = model

    def forward(self, x: torch.Tensor, scale: float | torch.Tensor = 1.0) -> torch.Tensor:
        if isinstance(scale, torch.Tensor):
            scale = scale.view(-1, 1)
        return self.net(x) * scale


def test_partials_bound_methods_and_functions():
    model, x = Scaled(cnn()), images()
    gb = GuidedBackprop(model)
    ref = by_hand(gb, x, [1, 2], additional_forward_args=(3.0,))
    for wrapped in (functools.partial(model, scale=3), functools.partial(model.forward, scale=3)):
        a = from_captum(GuidedBackprop, wrapped, x, [1, 2])
        torch.testing.assert_close(a.values, ref, **TOL)
    # A plain function hides its modules from hooks: refused for hook-based methods ...
    with pytest.raises(TypeError, match="model: GuidedBackprop works through hooks"):
        from_captum(GuidedBackprop, lambda t: model(t, 3.0), x)
    # ... and fine for methods that only call it.
    a = from_captum(IntegratedGradients, lambda t: model(t, 3.0), x, [1], n_steps=8)
    ref = IntegratedGradients(functools.partial(model, scale=3.0)).attribute(x, target=1, n_steps=8)
    torch.testing.assert_close(a.values[:, 0], ref, **TOL)


def test_forward_kwargs_go_to_the_model_expanded_by_captum():
    model, x = Scaled(cnn()), images()
    scale = torch.tensor([1.0, 2.0, -1.0, 0.5])  # per sample
    a = from_captum(IntegratedGradients, model, x, [0, 4], scale=scale, n_steps=6)
    ref = by_hand(
        IntegratedGradients(model), x, [0, 4], additional_forward_args=(scale,), n_steps=6
    )
    torch.testing.assert_close(a.values, ref, **TOL)
    torch.testing.assert_close(a.outputs, model(x, scale).detach())
    d = from_captum(DeepLift, model, x, [3], scale=scale)  # DeepLift doubles the batch
    torch.testing.assert_close(
        d.values, by_hand(DeepLift(model), x, [3], additional_forward_args=(scale,)), **TOL
    )
    with pytest.raises(TypeError, match="every keyword that Captum's attribute does not take"):
        from_captum(IntegratedGradients, model, x, n_step=6)  # a typo reaches the model


class Squeezed(nn.Module):
    """A layer whose output has nothing per sample but the batch: ``[B]``."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.sum(1)


def test_results_of_shape_b_are_stored_as_b_k_1():
    torch.manual_seed(0)
    lin, squeeze, head = nn.Linear(3, 2), Squeezed(), nn.Linear(1, 4)
    model = nn.Sequential(lin, nn.Tanh(), squeeze, nn.Unflatten(0, (-1, 1)), head)
    x = torch.randn(5, 3)
    a = from_captum(LayerGradientXActivation, model, x, layer=squeeze)
    assert a.values.shape == (5, 4, 1)
    ref = by_hand(LayerGradientXActivation(model, squeeze), x, range(4))
    assert ref.shape == (5, 4)
    torch.testing.assert_close(a.values[..., 0], ref, **TOL)


def test_token_ids_at_an_embedding_layer_of_a_huggingface_model():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, num_labels=3, max_position_embeddings=12,
    )  # fmt: skip
    bert = transformers.BertForSequenceClassification(config).eval()
    ids = torch.randint(1, 40, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    layer = "bert.embeddings.word_embeddings"
    a = from_captum(
        LayerIntegratedGradients, bert, ids, [0, 2], layer=layer, attention_mask=mask, n_steps=8
    )
    assert a.values.shape == (2, 2, 6, 8)
    embedding = bert.get_submodule(layer)

    def logits(i, m):
        return bert(i, attention_mask=m).logits

    lig = LayerIntegratedGradients(logits, embedding)
    ref = by_hand(lig, ids, [0, 2], additional_forward_args=(mask,), n_steps=8)
    torch.testing.assert_close(a.values, ref, **TOL)
    torch.testing.assert_close(a.outputs, logits(ids, mask).detach())


def test_token_ids_under_occlusion():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(30, 4), nn.Flatten(), nn.Linear(5 * 4, 3)).eval()
    ids = torch.randint(1, 30, (3, 5), generator=torch.Generator().manual_seed(4))
    kw = {"sliding_window_shapes": (1,), "baselines": 0}
    a = from_captum(Occlusion, model, ids, [2, 0], **kw)
    torch.testing.assert_close(a.values, by_hand(Occlusion(model), ids, [2, 0], **kw), **TOL)
    assert torch.equal(
        ids, torch.randint(1, 30, (3, 5), generator=torch.Generator().manual_seed(4))
    )


def test_leaves_model_and_input_alone():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
        nn.Linear(3 * 64, 4),
    ).eval()  # fmt: skip
    model[4].bias.requires_grad_(False)
    model.train()
    model[1].eval()  # training mode elsewhere, but running statistics for BatchNorm
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    attributes = [sorted(vars(m)) for m in model.modules()]
    x = images(3)
    x_before = x.clone()
    for captum_class, kw in [(DeepLift, {}), (GuidedBackprop, {}), (LayerGradCam, {"layer": "0"})]:
        from_captum(captum_class, model, x, **kw)
    assert [m.training for m in model.modules()] == [True, True, False, True, True, True]
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert [sorted(vars(m)) for m in model.modules()] == attributes
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert torch.equal(x, x_before) and not x.requires_grad and x.grad is None


def test_batchnorm_using_batch_statistics_is_refused():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).train()
    with pytest.raises(ValueError, match="BatchNorm"):
        from_captum(GuidedBackprop, model, torch.randn(5, 4))


BAD = [
    ({"method": GuidedBackprop(cnn())}, TypeError, "method: expected a Captum .* an instance"),
    ({"method": Method}, TypeError, "method: expected a Captum attribution class"),
    ({"method": NoiseTunnel}, TypeError, "saliency.smoothgrad"),
    ({"method": LayerActivation, "layer": "0"}, TypeError, "no target"),
    ({"method": LayerGradCam}, ValueError, "layer: LayerGradCam attributes to a layer"),
    ({"layer": "0"}, ValueError, "layer: GuidedBackprop attributes to the input"),
    ({"method": LayerGradCam, "layer": "conv9"}, ValueError, "no module named 'conv9'"),
    ({"method": LayerGradCam, "layer": nn.Conv2d(1, 4, 3)}, ValueError, "not a module of"),
    ({"method": LayerGradCam, "layer": 3}, TypeError, "layer: expected an nn.Module"),
    ({"max_memory": "1GB"}, ValueError, "max_memory: from_captum cannot bound"),
    ({"output": "probabilities"}, ValueError, "output: expected one of"),
    ({"init_kwargs": [1]}, TypeError, "init_kwargs: expected a dict"),
    ({"init_kwargs": {"model": None}}, TypeError, "init_kwargs: 'model' is set by from_captum"),
    ({"target": 3}, TypeError, "target: set by from_captum"),
    ({"additional_forward_args": (1,)}, TypeError, "additional_forward_args: set by"),
    ({"classes": [7]}, ValueError, r"ids \[7\] are out of range"),
    ({"x": (images(), images())}, TypeError, "x: expected one tensor"),
    ({"x": torch.ones(4, 1, 8, 8, dtype=torch.long)}, TypeError, "x: expected a floating tensor"),
    ({"model": "cnn"}, TypeError, "model: expected an nn.Module or a callable"),
]


@pytest.mark.parametrize(("change", "error", "match"), BAD)
def test_bad_arguments(change, error, match):
    call = {"method": GuidedBackprop, "model": cnn(), "x": images(), "classes": None, **change}
    method, model, x, classes = (call.pop(k) for k in ("method", "model", "x", "classes"))
    with pytest.raises(error, match=match):
        from_captum(method, model, x, classes, **call)


def test_a_mapping_without_logits_is_a_clear_error():
    with pytest.raises(TypeError, match=r"'logits' tensor.*output= a callable"):
        from_captum(Saliency, lambda t: {"scores": t.sum(1)}, torch.randn(3, 2))


def test_round_trips_through_save_and_load(tmp_path):
    model, x = cnn(), images()
    a = from_captum(
        IntegratedGradients, model, x, saliency.top_k(2), n_steps=5, return_convergence_delta=True
    )
    path = tmp_path / "ig.safetensors"
    a.save(path)
    b = saliency.Attribution.load(path)
    assert torch.equal(a.values, b.values) and torch.equal(a.delta, b.delta)
    assert torch.equal(a.classes, b.classes) and torch.equal(a.outputs, b.outputs)
    assert (b.method, b.params) == (a.method, a.params)


def test_follows_the_method_contract_inside_smoothgrad():
    model, x = cnn(), images(3)
    method = functools.partial(from_captum, GuidedBackprop)
    assert isinstance(method, Method)
    n, std = 3, 0.2
    a = saliency.smoothgrad(model, x, [2, 0], method=method, n_samples=n, noise_std=std, seed=5)
    assert a.params["method"] == "captum.GuidedBackprop"
    # The same noise, drawn as smoothgrad documents it, through Captum by hand.
    g = torch.Generator().manual_seed(5)
    noisy = [x + std * torch.randn(x.shape, generator=g) for _ in range(n)]
    ref = sum(by_hand(GuidedBackprop(model), xi, [2, 0]) for xi in noisy) / n
    torch.testing.assert_close(a.values, ref, **TOL)


def test_a_shared_forward_argument_is_not_repeated_with_the_batch():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)

    class Biased(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x, class_bias):  # one bias per class, not per sample
            return self.lin(torch.tanh(x)) + class_bias

    model, x, bias = Biased().eval(), torch.randn(2, 4), torch.randn(3)
    ours = saliency.integrated_gradients(model, x, steps=8, rule="riemann_middle", class_bias=bias)
    theirs = from_captum(
        IntegratedGradients, model, x, n_steps=8, method="riemann_middle", class_bias=bias
    )
    torch.testing.assert_close(theirs.values, ours.values, atol=1e-6, rtol=1e-5)
