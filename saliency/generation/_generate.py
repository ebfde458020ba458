"""Greedy continuations to explain: ``model.generate`` for HuggingFace models, else a plain loop."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from ._context import after_end

__all__ = ["greedy"]


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
    a prompt's end-of-sequence token are padding)."""
    n = max_new_tokens
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(
            f"max_new_tokens: expected a positive int (how many tokens to generate when "
            f"generated= is not given), got {max_new_tokens!r}"
        )
    if callable(getattr(model, "generate", None)) and hasattr(model, "generation_config"):
        out = _huggingface(model, kind, ids, mask, max_new_tokens, eos)
    else:
        pad = getattr(model, "pad_token_id", None)
        out = _loop(ids, mask, max_new_tokens, eos, forward, pad)
    return out, after_end(out, eos)


def left_aligned(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's real tokens moved to the right end (left padding), as generation expects."""
    order = torch.argsort(mask, dim=1, stable=True)  # padding first, real tokens in their order
    return ids.gather(1, order), mask.gather(1, order)


def _huggingface(model, kind, ids, mask, max_new_tokens, eos) -> torch.Tensor:
    if kind == "decoder":
        ids, mask = left_aligned(ids, mask)
    # A copy of the model's settings, greedy, stopping exactly at ``eos``. None would fall back
    # to the model's own end token, so "never stop" is an id no logit can produce, and no end
    # token is forced either.
    config = copy.deepcopy(model.generation_config)
    pad = config.pad_token_id
    if pad is None:
        pad = min(eos) if eos else 0
    never = [int(getattr(model.config, "vocab_size", 0) or 0) + 1]
    config.update(
        max_new_tokens=max_new_tokens, min_new_tokens=0, max_length=None, do_sample=False,
        num_beams=1, pad_token_id=pad, eos_token_id=sorted(eos) if eos else never,
        temperature=None, top_p=None, top_k=None,
    )  # fmt: skip
    if not eos:
        config.forced_eos_token_id = None
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    if not isinstance(out, torch.Tensor):
        out = out.sequences
    return out[:, ids.shape[1] :] if kind == "decoder" else out[:, 1:]


def _loop(ids, mask, max_new_tokens, eos, forward, pad) -> torch.Tensor:
    ids, mask = left_aligned(ids, mask)
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    fill = pad if isinstance(pad, int) else (min(eos) if eos else 0)  # after the end: padding
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = forward(ids, mask)[:, -1].argmax(-1)
            token = torch.where(done, torch.full_like(token, fill), token)
            new.append(token)
            if eos:
                done |= torch.isin(token, torch.tensor(sorted(eos), device=token.device))
            ids = torch.cat([ids, token[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(token)[:, None]], 1)
            if bool(done.all()):
                break
    return torch.stack(new, 1)
