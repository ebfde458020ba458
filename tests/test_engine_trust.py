"""Never silently wrong: fast paths exact or not taken, guards that see the model as it runs.

Each test is a case seen when the engine was tried as a new user would (issue 8), checked against
``torch.func.jacrev`` on a model the engine did not write, with the caller's model state compared
before and after.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import saliency
from saliency.engine import GuardError, evaluate, forget_strategy_choices

STRATEGIES = [*saliency.engine.STRATEGIES, "auto"]  # every strategy by its record


@pytest.fixture(autouse=True)
def _fresh_choices():
    forget_strategy_choices()
    yield


def oracle(f, x: torch.Tensor) -> torch.Tensor:
    """Per-sample Jacobian by torch.func, one sample at a time."""
    return torch.func.vmap(torch.func.jacrev(lambda xi: f(xi.unsqueeze(0)).squeeze(0)))(x)


def snapshot(model: nn.Module) -> dict:
    return {
        "state": copy.deepcopy(model.state_dict()),
        "modes": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "versions": [b._version for b in model.buffers()],
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["modes"] == before["modes"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["versions"] == before["versions"]
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k
    assert all(p.grad is None for p in model.parameters())


class Tempered(nn.Module):
    """A body, a linear head, then post-processing written in place (or not)."""

    def __init__(self, post) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(6, 4), nn.Tanh())
        self.fc = nn.Linear(4, 12)  # narrow head, many classes: auto's head path
        self.post = post
        self.temperature = None

    def forward(self, x):
        o = self.post(self.fc(self.body(x)))
        if self.temperature:
            o = o / self.temperature
        return o


# -- 1. the head strategy never ignores what follows the head -----------------------------------


@pytest.mark.parametrize(
    "post",
    [
        lambda o: o.div_(2.0),  # temperature scaling written in place
        lambda o: o.relu_(),
        lambda o: o.mul(3.0),
        lambda o: o,  # the honest case: head may serve
    ],
    ids=["div_", "relu_", "mul", "none"],
)
def test_auto_is_exact_whatever_follows_the_head(post):
    model = Tempered(post).eval()
    x = torch.randn(5, 6)
    ref = oracle(model, x)
    r = evaluate(model, x)
    torch.testing.assert_close(r.values, ref)
    torch.testing.assert_close(evaluate(model, x).values, ref)  # the cached decision, too


def test_a_hook_that_rescales_the_head_output_is_seen():
    model = Tempered(lambda o: o).eval()
    model.fc.register_forward_hook(lambda m, i, o: o * 0.5)
    x = torch.randn(3, 6)
    torch.testing.assert_close(saliency.class_jacobian(model, x), oracle(model, x))
    with pytest.raises(ValueError, match="strategy='head'"):
        saliency.class_jacobian(model, x, strategy="head")


def test_an_in_place_hook_on_the_head_is_seen():
    model = Tempered(lambda o: o).eval()
    model.fc.register_forward_hook(lambda m, i, o: (o.mul_(0.5), None)[1])
    x = torch.randn(3, 6)
    torch.testing.assert_close(saliency.class_jacobian(model, x), oracle(model, x))


def test_head_serves_when_it_is_exact():
    model = Tempered(lambda o: o).eval()
    x = torch.randn(4, 6)
    r = evaluate(model, x)
    assert r.strategy == "head"  # F = 4 <= 0.8 K = 9.6
    torch.testing.assert_close(r.values, oracle(model, x))


# -- 2. nothing learnt on an earlier call goes stale ---------------------------------------------


def test_an_attribute_set_after_the_first_call_is_seen():
    model = Tempered(lambda o: o).eval()
    x = torch.randn(4, 6)
    assert evaluate(model, x).strategy == "head"
    model.temperature = 0.25  # the forward pass now divides after the head
    torch.testing.assert_close(saliency.class_jacobian(model, x), oracle(model, x))
    forget_strategy_choices(model)
    torch.testing.assert_close(saliency.class_jacobian(model, x), oracle(model, x))
    model.temperature = None
    torch.testing.assert_close(saliency.class_jacobian(model, x), oracle(model, x))


def test_a_changed_number_of_outputs_is_seen():
    model = Tempered(lambda o: o).eval()
    x = torch.randn(2, 6)
    saliency.class_jacobian(model, x)
    model.post = lambda o: o[:, :5]  # same modules, fewer outputs
    J = saliency.class_jacobian(model, x)
    assert J.shape == (2, 5, 6)
    torch.testing.assert_close(J, oracle(model, x))


# -- 3. the BatchNorm guard sees through every wrapper -------------------------------------------


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3)).train()


class Holder:
    """A user's object that holds the model as an attribute."""

    def __init__(self, net):
        self.net = net

    def __call__(self, x):
        return self.net(x)


