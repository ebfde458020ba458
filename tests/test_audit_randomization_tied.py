"""Tied parameters in the randomisation test (issue 15, item 9): a step names every module whose
parameters it changes, and a parameter shared by several modules is re-initialised once."""

from __future__ import annotations

import copy

import pytest
import torch

import saliency
from saliency.audit import randomization_test

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.filterwarnings(
    "ignore:Input Tensor 0 did not already require gradients", "ignore::DeprecationWarning"
)

RESETS: list[str] = []  # which module kinds were re-initialised, in order


class _Embedding(torch.nn.Embedding):
    def reset_parameters(self):
        RESETS.append("embedding")
        super().reset_parameters()


class _Linear(torch.nn.Linear):
    def reset_parameters(self):
        RESETS.append("linear")
        super().reset_parameters()


class Tied(torch.nn.Module):
    """Token ids -> mean embedding -> tanh layer -> logits over the vocabulary through the
    embedding matrix itself (a language model's tied output layer)."""

    def __init__(self, vocab=12, width=6):
        super().__init__()
        self.emb = _Embedding(vocab, width)
        self.mid = _Linear(width, width)
        self.head = _Linear(width, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.mid(self.emb(ids).mean(1))))


def tied():
    torch.manual_seed(0)
    return Tied().eval(), torch.randint(0, 12, (3, 5))


def test_a_tied_pair_is_one_step_named_together_and_reset_once():
    model, ids = tied()
    RESETS.clear()
    r = randomization_test(
        model, ids, saliency.gradients, layer="emb", seed=0, similarity="spearman", keep_maps=True
    )
    assert r.steps == ("original", "head + emb", "mid")
    # head's reset re-initialises the shared matrix; emb's own reset is not run on top of it.
    assert RESETS == ["linear", "linear"]


def test_a_custom_reinit_runs_once_per_step_and_independent_order_restores_the_pair():
    model, ids = tied()
    seen = []

    def record(module):
        seen.append(type(module).__name__)
        torch.nn.init.normal_(module.weight)

    r = randomization_test(
        model, ids, saliency.gradients, layer="emb", seed=0, similarity="spearman", reinit=record
    )
    assert r.steps == ("original", "head + emb", "mid") and seen == ["_Linear", "_Linear"]
    # Independent order restores both members of the pair before the next step.
    twin = copy.deepcopy(model)
    ri = randomization_test(
        twin, ids, saliency.gradients, layer="emb", seed=0, order="independent",
        similarity="spearman",
    )  # fmt: skip
    assert ri.steps == r.steps
    for name, p in twin.named_parameters():
        torch.testing.assert_close(p, dict(model.named_parameters())[name])


def test_named_layers_name_what_their_ties_change_and_tied_pairs_are_refused():
    model, ids = tied()
    r = randomization_test(model, ids, saliency.gradients, layer="emb", seed=0, layers=["head"])
    assert r.steps == ("original", "head + emb")
    nested = randomization_test(  # nesting shares parameters without a tie: allowed
        model, ids, saliency.gradients, layer="emb", seed=0, layers=["", "mid"]
    )
    assert nested.steps == ("original", "", "mid")
    with pytest.raises(ValueError, match="'head' and 'emb' share a parameter"):
        randomization_test(model, ids, saliency.gradients, layer="emb", layers=["head", "emb"])


def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=30, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg).eval(), torch.randint(0, 30, (2, 6))


@pytest.mark.filterwarnings("ignore:randomization_test. re-initialising layer .*ln_")  # fresh LNs
def test_gpt2_lm_head_and_input_embeddings_are_one_step():
    model, ids = gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight

    def pick(out):  # the language model as a classifier over 5 tokens
        return out.logits[:, -1, :5]

    before = copy.deepcopy(model.state_dict())
    r = randomization_test(
        model, ids, saliency.gradients, layer="transformer.h.0", output=pick, seed=0,
        similarity="spearman",
    )  # fmt: skip
    assert r.steps[1] == "lm_head + transformer.wte"
    assert "transformer.wte" not in r.steps and "lm_head" not in r.steps
    assert len(r.steps) == len(set(r.steps))
    for k, v in model.state_dict().items():  # the caller's model untouched
        assert torch.equal(v, before[k]), k
    named = randomization_test(
        model, ids, saliency.gradients, layer="transformer.h.0", output=pick, seed=0,
        similarity="spearman", layers=["transformer.wte", "transformer.h.0"],
    )  # fmt: skip
    assert named.steps == ("original", "transformer.wte + lm_head", "transformer.h.0")
