"""The class-Jacobian engine against independent oracles (torch.func, autograd, Captum)."""

from __future__ import annotations

import copy

import pytest
import torch
from captum.attr import Saliency
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import saliency
from saliency.engine import evaluate, forget_strategy_choices, parse_memory

STRATEGIES = [*saliency.engine.STRATEGIES, "auto"]  # every strategy by its record
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


class Mixer(nn.Module):
    """LayerNorm, GELU and a residual connection on [B, T, E]."""

    def __init__(self, e: int = 6, classes: int = 5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(e)
        self.ff = nn.Sequential(nn.Linear(e, 12), nn.GELU(), nn.Linear(12, e))
        self.head = nn.Linear(e, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.ff(self.norm(x))
        return self.head(h.mean(dim=1))


def mlp(classes: int = 4) -> nn.Module:
    return nn.Sequential(
        nn.Linear(7, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, classes)
    )


def cnn() -> nn.Module:
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 6),
    )
    # Non-trivial running statistics, so that eval-mode BatchNorm is not the identity.
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


MODELS = {
    "mlp": (mlp, (7,)),
    "cnn": (cnn, (2, 6, 6)),
    "mixer": (Mixer, (3, 6)),
}


def make(name: str, dtype: torch.dtype, batch: int = 3):
    torch.manual_seed(0)
    factory, shape = MODELS[name]
    model = factory().to(dtype)
    x = torch.randn(batch, *shape, dtype=dtype)
    return model, x


def oracle(model, x: torch.Tensor, transform=lambda o: o) -> torch.Tensor:
    """Per-sample Jacobian by torch.func: vmap over samples of jacrev of one sample."""

    def one(xi):
        return transform(model(xi.unsqueeze(0))).squeeze(0)

    return torch.func.vmap(torch.func.jacrev(one))(x)


@pytest.fixture(autouse=True)
def _fresh_choices():
    forget_strategy_choices()
    yield


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_matches_jacrev(name, strategy, dtype):
    model, x = make(name, dtype)
    J = saliency.class_jacobian(model, x, strategy=strategy)
    ref = oracle(model, x)
    assert J.shape == ref.shape and J.dtype == dtype
    torch.testing.assert_close(J, ref, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("name", list(MODELS))
def test_matches_autograd_functional_jacobian(name):
    model, x = make(name, torch.float64)
    full = torch.autograd.functional.jacobian(model, x)  # [B, C, B, *in]
    idx = torch.arange(x.shape[0])
    ref = full[idx, :, idx]  # cross-sample blocks are zero; keep the diagonal
    torch.testing.assert_close(saliency.class_jacobian(model, x), ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", list(MODELS))
def test_each_class_matches_captum_saliency(name):
    model, x = make(name, torch.float32, batch=4)
    J = saliency.class_jacobian(model, x)
    sal = Saliency(model)
    for k in range(J.shape[1]):
        ref = sal.attribute(x.clone(), target=k, abs=False)
        torch.testing.assert_close(J[:, k], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_classes_forms(strategy):
    model, x = make("mlp", torch.float64, batch=5)
    ref = oracle(model, x)
    out = model(x)

    def check(classes, expected):
        J = saliency.class_jacobian(model, x, classes, strategy=strategy)
        torch.testing.assert_close(J, expected, atol=1e-10, rtol=1e-10)

    check(2, ref[:, [2]])
    check([3, 0], ref[:, [3, 0]])
    check(torch.tensor([1, 3, 2]), ref[:, [1, 3, 2]])
    with pytest.raises(ValueError, match="repeats class ids"):  # a shared list: each class once
        check(torch.tensor([1, 1, 2]), None)
    per_sample = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0], [0, 0]])
    check(per_sample, ref[torch.arange(5)[:, None], per_sample])
    top = out.topk(2, dim=1).indices
    check(saliency.top_k(2), ref[torch.arange(5)[:, None], top])
    check(saliency.contrast([0, 3], [1, 2]), ref[:, [0, 3]] - ref[:, [1, 2]])