WRAPPERS = {
    "module": lambda net: net,
    "lambda": lambda net: lambda t: net(t),
    "partial": lambda net: functools.partial(net),
    "bound": lambda net: net.forward,
    "holder": lambda net: Holder(net),
    "script": lambda net: torch.jit.script(net),
    "tuple-returning lambda": lambda net: lambda t: (net(t), None),
}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("wrap", list(WRAPPERS))
@pytest.mark.parametrize("strategy", ["auto", "loop", "replicate"])
def test_training_batchnorm_is_refused_whatever_wraps_it(wrap, strategy):
    net = bn_net()
    before = snapshot(net)
    model = WRAPPERS[wrap](net)
    with pytest.raises(GuardError, match="BatchNorm"):
        saliency.class_jacobian(model, torch.randn(6, 5), strategy=strategy)
    assert_unchanged(net, before)
    assert net[1].num_batches_tracked == 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("wrap", list(WRAPPERS))
def test_wrapped_eval_models_are_exact(wrap):
    net = bn_net()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
    net.eval()
    before = snapshot(net)
    x = torch.randn(4, 5)
    J = saliency.class_jacobian(WRAPPERS[wrap](net), x)
    torch.testing.assert_close(J, oracle(net, x))
    assert_unchanged(net, before)


def test_functional_batch_statistics_are_refused():
    lin = nn.Linear(4, 3)
    with pytest.raises(GuardError, match="other samples in its batch"):
        saliency.class_jacobian(lambda t: lin(t - t.mean(0)), torch.randn(5, 4))


def test_a_module_that_updates_its_buffers_is_put_back_and_refused():
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x):
            self.calls += 1
            return self.lin(x)

    model = Counter().train()
    with pytest.raises(GuardError, match="changes buffers"):
        saliency.class_jacobian(model, torch.randn(2, 3))
    assert model.calls == 0


# -- 4. randomness is refused, or explained one draw per forward pass when asked ------------------


def test_dropout_in_training_mode_is_refused_naming_the_modules():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 8), nn.Dropout(0.1), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3)
    )
    before = snapshot(model)
    with pytest.raises(GuardError, match=r"1 is a dropout layer.*also: 3.*model\.eval\(\)"):
        saliency.class_jacobian(model, torch.randn(4, 5))
    assert_unchanged(model, before)


def test_randomness_without_modules_is_refused():
    lin = nn.Linear(5, 3)
    with pytest.raises(GuardError, match=r"draws random numbers .*randn_like"):
        saliency.class_jacobian(lambda t: lin(t + 0.1 * torch.randn_like(t)), torch.randn(4, 5))


