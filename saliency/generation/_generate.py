"""Greedy continuations to explain: the model's plain argmax at every step, up to an end token.

Nothing else chooses a token: not the logits processors a HuggingFace model's
``generation_config`` asks for (a forced end token, repetition penalties, banned n-grams, a
minimum length, sampling, beams), which would make the explained tokens other than the ones the
model predicts. ``model.generate`` (with its cache) runs when the model's settings hold none of
them; otherwise, and for models without ``generate``, a loop takes the argmax of each step's
logits, on the whole prefix.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..engine import scores_of
from ._context import after_end

__all__ = ["decoder_start", "greedy"]

# Settings of a generation config that leave greedy search's choice of tokens alone, whatever
# their value: token ids the call sets or that only start a sequence, what is returned, the cache,
# and what only beams (length_penalty, early_stopping) or sampling (with do_sample off) read.
_HARMLESS = frozenset({
    "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "max_length",
    "max_new_tokens", "use_cache", "cache_implementation", "cache_config", "max_cache_len",
    "return_legacy_cache", "compile_config", "disable_compile", "prefill_chunk_size",
    "output_attentions", "output_hidden_states", "output_scores", "output_logits",
    "return_dict_in_generate", "transformers_version", "length_penalty", "early_stopping",
    "low_memory", "temperature", "top_k", "top_p", "min_p", "typical_p", "top_h",
    "epsilon_cutoff", "eta_cutoff", "num_assistant_tokens", "num_assistant_tokens_schedule",
    "assistant_confidence_threshold", "assistant_lookbehind", "target_lookbehind",
})  # fmt: skip
# The values that mean "off" for the settings that would otherwise change the tokens.
_OFF = {
    "do_sample": False, "num_beams": 1, "num_beam_groups": 1, "num_return_sequences": 1,
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "min_length": 0, "min_new_tokens": 0,
    "diversity_penalty": 0.0, "guidance_scale": 1.0, "renormalize_logits": False,
    "remove_invalid_values": False, "token_healing": False, "is_assistant": False,
    "penalty_alpha": 0.0,
}  # fmt: skip


def greedy(
    model: Callable,
    kind: str,
    ids: torch.Tensor,
    mask: torch.Tensor,
    max_new_tokens: object,
    eos: set[int],
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``max_new_tokens`` greedy tokens per prompt ``[B, T_out]`` and which are real (steps after
    a prompt's end-of-sequence token are padding). ``forward(ids, mask)``: a decoder's logits,
    of which the last column's are the next token's."""
    n = max_new_tokens
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(
            f"max_new_tokens: expected a positive int (how many tokens to generate when "
            f"generated= is not given), got {max_new_tokens!r}"
        )
    config = getattr(model, "generation_config", None)
    huggingface = callable(getattr(model, "generate", None)) and config is not None
    pad = getattr(config, "pad_token_id", None) if huggingface else None
    if not huggingface:
        pad = getattr(model, "pad_token_id", None)
    fill = pad if isinstance(pad, int) else (min(eos) if eos else 0)  # after the end: padding
    if huggingface and plain(config):
        out = _huggingface(model, kind, ids, mask, n, eos, fill)
    elif kind == "decoder":
        ids, mask = left_aligned(ids, mask)  # the last column is each row's next position

        def step(new: torch.Tensor) -> torch.Tensor:
            real = torch.ones_like(new)
            return forward(torch.cat([ids, new], 1), torch.cat([mask, real], 1))[:, -1]

        out = _argmax(step, ids.shape[0], n, eos, fill, ids.device)
    else:
        out = _argmax(_seq2seq_step(model, ids, mask), ids.shape[0], n, eos, fill, ids.device)
    return out, after_end(out, eos)


def plain(config: object) -> bool:
    """Whether a generation config asks for nothing but greedy search: every setting that could
    change a token is unset, off, or at the default of a new config (``None`` in transformers 5;
    greedy search's values in transformers 4, where ``generate`` takes the model's value of a
    setting left at its default)."""
    try:
        given, default = config.to_dict(), type(config)().to_dict()
    except Exception:  # not a HuggingFace GenerationConfig
        return False
    for key, value in given.items():
        if key.startswith("_") or key in _HARMLESS or value is None:
            continue
        if value != _OFF.get(key, default.get(key)):
            return False
    return True


def decoder_start(model: Callable) -> int:
    """An encoder-decoder's first decoder input, from its generation config or its config."""
    start = getattr(getattr(model, "generation_config", None), "decoder_start_token_id", None)
    if start is None:
        start = getattr(getattr(model, "config", None), "decoder_start_token_id", None)
    if start is None:
        raise ValueError(
            "model: its config has no decoder_start_token_id, so the decoder's first input "
            "is unknown"
        )
    return int(start)


def left_aligned(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's real tokens moved to the right end (left padding), as generation expects."""
    order = torch.argsort(mask, dim=1, stable=True)  # padding first, real tokens in their order
    return ids.gather(1, order), mask.gather(1, order)


def _huggingface(model, kind, ids, mask, max_new_tokens, eos, fill) -> torch.Tensor:
    """``model.generate`` with settings of its own (the model's hold nothing that changes a
    token: :func:`plain`), greedy, stopping exactly at ``eos``."""
    if kind == "decoder":
        ids, mask = left_aligned(ids, mask)
    # None would fall back to the model's own end token, so "never stop" is an id no logit can
    # produce.
    never = [int(getattr(getattr(model, "config", None), "vocab_size", 0) or 0) + 1]
    settings = dict(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=fill,
        eos_token_id=sorted(eos) if eos else never,
    )  # fmt: skip
    if kind != "decoder":
        settings["decoder_start_token_id"] = decoder_start(model)
    config = type(model.generation_config)(**settings)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    if not isinstance(out, torch.Tensor):
        out = out.sequences
    return out[:, ids.shape[1] :] if kind == "decoder" else out[:, 1:]


def _seq2seq_step(model, ids: torch.Tensor, mask: torch.Tensor) -> Callable:
    """An encoder-decoder's next-token logits ``[B, V]`` after the tokens so far: the source is
    encoded once, the decoder runs on its whole context at every step."""
    with torch.no_grad():
        encoded = model.get_encoder()(input_ids=ids, attention_mask=mask)
    first = torch.full((ids.shape[0], 1), decoder_start(model), device=ids.device)

    def step(new: torch.Tensor) -> torch.Tensor:
        raw = model(
            encoder_outputs=encoded,
            attention_mask=mask,
            decoder_input_ids=torch.cat([first, new], 1),
            use_cache=False,
        )
        return scores_of(raw)[:, -1]

    return step


def _argmax(step: Callable, b: int, n: int, eos: set[int], fill: int, device) -> torch.Tensor:
    """Up to ``n`` tokens ``[B, <= n]``, each the argmax of ``step(tokens so far [B, t])``;
    a row that produced an end token is filled with ``fill``, and all stop when all have."""
    done = torch.zeros(b, dtype=torch.bool, device=device)
    ends = torch.tensor(sorted(eos), dtype=torch.long, device=device)
    new = torch.zeros(b, 0, dtype=torch.long, device=device)
    with torch.no_grad():
        for _ in range(n):
            token = step(new).argmax(-1)
            token = torch.where(done, torch.full_like(token, fill), token)
            new = torch.cat([new, token[:, None]], 1)
            done |= torch.isin(token, ends)
            if bool(done.all()):
                break
    return new
