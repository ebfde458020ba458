"""explain_generation's runners and greedy generation: the logits a context needs (only the rows
that predict its steps, under max_memory), the causality check (on a real column), greedy
generation as the model's plain argmax whatever its generation config asks for, and models
without an attention mask. Oracles: a plain autograd loop per step, the model's own argmax."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import saliency
from saliency.generation import _context, _generate, _models

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning"
)

EOS = 2


def gpt2(vocab: int = 50, positions: int = 64, **generation: object):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=vocab, n_embd=16, n_layer=1, n_head=2, n_positions=positions,
        bos_token_id=EOS, eos_token_id=EOS, pad_token_id=0,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(cfg).eval()
    for key, value in generation.items():
        setattr(model.generation_config, key, value)
    return model


def bart(**generation: object):
    """A tiny BART; its generation config forces the end token last (forced_eos_token_id=2), as
    every BART's does, unless ``generation`` says otherwise."""
    torch.manual_seed(0)
    cfg = transformers.BartConfig(
        vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_position_embeddings=64, pad_token_id=1, eos_token_id=EOS, decoder_start_token_id=EOS,
        bos_token_id=0, forced_eos_token_id=EOS,
    )  # fmt: skip
    model = transformers.BartForConditionalGeneration(cfg).eval()
    for key, value in generation.items():
        setattr(model.generation_config, key, value)
    return model