def test_allow_random_shares_one_draw_between_the_classes_of_a_row():
    torch.manual_seed(0)
    inner, head = nn.Linear(6, 6), nn.Linear(6, 4)
    drop = nn.Dropout(0.5)
    model = nn.Sequential(inner, drop, head).train()
    x = torch.randn(3, 6)
    for strategy in ["loop", "vmap", "auto"]:
        J = saliency.class_jacobian(model, x, strategy=strategy, allow_random=True)
        # J[b, k] = head.W[k] diag(mask_b / (1 - p)) inner.W: one mask per row for every k
        per_unit = J @ torch.linalg.pinv(inner.weight)  # [B, K, 6] = W[k] * mask_b * 2
        masks = per_unit / head.weight
        assert torch.allclose(masks, masks[:, :1].expand_as(masks), atol=1e-4)
        assert set(masks.round().unique().tolist()) <= {0.0, 2.0}
    for strategy in ["replicate", "forward"]:
        with pytest.raises(ValueError, match="once per forward pass"):
            saliency.class_jacobian(model, x, strategy=strategy, allow_random=True)


# -- 5. model outputs as users get them -----------------------------------------------------------


class Output:
    """An output object like HuggingFace's ModelOutput."""

    def __init__(self, logits, loss=None):
        self.logits, self.loss = logits, loss


class Wrapped(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Sequential(nn.Linear(5, 3), nn.Tanh())
        self.head = nn.Linear(3, 8)
        self.kind = kind

    def forward(self, x):
        o = self.head(self.body(x))
        return {
            "object": lambda: Output(o, loss=torch.zeros(())),
            "dict": lambda: {"loss": None, "logits": o},
            "tuple": lambda: (o, "extra"),
            "list": lambda: [o],
        }[self.kind]()


@pytest.mark.parametrize("kind", ["object", "dict", "tuple", "list"])
def test_output_objects_keep_every_strategy_and_head(kind):
    model = Wrapped(kind).eval()
    x = torch.randn(4, 5)
    ref = oracle(lambda t: model.head(model.body(t)), x)
    for strategy in STRATEGIES:
        torch.testing.assert_close(saliency.class_jacobian(model, x, strategy=strategy), ref)
    assert evaluate(model, x).strategy == "head"
    soft = saliency.class_jacobian(model, x, output="softmax", strategy="head")
    torch.testing.assert_close(soft, oracle(lambda t: model.head(model.body(t)).softmax(1), x))


def test_output_callable_receives_the_raw_output():
    model = Wrapped("object").eval()
    x = torch.randn(3, 5)
    ref = oracle(lambda t: model.head(model.body(t)), x)
    fresh = [lambda o: o.logits for _ in range(3)]  # a new lambda on every call
    for f in fresh:
        torch.testing.assert_close(saliency.class_jacobian(model, x, output=f), ref)
    assert evaluate(model, x, output=fresh[0]).strategy == "head"  # o.logits is the head's output


def test_decisions_survive_a_fresh_lambda_around_the_same_model(monkeypatch):
    from saliency.engine import auto

    races = []
    real = auto.Race
    monkeypatch.setattr(auto, "Race", lambda *a: races.append(1) or real(*a))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 8)).eval()
    x = torch.randn(6, 5)
    for _ in range(3):
        saliency.class_jacobian(lambda t: net(t), x)
    assert len(races) == 1
    net.train()  # a new state: measured again
    saliency.class_jacobian(lambda t: net(t), x)
    assert len(races) == 2


def test_unreadable_outputs_say_what_to_do():
    with pytest.raises(TypeError, match="output= a callable"):
        saliency.class_jacobian(lambda t: {"y": t.sum(1)}, torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"no classes .*\(2, 0\)"):
        saliency.class_jacobian(lambda t: t[:, :0], torch.randn(2, 3))
    lin = nn.Linear(3, 4)
    J = saliency.class_jacobian(lin, torch.randn(2, 3), output=lambda o: o.sum(1))  # [B]: C = 1
    torch.testing.assert_close(J[:, 0], lin.weight.sum(0).expand(2, 3))


# -- 6. forward mode under a budget ---------------------------------------------------------------


def test_forward_mode_under_a_splitting_budget_is_detached():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 40))
    x = torch.randn(8, 3)
    J = saliency.class_jacobian(model, x, strategy="forward", max_memory=20_000)
    assert not J.requires_grad and J.grad_fn is None
    torch.testing.assert_close(J, oracle(model, x))
    J.numpy()  # usable as data


