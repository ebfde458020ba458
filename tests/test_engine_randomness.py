"""Randomness seen, not sampled: a forward pass that draws random numbers is refused by what it
draws (every time, naming the module), whatever wraps the model; another thread's draws are not
mistaken for the model's; the caller's model and random state are left as they were."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
from torch import nn

import saliency
from saliency.engine import GuardError, forget_strategy_choices

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _fresh_choices():
    forget_strategy_choices()
    yield


class DropPath(nn.Module):
    """Stochastic depth as timm and HuggingFace write it: one Bernoulli draw per sample."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = x.new_empty(x.shape[0], 1).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Residual(nn.Module):
    def __init__(self, width: int, p: float) -> None:
        super().__init__()
        self.body, self.drop = nn.Linear(width, width), DropPath(p)

    def forward(self, x):
        return x + self.drop(torch.tanh(self.body(x)))


def state_of(model):
    return (
        copy.deepcopy(model.state_dict()),
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )


def test_drop_path_in_training_mode_is_refused_every_time_and_state_is_untouched():
    x = torch.randn(4, 6)
    for seed in range(100):
        torch.manual_seed(seed)
        # A tiny drop rate: a sampled check would see the same output almost every time.
        model = nn.Sequential(Residual(6, 0.01), nn.Linear(6, 3)).train()
        before, rng = state_of(model), torch.get_rng_state()
        with pytest.raises(GuardError, match=r"0\.drop \(DropPath\): bernoulli_"):
            saliency.gradients(model, x)
        after = state_of(model)
        assert after[1:] == before[1:] and torch.equal(torch.get_rng_state(), rng)
        assert all(torch.equal(after[0][k], v) for k, v in before[0].items())
    model.eval()
    torch.testing.assert_close(  # in eval mode it is deterministic, and explained
        saliency.class_jacobian(model, x),
        torch.func.vmap(torch.func.jacrev(model))(x),
    )


def test_hf_beit_stochastic_depth_is_refused_and_names_the_module():
    cfg = transformers.BeitConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=32, num_labels=5, drop_path_rate=0.1,
    )  # fmt: skip
    x = torch.randn(2, 3, 16, 16)
    for seed in range(5):
        torch.manual_seed(seed)
        model = transformers.BeitForImageClassification(cfg).train()
        with pytest.raises(GuardError, match=r"drop_path \(BeitDropPath\)"):
            saliency.gradients(lambda t, m=model: m(t).logits, x)  # wrapped in a lambda


def test_attention_dropout_is_called_randomness_not_coupling():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.3,
        attn_implementation="eager",
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(cfg).train()
    for m in model.modules():  # only the attention's own dropout remains random
        if isinstance(m, nn.Dropout) and m.p != 0.3:
            m.p = 0.0
    ids = torch.randint(0, 40, (2, 5))
    with pytest.raises(GuardError, match=r"draws random numbers") as error:
        saliency.gradients(model, ids, layer=model.bert.embeddings.word_embeddings)
    assert "couples" not in str(error.value) and "batch" not in str(error.value)


def test_a_private_generator_and_noise_switched_on_later_are_refused():
    lin = nn.Linear(5, 3)
    g = torch.Generator().manual_seed(0)
    private = lambda t: lin(t + 0.01 * torch.rand(t.shape, generator=g))  # noqa: E731
    with pytest.raises(GuardError, match="rand"):
        saliency.gradients(private, torch.randn(3, 5))

    class Sometimes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.noise = nn.Linear(5, 3), 0.0

        def forward(self, x):
            return self.lin(x + self.noise * torch.randn_like(x) if self.noise else x)

    model = Sometimes().eval()
    x = torch.randn(3, 5)
    saliency.gradients(model, x)  # deterministic: measured and cached
    model.noise = 0.1  # a plain attribute, invisible to the caches
    with pytest.raises(GuardError, match=r"Sometimes: randn_like"):
        saliency.gradients(model, x)


def test_randomness_outside_torch_is_still_caught_by_comparison():
    lin = nn.Linear(5, 3)
    rng = np.random.default_rng(0)
    noisy = lambda t: lin(t + torch.as_tensor(rng.normal(size=t.shape), dtype=t.dtype))  # noqa: E731
    with pytest.raises(GuardError, match="two forward passes on the same sample"):
        saliency.gradients(noisy, torch.randn(3, 5))


def test_allow_random_keeps_its_opt_in():
    torch.manual_seed(0)
    model = nn.Sequential(Residual(6, 0.5), nn.Linear(6, 3)).train()
    a = saliency.gradients(model, torch.randn(4, 6), allow_random=True)
    assert a.values.shape == (4, 3, 6)


def test_another_threads_draws_are_not_the_models():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    x = torch.randn(5, 6)
    ref = torch.func.vmap(torch.func.jacrev(model))(x)
    stop = threading.Event()

    def draw():
        while not stop.is_set():
            torch.rand(64)

    other = threading.Thread(target=draw)
    other.start()
    try:
        for strategy in ("loop", "vmap", "auto"):
            for _ in range(30):
                J = saliency.class_jacobian(model, x, strategy=strategy)
                torch.testing.assert_close(J, ref)
    finally:
        stop.set()
        other.join(timeout=10)
