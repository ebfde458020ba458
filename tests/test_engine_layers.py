"""``layer=``: Jacobians of every class w.r.t. a module's output, against torch.func on the split
model, with every strategy, budget, streaming, create_graph and guard."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import saliency
from saliency.engine import evaluate, forget_strategy_choices, layer_output

STRATEGIES = [*saliency.engine.STRATEGIES, "auto"]  # every strategy by its record


@pytest.fixture(autouse=True)
def _fresh_choices():
    forget_strategy_choices()
    yield


class Split(nn.Module):
    """``top(mid(bottom(x)))`` with a residual read of ``x`` after the middle layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.bottom = nn.Sequential(nn.Linear(5, 6), nn.Tanh())
        self.mid = nn.Linear(6, 6)
        self.act = nn.ReLU(inplace=True)  # in place on the layer's output: must be harmless
        self.top = nn.Linear(6, 3)
        self.skip = nn.Linear(5, 3)

    def forward(self, x):
        return self.top(self.act(self.mid(self.bottom(x)))) + self.skip(x)

    def after_mid(self, h, x):
        return self.top(torch.relu(h)) + self.skip(x)


def split_oracle(model: Split, x: torch.Tensor) -> torch.Tensor:
    h = model.mid(model.bottom(x)).detach()
    return torch.func.vmap(
        torch.func.jacrev(lambda hi, xi: model.after_mid(hi[None], xi[None])[0]), in_dims=(0, 0)
    )(h, x)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_matches_the_split_model(strategy):
    model = Split().double().eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    if strategy == "head":
        with pytest.raises(ValueError, match="head"):  # the skip connection follows the head
            saliency.class_jacobian(model, x, layer=model.mid, strategy=strategy)
        return
    J = saliency.class_jacobian(model, x, layer=model.mid, strategy=strategy)
    torch.testing.assert_close(J, split_oracle(model, x), atol=1e-10, rtol=1e-10)
    by_name = saliency.class_jacobian(model, x, layer="mid", strategy=strategy)
    torch.testing.assert_close(by_name, J)


def test_layer_with_a_head_after_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3), nn.Tanh(), nn.Linear(3, 20))
    x = torch.randn(5, 4)
    h = model[1](model[0](x)).detach()
    ref = torch.func.vmap(torch.func.jacrev(lambda hi: model[2:](hi)))(h)
    r = evaluate(model, x, layer=model[1])
    assert r.strategy == "head"  # F = 3 of K = 20
    torch.testing.assert_close(r.values, ref)
    torch.testing.assert_close(r.point, h)


def test_token_ids_with_the_embedding_layer():
    torch.manual_seed(0)
    emb = nn.Embedding(11, 4)
    body = nn.Sequential(nn.Linear(4, 5), nn.Tanh())
    head = nn.Linear(5, 3)

    def model(ids):
        return head(body(emb(ids)).mean(1))

    ids = torch.randint(0, 11, (3, 7))
    e = emb(ids).detach()
    ref = torch.func.vmap(torch.func.jacrev(lambda ei: head(body(ei).mean(0))))(e)
    for strategy in [*STRATEGIES[:-2], "auto"]:
        J = saliency.class_jacobian(model, ids, layer=emb, strategy=strategy)
        assert J.shape == (3, 3, 7, 4)
        torch.testing.assert_close(J, ref)
    with pytest.raises(TypeError, match="layer="):
        saliency.class_jacobian(model, ids)  # ids without a layer: say what to do


def test_budget_streaming_and_per_sample_kwargs_at_a_layer():
    model = Split().eval()
    x = torch.randn(9, 5)
    ref = split_oracle(model, x)
    for strategy in ["loop", "vmap", "replicate"]:
        J = saliency.class_jacobian(model, x, layer=model.mid, strategy=strategy, max_memory=4000)
        torch.testing.assert_close(J, ref)
        chunks = list(
            saliency.iter_class_jacobian(
                model, x, layer=model.mid, strategy=strategy, max_memory=1200
            )
        )
        assert len(chunks) > 1
        torch.testing.assert_close(torch.cat([c.values for c in chunks], 1), ref)

    def scaled(t, scale):
        return model(t) * scale

    scale = torch.arange(1.0, 10.0)[:, None]  # per sample: follows the rows
    J = saliency.class_jacobian(scaled, x, layer=model.mid, scale=scale, max_memory=4000)
    torch.testing.assert_close(J, ref * scale[:, :, None])


def test_create_graph_at_a_layer_is_differentiable():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x = torch.randn(2, 3)
    J = saliency.class_jacobian(model, x, layer=model[1], create_graph=True)
    assert J.requires_grad
    (g,) = torch.autograd.grad(J.sum(), model[2].weight)
    # J[b, k, j] = W2[k, j] for this layer: the sum's gradient is the batch size everywhere
    torch.testing.assert_close(g, torch.full_like(g, 2.0))


def test_layer_value_replaces_the_layers_output():
    model = Split().eval()
    x = torch.randn(3, 5)
    h = torch.randn(3, 6)
    r = evaluate(model, x, layer=model.mid, layer_value=h)
    ref = torch.func.vmap(torch.func.jacrev(lambda hi, xi: model.after_mid(hi[None], xi[None])[0]))(
        h, x
    )
    torch.testing.assert_close(r.values, ref)
    torch.testing.assert_close(r.outputs, model.after_mid(h, x).detach())


def test_layer_errors_are_clear():
    model = Split().eval()
    x = torch.randn(2, 5)
    with pytest.raises(ValueError, match="no module named 'nope'"):
        saliency.class_jacobian(model, x, layer="nope")
    with pytest.raises(ValueError, match="did not run"):
        saliency.class_jacobian(model, x, layer=nn.Linear(6, 6))
    twice = nn.Sequential(nn.Linear(5, 5), nn.Tanh())
    with pytest.raises(ValueError, match="ran 2 times"):
        saliency.class_jacobian(lambda t: twice(twice(t)), x, layer=twice[1])
    with pytest.raises(TypeError, match=r"layer: expected an nn\.Module"):
        saliency.class_jacobian(model, x, layer=3)
    with pytest.raises(ValueError, match="layer_value: expected the shape"):
        evaluate(model, x, layer=model.mid, layer_value=torch.randn(2, 4))
    assert layer_output(model, x, "mid").shape == (2, 6)


def test_guards_apply_at_a_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).train()
    before = model[1].running_mean.clone()
    with pytest.raises(ValueError, match="BatchNorm"):
        saliency.class_jacobian(model, torch.randn(3, 4), layer=model[0])
    assert torch.equal(model[1].running_mean, before)


def test_a_layer_inside_torchscript_is_refused_clearly():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).eval()
    scripted = torch.jit.script(plain)
    x = torch.randn(2, 4)
    for layer in ("1", scripted):  # a scripted submodule by name, or the scripted model itself
        with pytest.raises(ValueError, match="TorchScript module"):
            saliency.gradients(scripted, x, layer=layer)
    # Indexing a scripted Sequential gives back the Python module, which never runs.
    with pytest.raises(ValueError, match=r"did not run .*TorchScript"):
        saliency.gradients(scripted, x, layer=scripted[1])
    assert saliency.gradients(plain, x, layer=plain[1]).values.shape == (2, 3, 5)
