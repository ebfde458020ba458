"""Greedy generation as the model's plain argmax whatever its generation config asks for.
Oracle: the model's own argmax, step by step."""

from __future__ import annotations

import pytest
import torch

import saliency
from saliency.generation import _generate

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