# -- 7. clear errors (or results) for the remaining cases -----------------------------------------


def test_inference_mode_around_the_call_is_left_inside_it():
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    x = torch.randn(3, 4)
    ref = oracle(model, x)
    with torch.inference_mode():
        J = saliency.class_jacobian(model, x)
        a = saliency.integrated_gradients(model, x, steps=8)
        s = saliency.smoothgrad(model, x, n_samples=3, seed=0)
        xi = torch.randn(3, 4) + 0  # made in inference mode
    torch.testing.assert_close(J, ref)
    assert a.values.shape == s.values.shape == (3, 3, 4)
    assert saliency.class_jacobian(model, xi).shape == (3, 3, 4)


def test_outputs_that_do_not_depend_on_x_are_named():
    lin = nn.Linear(3, 4)
    x = torch.randn(2, 3)
    one_hot = lambda t: nn.functional.one_hot(lin(t).argmax(1), 4).float()  # noqa: E731
    for model in (one_hot, lambda t: lin(t).detach()):
        with pytest.raises(ValueError, match="does not depend on x"):
            saliency.class_jacobian(model, x)
    with pytest.raises(TypeError, match="integer output"):
        saliency.class_jacobian(lambda t: lin(t).argmax(1), x)
    meta = nn.Linear(3, 4, device="meta")
    with pytest.raises((ValueError, RuntimeError), match="meta"):
        saliency.class_jacobian(meta, x)


def test_a_wrong_feature_count_names_the_callers_batch():
    model = nn.Linear(7, 3)
    with pytest.raises(RuntimeError, match=r"5x6"):
        saliency.class_jacobian(model, torch.randn(5, 6))


def test_an_infinite_gradient_of_a_finite_output_is_refused():
    x = torch.tensor([[0.0, 1.0], [4.0, 9.0]])
    with pytest.raises(ValueError, match=r"\(0, 0\).*infinite derivative"):
        saliency.class_jacobian(lambda t: t.abs().sqrt(), x, strategy="loop")
    ok = saliency.class_jacobian(lambda t: t.abs().sqrt(), x[1:])
    torch.testing.assert_close(ok[0], torch.diag(0.5 / x[1].sqrt()))


def test_bad_flags_are_named():
    lin = nn.Linear(3, 2)
    with pytest.raises(TypeError, match="allow_random"):
        saliency.class_jacobian(lin, torch.randn(2, 3), allow_random="yes")


# -- a property: random post-processing after a final linear layer --------------------------------

POSTS = {
    "none": lambda o: o,
    "div_": lambda o: o.div_(1.7),
    "tanh": torch.tanh,
    "relu_": lambda o: o.relu_(),
    "add": lambda o: o + 1.0,
    "square": lambda o: o * o,
    "slice": lambda o: o[:, 1:],
}


@settings(max_examples=30, deadline=None)
@given(
    post=st.sampled_from(sorted(POSTS)),
    hook=st.sampled_from(["none", "scale", "scale_", "identity"]),
    width=st.integers(1, 6),
    classes=st.integers(2, 12),
    batch=st.integers(1, 4),
    output=st.sampled_from(["logits", "softmax"]),
)
def test_property_auto_matches_jacrev_after_any_post_processing(
    post, hook, width, classes, batch, output
):
    forget_strategy_choices()
    torch.manual_seed(width * 31 + classes)
    body = nn.Sequential(nn.Linear(4, width), nn.Tanh())
    head = nn.Linear(width, classes)
    if hook == "scale":
        head.register_forward_hook(lambda m, i, o: o * 0.5)
    elif hook == "scale_":
        head.register_forward_hook(lambda m, i, o: (o.mul_(0.5), None)[1])
    elif hook == "identity":
        head.register_forward_hook(lambda m, i, o: None)
    f = POSTS[post]

    def model(t):
        return f(head(body(t)))

    x = torch.randn(batch, 4, dtype=torch.float64)
    body.double(), head.double()
    transform = (lambda o: o) if output == "logits" else (lambda o: o.softmax(1))
    ref = oracle(lambda t: transform(model(t)), x)
    for _ in range(2):  # the first call decides, the second reuses the decision
        J = saliency.class_jacobian(model, x, output=output)
        torch.testing.assert_close(J, ref, atol=1e-10, rtol=1e-8)