def test_evaluate_reports_classes_and_outputs():
    model, x = make("mlp", torch.float64)
    res = evaluate(model, x, saliency.top_k(3), output="softmax")
    probs = torch.softmax(model(x), dim=1)
    torch.testing.assert_close(res.outputs, probs)
    assert torch.equal(res.classes, probs.topk(3, dim=1).indices)
    assert not res.outputs.requires_grad


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(
    "output, transform",
    [
        ("softmax", lambda o: torch.softmax(o, 1)),
        ("log_softmax", lambda o: torch.log_softmax(o, 1)),
        (lambda o: 2 * o.sigmoid(), lambda o: 2 * o.sigmoid()),
    ],
)
def test_output_transforms(output, transform, strategy):
    model, x = make("cnn", torch.float64)
    if callable(output) and strategy == "head":
        # The head cannot see what a callable reads besides its argument: it is not taken.
        with pytest.raises(ValueError, match="strategy='head'"):
            saliency.class_jacobian(model, x, output=output, strategy=strategy)
        return
    J = saliency.class_jacobian(model, x, output=output, strategy=strategy)
    torch.testing.assert_close(J, oracle(model, x, transform), atol=1e-10, rtol=1e-10)


def test_scalar_output_counts_as_one_class():
    torch.manual_seed(0)
    lin = nn.Linear(5, 1).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    J = saliency.class_jacobian(lambda t: lin(t).squeeze(1), x)
    assert J.shape == (4, 1, 5)
    torch.testing.assert_close(J[:, 0], lin.weight.expand(4, 5))


@pytest.mark.parametrize("strategy", ["loop", "vmap", "replicate", "auto"])
def test_create_graph_double_backward(strategy):
    model, x = make("mlp", torch.float64)
    params = list(model.parameters())[:-1]  # the last bias does not move the Jacobian
    J = saliency.class_jacobian(model, x, strategy=strategy, create_graph=True)
    assert J.requires_grad
    grads = torch.autograd.grad(J.pow(2).sum(), params)

    # Reference: an explicit per-class loop with create_graph, as a user would write it.
    xr = x.clone().requires_grad_()
    out = model(xr)
    rows = [
        torch.autograd.grad(out[:, k].sum(), xr, create_graph=True)[0] for k in range(out.shape[1])
    ]
    ref = torch.autograd.grad(torch.stack(rows, 1).pow(2).sum(), params)
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=1e-10)


def test_create_graph_differentiates_input_that_requires_grad():
    model, x = make("mlp", torch.float64)
    x = x.requires_grad_()
    J = saliency.class_jacobian(model, x, create_graph=True)
    (g,) = torch.autograd.grad(J.sum(), x)

    def total(xi):
        return oracle(model, xi).sum()

    torch.testing.assert_close(g, torch.func.grad(total)(x.detach()), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("strategy", ["loop", "vmap", "replicate", "forward", "head", "auto"])
def test_tight_budget_chunks_equal_unchunked(strategy):
    model, x = make("cnn", torch.float64, batch=6)
    ref = saliency.class_jacobian(model, x, strategy="loop")
    result_bytes = ref.numel() * ref.element_size()
    budget = result_bytes + 50_000
    J = saliency.class_jacobian(model, x, strategy=strategy, max_memory=budget)
    torch.testing.assert_close(J, ref, atol=1e-10, rtol=1e-10)
    chunks = list(saliency.iter_class_jacobian(model, x, strategy=strategy, max_memory=50_000))
    ids = torch.cat([c.class_ids for c in chunks], 1)
    assert torch.equal(ids, torch.arange(6).expand(6, 6))
    torch.testing.assert_close(torch.cat([c.values for c in chunks], 1), ref)


def test_budget_splits_rows_and_keeps_per_sample_kwargs_aligned():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3).double()

    seen = []

    def model(x, scale, offset):
        seen.append(x.shape[0])
        return lin(x) * scale[:, None] + offset

    x = torch.randn(8, 4, dtype=torch.float64)
    scale = torch.arange(1, 9, dtype=torch.float64)
    offset = torch.ones(3, dtype=torch.float64)  # not per-sample: passes through whole
    J = saliency.class_jacobian(
        model, x, strategy="loop", max_memory=1500, scale=scale, offset=offset
    )
    expected = lin.weight.expand(8, 3, 4) * scale[:, None, None]
    torch.testing.assert_close(J, expected)
    assert max(seen[-2:]) < 8  # the batch really was split


def test_too_small_budget_is_refused_before_work():
    model, x = make("cnn", torch.float32)
    with pytest.raises(MemoryError, match="max_memory"):
        saliency.class_jacobian(model, x, max_memory="1KB")