class Cumulative(torch.nn.Module):
    """A causal language model without attention_mask (nor logits_to_keep): token ``j`` sees the
    running sum of the embeddings up to ``j``."""

    def __init__(self, vocab: int = 40, width: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(vocab, width)
        self.head = torch.nn.Linear(width, vocab)

    def from_embeddings(self, e: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(e.cumsum(1)))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.from_embeddings(self.emb(input_ids))


def gradient_loop(embed, logits_of, prompt, generated, width):
    """The oracle: for each step alone, the gradient of its token's probability at the
    embeddings of its prefix, as L2 norms per token ``[T_out, width]`` (zeros beyond)."""
    ids = torch.cat([prompt, generated])[None]
    rows = []
    for t in range(len(generated)):
        e = embed(ids[:, : len(prompt) + t]).detach().requires_grad_()
        y = logits_of(e)[0, -1].softmax(-1)[generated[t]]
        (g,) = torch.autograd.grad(y, e)
        row = torch.zeros(width)
        row[: e.shape[1]] = g[0].norm(dim=-1)
        rows.append(row)
    return torch.stack(rows)


class Largest(TorchDispatchMode):
    """The largest tensor any operator makes inside the block, in bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.bytes = max(self.bytes, t.numel() * t.element_size())
        return out


# -- the logits a context needs -----------------------------------------------------------------


def test_a_long_prompt_never_holds_the_whole_contexts_logits():
    v, p, t = 20000, 300, 6
    lm = gpt2(vocab=v, positions=p + t)
    g = torch.Generator().manual_seed(0)
    prompt, generated = (
        torch.randint(3, v, (p,), generator=g),
        torch.randint(3, v, (t,), generator=g),
    )
    with Largest() as seen:
        a = saliency.explain_generation(
            lm, prompt[None], generated=generated[None], max_memory="50MB"
        )
    # Logits are V floats per column kept: a chunk of t steps keeps t + 1 columns for at most t
    # copies of the context (one per step), far from the p + t columns of the whole context.
    row = v * 4
    assert seen.bytes <= (t + 1) ** 2 * row < (p + t) * row / 6
    emb = lm.get_input_embeddings()
    want = gradient_loop(emb, lambda e: lm(inputs_embeds=e).logits, prompt, generated, p + t)
    torch.testing.assert_close(a.scores[0], want, atol=1e-7, rtol=1e-4)
    with torch.no_grad():
        probs = lm(torch.cat([prompt, generated])[None]).logits[0, p - 1 : -1].softmax(-1)
    torch.testing.assert_close(a.step_scores["probability"][0], probs[range(t), generated])


def test_a_model_without_logits_to_keep_runs_rows_in_groups_that_fit():
    lm = Cumulative(vocab=3000, width=4).eval()
    runner = _models.Decoder(lm, lm.emb)
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, 3000, (4, 40), generator=g)
    generated = torch.randint(0, 3000, (4, 5), generator=g)
    real = torch.ones_like(generated, dtype=torch.bool)
    real[1, 3:] = False  # a continuation that ended early
    ctx = _context.build("decoder", prompts, torch.ones_like(prompts), generated, real, None)
    with torch.no_grad():
        full = lm(ctx.ids)
    want = full.gather(1, ctx.steps[..., None].expand(-1, -1, full.shape[-1]))
    one = full[0].numel() * 4  # one sample's logits: the model computes them all
    # The first row alone (it tells the vocabulary's size), then groups of rows whose logits
    # take at most a quarter of the budget; without one, up to 256 MB.
    for budget, largest in ((4 * one, one), (8 * one, 2 * one), (None, 3 * one)):
        with Largest() as seen:
            picked = runner.logits_of(ctx, budget)
        assert seen.bytes == largest
        torch.testing.assert_close(picked, want, rtol=0, atol=0)


def test_an_encoder_decoder_gives_the_logits_of_its_steps():
    lm = bart()
    source, generated = torch.tensor([[5, 6, 7, 8, EOS]]), torch.tensor([[11, 12, 13]])
    a = saliency.explain_generation(lm, source, generated=generated, target="log_probability")
    with torch.no_grad():
        dec = torch.cat([torch.tensor([[EOS]]), generated], 1)
        log_p = lm(input_ids=source, decoder_input_ids=dec).logits[0, :-1].log_softmax(-1)
    torch.testing.assert_close(a.step_scores["target"][0], log_p[range(3), generated[0]])


# -- the causality check ------------------------------------------------------------------------


def bidirectional():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, is_decoder=False, initializer_range=0.5,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.BertLMHeadModel(cfg).eval()


@pytest.mark.parametrize(
    "generated",
    [[[11, 12, 13], [14, 15, 16]], [[11, 49, 13], [14, 15, 16]], [[11, 49, 13], [14, 49, 16]]],
    ids=["full", "first-ended", "both-ended"],
)
def test_a_bidirectional_model_is_refused_when_rows_end_early(generated):
    # A row that ended at eos has padding last, which the attention mask hides: changing it
    # cannot show that the model looks ahead, so a real column must be changed.
    prompts = torch.tensor([[5, 6, 7], [8, 9, 10]])
    with pytest.raises(ValueError, match="model: BertLMHeadModel is not causal"):
        saliency.explain_generation(
            bidirectional(), prompts, generated=torch.tensor(generated), eos_token_id=49
        )


def test_a_causal_model_with_rows_that_end_early_is_explained_as_each_alone():
    lm = gpt2()
    prompts, generated = (
        torch.tensor([[5, 6, 7], [8, 9, 10]]),
        torch.tensor([[11, 49, 13], [14, 15, 16]]),
    )
    a = saliency.explain_generation(lm, prompts, generated=generated, eos_token_id=49)
    emb = lm.get_input_embeddings()
    for b, n in ((0, 2), (1, 3)):
        want = gradient_loop(
            emb, lambda e: lm(inputs_embeds=e).logits, prompts[b], generated[b, :n], 6
        )
        torch.testing.assert_close(a.scores[b, :n], want, atol=1e-7, rtol=1e-4)
        assert bool((a.scores[b, n:] == 0).all())


# -- greedy generation is the plain argmax ------------------------------------------------------


def argmax_loop(next_logits, n: int, eos: int | None) -> list[int]:
    """The oracle: the argmax of the model's logits after the tokens so far, up to an end."""
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            out.append(int(next_logits(out).argmax()))
            if out[-1] == eos:
                break
    return out


def decoder_loop(lm, prompt: list[int], n: int, eos: int | None = EOS) -> list[int]:
    def step(new: list[int]) -> torch.Tensor:
        out = lm(torch.tensor([prompt + new]))
        return getattr(out, "logits", out)[0, -1]

    return argmax_loop(step, n, eos)


@pytest.mark.parametrize(
    "setting",
    [
        {"repetition_penalty": 3.0},
        {"no_repeat_ngram_size": 1},
        {"do_sample": True, "top_k": 5},
        {"num_beams": 3},
        {"bad_words_ids": [[9]]},
        {"suppress_tokens": [9, 23]},
        {"sequence_bias": {(9,): -10.0}},
    ],
    ids=lambda s: next(iter(s)),
)
def test_greedy_is_the_plain_argmax_whatever_the_generation_config_asks(setting):
    lm = gpt2(**setting)
    before = lm.generation_config.to_dict()
    prompts = torch.tensor([[5, 6, 7, 8, 9], [20, 21, 22, 23, 24]])
    want = [decoder_loop(lm, p, 6) for p in prompts.tolist()]
    torch.manual_seed(0)
    with torch.no_grad():
        theirs = lm.generate(prompts, max_new_tokens=6)[:, 5:].tolist()
    assert theirs != want  # the setting changes what generate chooses
    a = saliency.explain_generation(lm, prompts, max_new_tokens=6)
    assert a.generated.tolist() == want
    assert lm.generation_config.to_dict() == before


def test_greedy_on_padded_prompts_is_each_prompts_argmax_alone():
    lm = gpt2(repetition_penalty=3.0)  # not plain: the loop generates
    prompts = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 20, 21, 22], [30, 31, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 0, 0, 0]])
    a = saliency.explain_generation(lm, prompts, attention_mask=mask, max_new_tokens=5)
    for b, alone in enumerate(([5, 6, 7, 8, 9], [20, 21, 22], [30, 31])):
        want = decoder_loop(lm, alone, 5)
        assert a.generated[b, : len(want)].tolist() == want
        assert a.real_steps[b].tolist() == [i < len(want) for i in range(a.generated.shape[1])]