# -- found in review: each a silent error before its fix ------------------------------------------


def test_a_callable_output_that_reads_more_than_its_argument_keeps_head_out():
    class Tempered(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.body, self.temp = nn.Sequential(nn.Linear(6, 4), nn.Tanh()), nn.Linear(6, 1)
            self.fc = nn.Linear(4, 20)

        def forward(self, x):  # an input-dependent temperature, read by the output callable
            self.last = nn.functional.softplus(self.temp(x)) + 0.5
            return self.fc(self.body(x))

    model = Tempered().eval()
    x = torch.randn(3, 6)

    def output(o):
        return o / model.last

    ref = oracle(lambda t: output(model(t)), x)
    r = evaluate(model, x, output=output)
    assert r.strategy != "head"
    torch.testing.assert_close(r.values, ref)
    with pytest.raises(ValueError, match="strategy='head'"):
        saliency.class_jacobian(model, x, output=output, strategy="head")


def test_create_graph_at_a_layer_stays_attached_for_every_strategy():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4)).double()
    x = torch.randn(6, 3, dtype=torch.float64)

    def penalty(strategy, budget=None):
        J = saliency.class_jacobian(
            m, x, layer=m[0], create_graph=True, strategy=strategy, max_memory=budget
        )
        return torch.autograd.grad(J.square().sum(), [m[0].weight, m[2].weight])

    ref = penalty("loop")
    assert ref[0].abs().sum() > 0  # the layer's Jacobian depends on the layers before it
    for strategy, budget in (("replicate", None), ("replicate", 8000), ("vmap", 8000)):
        for got, want in zip(penalty(strategy, budget), ref, strict=True):
            torch.testing.assert_close(got, want)


def test_a_flag_that_switches_on_coupling_or_noise_is_seen_after_a_clean_call():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 12)).eval()
    x = torch.randn(6, 4)

    def coupled(t, norm=False):
        h = net[0](t)
        return net[2](torch.tanh(h - h.mean(0) if norm else h))

    def noisy(t, sigma=0.0):  # draws only when switched on (a draw is refused, used or not)
        return net(t + sigma * torch.randn_like(t)) if sigma else net(t)

    for strategy in ("auto", "loop", "replicate"):
        saliency.class_jacobian(coupled, x, strategy=strategy, norm=False)
        with pytest.raises(GuardError, match="other samples"):
            saliency.class_jacobian(coupled, x, strategy=strategy, norm=True)
        saliency.class_jacobian(noisy, x, strategy=strategy, sigma=0.0)
        with pytest.raises(GuardError, match="random"):
            saliency.class_jacobian(noisy, x, strategy=strategy, sigma=0.5)
    saliency.class_jacobian(functools.partial(noisy, sigma=0.0), x)
    with pytest.raises(GuardError, match="random"):
        saliency.class_jacobian(functools.partial(noisy, sigma=0.5), x)


def test_a_model_the_engine_cannot_find_is_still_seen_switching_to_training_mode():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.RReLU(), nn.Linear(8, 3)).eval()

    class Pipeline:  # the model two containers deep: invisible to a static search
        def __init__(self, m):
            self.parts = {"stages": [m]}

        def __call__(self, t):
            return self.parts["stages"][0](t)

    x = torch.randn(5, 4)
    saliency.class_jacobian(Pipeline(net), x)
    net.train()  # RReLU draws its slopes in training mode
    with pytest.raises(GuardError, match="random"):
        saliency.class_jacobian(Pipeline(net), x)