@pytest.mark.parametrize(
    "text, expected",
    [("512MB", 512 * 10**6), ("2GB", 2 * 10**9), ("1.5GiB", int(1.5 * 2**30)), (1000, 1000)],
)
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("bad", ["lots", "-1GB", "2 parsecs", 0, True])
def test_parse_memory_rejects(bad):
    with pytest.raises((ValueError, TypeError), match="max_memory"):
        parse_memory(bad)


# -- guards ------------------------------------------------------------------------------------


def test_output_of_higher_rank_says_how_to_wrap():
    conv = nn.Conv2d(1, 3, 3, padding=1)
    with pytest.raises(ValueError, match=r"model: output must have shape \[B, C\].*reduce them"):
        saliency.class_jacobian(conv, torch.randn(2, 1, 4, 4))


@pytest.mark.parametrize("classes", [7, [0, 9], torch.tensor([[0], [5]]), saliency.top_k(9)])
def test_class_ids_out_of_range(classes):
    model = nn.Linear(3, 4)
    with pytest.raises(ValueError, match="classes"):
        saliency.class_jacobian(model, torch.randn(2, 3), classes)


@pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.bool])
def test_integer_input_points_at_embeddings(dtype):
    with pytest.raises(TypeError, match=r"x: .*embed"):
        saliency.class_jacobian(nn.Linear(3, 2), torch.ones(2, 3, dtype=dtype))


def test_input_without_batch_dimension():
    with pytest.raises(ValueError, match=r"x: .*rank >= 2"):
        saliency.class_jacobian(nn.Linear(3, 2), torch.ones(3))


def test_nan_output_names_samples():
    lin = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    x[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf for samples \[2\]"):
        saliency.class_jacobian(lin, x)


def test_training_batchnorm_refused():
    model = cnn().train()
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        saliency.class_jacobian(model, torch.randn(2, 2, 6, 6))
    assert model.training  # the guard does not switch the mode itself


def test_bad_strategy_and_output():
    lin = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="strategy"):
        saliency.class_jacobian(lin, torch.randn(2, 3), strategy="magic")
    with pytest.raises(ValueError, match="output"):
        saliency.class_jacobian(lin, torch.randn(2, 3), output="probits")
    with pytest.raises(ValueError, match="create_graph"):
        saliency.class_jacobian(lin, torch.randn(2, 3), strategy="forward", create_graph=True)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_never_mutates_model_or_input(strategy):
    model, x = make("cnn", torch.float32)
    model.train(False)
    model[0].weight.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    x_before = x.clone()
    saliency.class_jacobian(model, x, strategy=strategy)
    assert not model.training and not model[0].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert torch.equal(x, x_before) and not x.requires_grad and x.grad is None


# -- properties over shapes, batches, class sets and dtypes ------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 5),
    features=st.integers(1, 6),
    n_classes=st.integers(1, 7),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    strategy=st.sampled_from(STRATEGIES),
    data=st.data(),
)
def test_property_matches_jacrev(batch, features, n_classes, dtype, strategy, data):
    torch.manual_seed(batch * 100 + features * 10 + n_classes)
    model = nn.Sequential(nn.Linear(features, 5), nn.Tanh(), nn.Linear(5, n_classes)).to(dtype)
    x = torch.randn(batch, features, dtype=dtype)
    ids = data.draw(
        st.lists(st.integers(0, n_classes - 1), min_size=1, max_size=4, unique=True) | st.none()
    )
    J = saliency.class_jacobian(model, x, ids, strategy=strategy)
    ref = oracle(model, x)
    if ids is not None:
        ref = ref[:, ids]
    torch.testing.assert_close(J, ref, atol=TOL[dtype], rtol=TOL[dtype])


def test_auto_measures_once_per_model_and_shape(monkeypatch):
    from saliency.engine import auto

    races = []
    real = auto.Race
    monkeypatch.setattr(auto, "Race", lambda *a: races.append(1) or real(*a))
    model, x = make("mlp", torch.float32)
    for _ in range(3):
        saliency.class_jacobian(model, x)
    assert len(races) == 1
    saliency.class_jacobian(model, torch.cat([x, x, x]))  # another batch size: measured again
    assert len(races) == 2
    assert evaluate(model, x).strategy in {"loop", "vmap", "replicate", "forward", "head"}