@pytest.mark.parametrize("setting", [{"min_new_tokens": 8}, {"min_length": 13}])
def test_greedy_stops_at_the_end_token_despite_a_minimum_length(setting):
    prompt = [5, 6, 7, 8, 9]
    first = decoder_loop(gpt2(), prompt, 8, eos=None)
    k = next(i for i in range(1, 8) if first[i] not in first[:i])
    lm = gpt2(eos_token_id=first[k], **setting)  # the first new token after the start ends it
    with torch.no_grad():
        theirs = lm.generate(torch.tensor([prompt]), max_new_tokens=8)[0, 5:].tolist()
    assert theirs != first[: k + 1]  # the minimum length keeps generate going
    a = saliency.explain_generation(lm, torch.tensor([prompt]), max_new_tokens=8)
    assert a.generated.tolist() == [first[: k + 1]]


@pytest.mark.parametrize(
    "setting",
    [{}, {"forced_eos_token_id": None, "forced_bos_token_id": 11}],
    ids=["forced-eos", "forced-bos"],
)
def test_greedy_on_an_encoder_decoder_is_the_plain_argmax(setting):
    lm = bart(**setting)
    source = torch.tensor([[5, 6, 7, 8, EOS], [9, 10, 11, EOS, 1]])
    mask = (source != 1).long()
    a = saliency.explain_generation(lm, source, attention_mask=mask, max_new_tokens=4)
    with torch.no_grad():
        theirs = lm.generate(source, attention_mask=mask, max_new_tokens=4)[:, 1:].tolist()
    for b in range(2):
        src = source[b : b + 1, : int(mask[b].sum())]

        def step(new, src=src):
            dec = torch.tensor([[EOS, *new]])
            return lm(input_ids=src, decoder_input_ids=dec).logits[0, -1]

        want = argmax_loop(step, 4, EOS)
        assert theirs[b] != want  # forcing a token changes what generate chooses
        assert a.generated[b].tolist() == want


def test_a_plain_generation_config_keeps_generate():
    assert _generate.plain(gpt2().generation_config)
    assert _generate.plain(bart(forced_eos_token_id=None).generation_config)
    assert not _generate.plain(bart().generation_config)
    assert _generate.plain(gpt2(do_sample=False, num_beams=1, temperature=0.7).generation_config)
    assert not _generate.plain(gpt2(do_sample=True).generation_config)
    assert not _generate.plain(object())


# -- a model without attention_mask -------------------------------------------------------------


def test_a_model_without_a_mask_explains_continuations_of_different_lengths():
    lm = Cumulative().eval()
    prompts = torch.tensor([[1, 2, 3], [4, 5, 6]])
    a = saliency.explain_generation(lm, prompts, generated=[[1, 2], [3]], layer=lm.emb)
    for b, gen in ((0, [1, 2]), (1, [3])):
        want = gradient_loop(lm.emb, lm.from_embeddings, prompts[b], torch.tensor(gen), 5)
        torch.testing.assert_close(a.scores[b, : len(gen)], want, atol=1e-7, rtol=1e-4)
    assert a.real_steps.tolist() == [[True, True], [True, False]]
    # Greedy rows that end early are padded after their end: explained the same way.
    prompts = torch.tensor([[7, 8, 9], [4, 5, 6]])
    rows = [decoder_loop(lm, p, 3, eos=None) for p in prompts.tolist()]
    end = rows[1][0]  # the second row ends at once, the first goes on
    assert end not in rows[0]
    g = saliency.explain_generation(lm, prompts, max_new_tokens=3, layer=lm.emb, eos_token_id=end)
    assert g.generated[0].tolist() == rows[0] and g.generated[1, 0] == end
    assert g.real_steps.tolist() == [[True, True, True], [True, False, False]]
    for b, n in ((0, 3), (1, 1)):
        want = gradient_loop(lm.emb, lm.from_embeddings, prompts[b], g.generated[b, :n], 6)
        torch.testing.assert_close(g.scores[b, :n], want, atol=1e-7, rtol=1e-4)


def test_a_model_without_a_mask_refuses_padding_before_a_real_token():
    lm = Cumulative().eval()
    prompts, mask = torch.tensor([[1, 2, 3], [0, 5, 6]]), torch.tensor([[1, 1, 1], [0, 1, 1]])
    for generated in (torch.tensor([[7, 8], [9, 10]]), None):
        with pytest.raises(ValueError, match="attention_mask: Cumulative's forward takes no"):
            saliency.explain_generation(
                lm, prompts, attention_mask=mask, generated=generated, layer=lm.emb,
                max_new_tokens=None if generated is not None else 2,
            )  # fmt: skip