def test_a_layer_whose_shape_depends_on_an_argument_is_measured_again():
    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lin, self.ident, self.fc = nn.Linear(4, 8), nn.Identity(), nn.Linear(8, 6)

        def forward(self, x, groups=8):
            g = self.ident(torch.tanh(self.lin(x)).view(len(x), groups, 8 // groups).mean(-1))
            return self.fc(g.repeat_interleave(8 // groups, dim=1))

    m = Grouped().eval()
    x = torch.randn(3, 4)
    assert saliency.class_jacobian(m, x, layer=m.ident, groups=8).shape == (3, 6, 8)
    assert saliency.class_jacobian(m, x, layer=m.ident, groups=1).shape == (3, 6, 1)


def test_a_buffer_replaced_in_training_mode_is_put_back():
    class RunningMean(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.zeros(6))

        def forward(self, x):
            if self.training:
                self.mean = 0.9 * self.mean + 0.1 * x.detach().mean(0)  # a new tensor
            return x - self.mean

    m = nn.Sequential(nn.Linear(4, 6), RunningMean(), nn.Linear(6, 3))
    original = m[1].mean
    with pytest.raises(GuardError, match="changes buffers"):
        saliency.class_jacobian(m, torch.randn(5, 4))
    assert m[1].mean is original and not original.any()


def test_coupled_samples_are_named_as_coupling_not_randomness():
    # One comparison pass checks both at once; a difference is then told apart.
    lin = nn.Linear(4, 3)
    with pytest.raises(GuardError, match="other samples in its batch"):
        saliency.class_jacobian(lambda t: lin(t - t.mean(0)), torch.randn(5, 4))
    noisy = lambda t: lin(t - t.mean(0) + 0.1 * torch.randn_like(t))  # noqa: E731
    with pytest.raises(GuardError, match="draws random numbers"):  # seen before any comparison
        saliency.class_jacobian(noisy, torch.randn(5, 4))
    with pytest.raises(GuardError, match="other samples in its batch"):  # randomness allowed
        saliency.class_jacobian(noisy, torch.randn(5, 4), allow_random=True)


def test_a_random_model_cut_from_x_is_told_the_real_problem_first():
    lin = nn.Linear(4, 3)
    noisy_detached = lambda t: lin(t).detach() + 0.1 * torch.randn(len(t), 3)  # noqa: E731
    with pytest.raises(ValueError, match="does not depend on x"):
        saliency.class_jacobian(noisy_detached, torch.randn(5, 4))


def test_the_probe_leaves_the_callers_random_numbers_alone():
    lin = nn.Linear(4, 3)
    model = lambda t: lin(t) + 0 * torch.rand(1)  # noqa: E731 (draws, yet is deterministic)
    x = torch.randn(2, 4)
    after = []
    for _ in range(2):  # measured by the probe, then from the cache: the same draws remain
        torch.manual_seed(3)
        saliency.class_jacobian(model, x, strategy="loop", allow_random=True)
        after.append(torch.rand(5))
    assert torch.equal(after[0], after[1])
    torch.manual_seed(3)
    untouched = torch.rand(5)
    for _ in range(2):  # refused: the caller's generator is put back as it was
        torch.manual_seed(3)
        with pytest.raises(GuardError, match="draws random numbers"):
            saliency.class_jacobian(model, x, strategy="loop")
        assert torch.equal(torch.rand(5), untouched)


def test_a_graph_that_reaches_x_without_a_gradient_is_named():
    class Blocked(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t * 2

        @staticmethod
        def backward(ctx, g):
            return None

    lin = nn.Linear(4, 3)
    for strategy in ["loop", "vmap", "auto"]:
        with pytest.raises(ValueError, match="no gradient with respect to"):
            saliency.class_jacobian(
                lambda t: lin(Blocked.apply(t)), torch.randn(5, 4), strategy=strategy
            )


def test_graph_reachability_agrees_with_autograd():
    from saliency.engine.probe import _reaches

    torch.manual_seed(0)
    w = torch.randn(3, 3, requires_grad=True)
    x = torch.randn(2, 3, requires_grad=True)
    h = x @ w
    cases = {
        "through": lambda: (h.tanh() * 2).sum(1),
        "detached": lambda: (h.detach() @ w).sum(1),
        "parameters only": lambda: w.sum(0).expand(2, 3),
        "one live branch": lambda: h.detach() + torch.sin(x),
        "index": lambda: h[:, [0, 2]],
        "no graph": lambda: x.detach() * 3,
        "x itself": lambda: x,
        "another leaf": lambda: w,
    }
    for name, make in cases.items():
        out = make()
        if out.requires_grad:
            (g,) = torch.autograd.grad(out.sum(), x, allow_unused=True, retain_graph=True)
            if name == "x itself":
                assert g is not None
        else:
            g = None
        assert _reaches(out, x) == (g is not None), name
    assert _reaches(h.exp(), h) and not _reaches(x * 2, h)
    # The scores may be the differentiated tensor itself: an identity model, or the last layer.
    eye = torch.eye(3).expand(2, 3, 3)
    assert torch.equal(saliency.class_jacobian(nn.Identity(), x.detach()), eye)
    net = nn.Sequential(nn.Linear(3, 3), nn.Tanh())
    assert torch.equal(saliency.class_jacobian(net, x.detach(), layer="1"), eye)


def test_allow_random_still_refuses_coupled_samples():
    lin = nn.Linear(4, 3)
    with pytest.raises(GuardError, match="other samples"):
        saliency.class_jacobian(lambda t: lin(t - t.mean(0)), torch.randn(5, 4), allow_random=True)


def test_the_race_never_batches_wider_than_the_budget_allows(monkeypatch):
    import dataclasses

    from saliency.engine import strategies

    widths = []
    record = strategies.STRATEGIES["vmap"]

    def spy(chunk, cols):
        widths.append((chunk.x.shape[0], cols.stop - cols.start))
        return record.run(chunk, cols)

    monkeypatch.setitem(strategies.STRATEGIES, "vmap", dataclasses.replace(record, run=spy))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 10)).eval()
    x = torch.randn(32, 64)
    from saliency.engine.jacobian import _Engine, _problem

    for budget in (2_000_000, 2_400_000, None):
        forget_strategy_choices()
        widths.clear()
        J = saliency.class_jacobian(model, x, max_memory=budget)
        torch.testing.assert_close(J, oracle(model, x))
        if budget is not None and widths:
            p = _problem(model, x, None, "logits", "vmap", budget, False, {}, None, None, False)
            allowed = _Engine(p, stream=False).plan.cols
            assert max(w for _, w in widths) <= allowed


def test_auto_falls_back_when_its_cost_model_choice_cannot_run():
    class OldStyle(torch.autograd.Function):  # no setup_context: torch.func refuses it
        @staticmethod
        def forward(ctx, t):
            ctx.save_for_backward(t)
            return t.clamp(min=0)

        @staticmethod
        def backward(ctx, g):
            (t,) = ctx.saved_tensors
            return g * (t > 0)

    torch.manual_seed(0)
    a, b = nn.Linear(4, 32), nn.Linear(32, 40)  # D = 4 of K = 40: forward mode by cost model
    x = torch.randn(8, 4)
    r = evaluate(lambda t: b(OldStyle.apply(a(t))), x)
    assert r.strategy == "loop"
    torch.testing.assert_close(r.values, saliency.class_jacobian(lambda t: b(a(t).clamp(min=0)), x))


def test_a_head_called_by_keyword_is_handled():
    class KeywordHead(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.body, self.fc = nn.Sequential(nn.Linear(5, 3), nn.Tanh()), nn.Linear(3, 12)

        def forward(self, x):
            return self.fc(input=self.body(x))

    m = KeywordHead().eval()
    x = torch.randn(4, 5)
    torch.testing.assert_close(saliency.class_jacobian(m, x), oracle(m, x))


def test_a_model_writing_into_its_input_is_told_so_and_the_input_is_left_alone():
    lin = nn.Linear(4, 3)

    def model(t):
        t.sub_(0.5)
        return lin(t)

    x = torch.ones(2, 4)
    with pytest.raises(RuntimeError, match="writes into its input in place"):
        saliency.class_jacobian(model, x)
    saliency.engine.outputs(model, x)
    assert torch.equal(x, torch.ones(2, 4))


def test_unconnected_outputs_are_named_even_with_trainable_parameters():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).eval()
    with pytest.raises(ValueError, match="does not depend on x"):
        saliency.class_jacobian(lambda t: net(t.detach()), torch.randn(4, 5))

    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.lstm = nn.Embedding(10, 4), nn.LSTM(4, 6, batch_first=True)
            self.fc = nn.Linear(6, 3)

        def forward(self, ids):
            _, (h, _) = self.lstm(self.emb(ids))  # the second element of the tuple
            return self.fc(h[-1])

    m = Recurrent().eval()
    with pytest.raises(ValueError, match="only the first element"):
        saliency.class_jacobian(m, torch.randint(0, 10, (2, 5)), layer=m.lstm)


def test_switching_to_training_mode_after_quiet_calls_is_refused_before_anything_runs():
    net = bn_net().eval()
    x = torch.randn(6, 5)
    for _ in range(3):  # cached and quiet: later calls run without the guards' hooks
        saliency.class_jacobian(net, x)
    net[1].train()
    before = snapshot(net)
    with pytest.raises(GuardError, match="BatchNorm"):
        saliency.class_jacobian(net, x)
    assert_unchanged(net, before)


def test_a_module_out_of_sight_keeps_the_guards_on():
    net, hidden = bn_net().eval(), bn_net().eval()
    registry = {"hidden": [hidden]}  # reached only through a container the engine cannot see

    def model(t):
        return net(t) + registry["hidden"][0](t)

    x = torch.randn(6, 5)
    saliency.class_jacobian(model, x)
    saliency.class_jacobian(model, x)
    hidden.train()
    before = snapshot(hidden)
    with pytest.raises(GuardError, match="BatchNorm"):
        saliency.class_jacobian(model, x)
    assert_unchanged(hidden, before)


def _rigged_race(monkeypatch, winner: str) -> None:
    """auto races even on a tiny model, and ``winner`` wins it (the timings are made up)."""
    from saliency.engine import auto

    record = auto.Race.record

    def rigged(self, name, width, seconds):
        per = 1.0 if name == winner else 3.0
        return record(self, name, width, per * (width if name != self.base else 1))

    monkeypatch.setattr(auto, "_QUICK", 0.0)
    monkeypatch.setattr(auto.Race, "record", rigged)


@pytest.mark.parametrize("winner", ["loop", "vmap"])
@pytest.mark.parametrize("rounding", [0.0, 1e-7], ids=["same", "rounding"])
def test_a_calls_bits_do_not_depend_on_whether_it_was_the_first(monkeypatch, winner, rounding):
    # The first call's race runs two strategies on the real work. They may agree only to
    # rounding (made so here by an offset on vmap), and vmap's blocks are transposed views,
    # which a reduction over the result (SmoothGrad's mean) adds in another order.
    import dataclasses

    from saliency.engine import strategies

    vmap = strategies.STRATEGIES["vmap"]
    if rounding:
        off = dataclasses.replace(vmap, run=lambda c, cols: vmap.run(c, cols) + rounding)
        monkeypatch.setitem(strategies.STRATEGIES, "vmap", off)
    _rigged_race(monkeypatch, winner)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 12)).eval()
    x = torch.randn(16, 16)  # more features than half the classes: forward mode is not taken
    for call in (
        lambda: evaluate(model, x),
        lambda: saliency.smoothgrad(model, x, n_samples=8, noise=0.1, seed=3),
    ):
        forget_strategy_choices()
        first = call()  # decided by a race on the real work
        assert torch.equal(call().values, first.values)  # the remembered choice: the same bits
    assert evaluate(model, x).strategy == winner