@pytest.mark.parametrize("strategy", ["loop", "vmap", "replicate"])
def test_per_sample_ids_follow_rows_under_budget(strategy):
    model, x = make("mlp", torch.float64, batch=6)
    ids = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0], [0, 2], [1, 3]])
    ref = oracle(model, x)[torch.arange(6)[:, None], ids]
    J = saliency.class_jacobian(model, x, ids, strategy=strategy, max_memory=3000)
    torch.testing.assert_close(J, ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("strategy", ["loop", "vmap", "replicate"])
def test_streamed_chunks_respect_the_budget(strategy):
    model, x = make("cnn", torch.float32, batch=16)
    budget = 60_000
    chunks = list(saliency.iter_class_jacobian(model, x, strategy=strategy, max_memory=budget))
    assert all(c.values.numel() * c.values.element_size() <= budget for c in chunks)
    ref = saliency.class_jacobian(model, x, strategy="loop")
    torch.testing.assert_close(torch.cat([c.values for c in chunks], 1), ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cuda_matches_cpu(strategy):
    model, x = make("cnn", torch.float32, batch=4)
    ref = saliency.class_jacobian(model, x, strategy="loop")
    J = saliency.class_jacobian(model.cuda(), x.cuda(), strategy=strategy, max_memory="64MB")
    assert J.device.type == "cuda"
    torch.testing.assert_close(J.cpu(), ref, atol=1e-5, rtol=1e-5)


# -- regressions found in review -----------------------------------------------------------------


def test_swapping_the_head_or_changing_the_output_width_is_seen():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.randn(5, 4)
    assert saliency.class_jacobian(model, x).shape == (5, 3, 4)
    model[2] = nn.Linear(8, 10)
    assert saliency.class_jacobian(model, x).shape == (5, 10, 4)
    doubled = saliency.class_jacobian(model, x, output=lambda o: torch.cat([o, -o], 1))
    assert doubled.shape == (5, 20, 4)
    torch.testing.assert_close(doubled[:, 10:], -doubled[:, :10])


def test_batchnorm_without_running_stats_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False))
    model = nn.Sequential(*model, nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).eval()
    with pytest.raises(ValueError, match="track_running_stats"):
        saliency.class_jacobian(model, torch.randn(3, 1, 6, 6))


def test_bound_forward_of_training_batchnorm_is_refused_and_stats_untouched():
    model = cnn().train()
    before = model[1].running_mean.clone()
    with pytest.raises(ValueError, match="BatchNorm"):
        saliency.class_jacobian(model.forward, torch.randn(3, 2, 6, 6))
    assert torch.equal(model[1].running_mean, before)


def test_probe_counts_rows_not_the_whole_batch():
    from saliency.engine.probe import probe
    from saliency.engine.problem import make_problem

    def measured(model, x):
        p = make_problem(model, x, None, "logits", "auto", None, False, {}, ("loop",))
        return probe(p, None)[0].act

    assert measured(nn.Linear(512, 1), torch.randn(256, 512)) <= 2 * measured(
        nn.Linear(512, 1), torch.randn(4, 512)
    )


def test_a_failing_backward_raises_the_models_own_error():
    class Broken(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            raise RuntimeError("no backward here")

    lin = nn.Linear(3, 2)
    with pytest.raises(RuntimeError, match="no backward here"):
        saliency.class_jacobian(lambda t: lin(Broken.apply(t)), torch.randn(2, 3))


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_budget_is_refused(bad):
    with pytest.raises(ValueError, match="max_memory"):
        saliency.class_jacobian(nn.Linear(3, 2), torch.randn(2, 3), max_memory=bad)


def test_create_graph_must_be_a_bool():
    with pytest.raises(TypeError, match="create_graph"):
        saliency.class_jacobian(nn.Linear(3, 2), torch.randn(2, 3), create_graph="no")


def test_integer_scalar_output_is_refused_clearly():
    with pytest.raises(TypeError, match="floating point"):
        saliency.class_jacobian(lambda t: t.sum(1).long(), torch.randn(2, 3))


def test_numpy_class_ids_are_accepted():
    import numpy as np

    model, x = make("mlp", torch.float64)
    ref = oracle(model, x)
    J = saliency.class_jacobian(model, x, np.array([2, 0]))
    torch.testing.assert_close(J, ref[:, [2, 0]])
    per_sample = np.array([[1], [3], [0]])
    J = saliency.class_jacobian(model, x, per_sample, max_memory=3000)
    torch.testing.assert_close(J, ref[torch.arange(3)[:, None], torch.as_tensor(per_sample)])
    assert saliency.class_jacobian(model, x, np.int64(1)).shape[1] == 1
