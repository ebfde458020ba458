"""The teacher-forced context of a generation: who predicts which token, and what is padding.

Decoder-only models: the context is the prompt (as given, padding included) followed by the
generated tokens, ``ids = [prompt | generated]``; generated token ``t`` sits at column
``P + t`` and is predicted at the last real column before it (``P + t - 1``, or the prompt's last
real token for step 0 of a right-padded prompt). Encoder-decoder models: the source is the
encoder's input, and the decoder's context is ``[start | generated]``, token ``t`` at column
``t + 1``, predicted at column ``t``. In both, generated token ``t`` is at column
``T_ctx - T_out + t``. Positions come from the attention mask (``cumsum - 1``), so padding
anywhere, left, right or between prompt and continuation, changes nothing a real token sees.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Context", "build", "causal_check", "kind_of"]


@dataclass(frozen=True)
class Context:
    """Everything the explanation needs about one batch of generations, as plain tensors."""

    ids: torch.Tensor  # [B, T_ctx] long: decoder-only prompt + generated; enc-dec start + generated
    mask: torch.Tensor  # [B, T_ctx] long, 1 for real tokens
    generated: torch.Tensor  # [B, T_out] long
    steps: torch.Tensor  # [B, T_out] long: the column that predicts each generated token
    real: torch.Tensor  # [B, T_out] bool: steps that are not padding (after an end-of-sequence)
    source_ids: torch.Tensor | None = None  # [B, T_src] (encoder-decoder)
    source_mask: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return self.ids.shape[0]

    @property
    def length(self) -> int:
        return self.ids.shape[1]

    @property
    def out(self) -> int:
        return self.generated.shape[1]

    def positions(self, length: int | None = None) -> torch.Tensor:
        """Position ids ``[B, L]`` from the mask: real tokens count 0, 1, 2, ... in order."""
        mask = self.mask if length is None else self.mask[:, :length]
        return (mask.cumsum(1) - 1).clamp_min(0)


def kind_of(model: Callable) -> str:
    """``"decoder"`` or ``"encoder-decoder"``; a clear error for a model that cannot generate."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(model, "can_generate"):  # a HuggingFace model
        name = type(model).__name__
        if getattr(config, "is_encoder_decoder", False):
            if not model.can_generate():
                raise ValueError(
                    f"model: {name} is an encoder-decoder without a language-model head; use "
                    "its ...ForConditionalGeneration class"
                )
            return "encoder-decoder"
        if not model.can_generate():
            raise ValueError(
                f"model: {name} cannot generate text: it has no language-model head, or it is "
                "an encoder-only model (BERT-like models see the whole sequence, so a token "
                "has no prefix to come from). Use a causal language model "
                "(...ForCausalLM, ...LMHeadModel) or an encoder-decoder"
            )
    return "decoder"


def accepts(model: Callable, name: str) -> bool:
    """Whether the model's forward takes the keyword argument ``name``."""
    forward = getattr(model, "forward", model)
    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def check_ids(ids: object, name: str, vocab: int | None, batch: int | None = None) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name}: expected a [B, T] tensor of token ids, got {type(ids).__name__}")
    if ids.is_floating_point() or ids.dtype == torch.bool or ids.is_complex():
        raise TypeError(f"{name}: expected integer token ids, got dtype {ids.dtype}")
    if ids.ndim != 2 or ids.shape[1] == 0 or ids.shape[0] == 0:
        raise ValueError(
            f"{name}: expected token ids [B, T] with B, T >= 1, got shape {tuple(ids.shape)}"
            + ("; add a batch dimension with ids.unsqueeze(0)" if ids.ndim == 1 else "")
        )
    if batch is not None and ids.shape[0] != batch:
        raise ValueError(
            f"{name}: expected one row per prompt ({batch}), got {ids.shape[0]} rows "
            f"(shape {tuple(ids.shape)})"
        )
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or (vocab is not None and high >= vocab):
        raise ValueError(
            f"{name}: token ids must lie in [0, {vocab}) (the model's vocabulary), got values "
            f"from {low} to {high}"
        )
    return ids.long()


def check_mask(mask: object, ids: torch.Tensor, name: str) -> torch.Tensor:
    if mask is None:
        return torch.ones_like(ids)
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(
            f"{name}: expected a tensor of 0 and 1 shaped like the ids {tuple(ids.shape)}, got "
            f"{getattr(mask, 'shape', type(mask).__name__)}"
        )
    values = set(torch.unique(mask).tolist())
    if not values <= {0, 1}:
        raise ValueError(f"{name}: expected only 0 and 1, got values {sorted(values)[:6]}")
    empty = (~mask.bool().any(1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"{name}: rows {empty[:6]} have no real token (their mask is all 0)")
    return mask.to(device=ids.device, dtype=torch.long)


def eos_ids(model: Callable, eos_token_id: int | Sequence[int] | None) -> set[int]:
    if eos_token_id is None:
        config = getattr(model, "generation_config", None) or getattr(model, "config", None)
        eos_token_id = getattr(config, "eos_token_id", None)
        if eos_token_id is None:
            eos_token_id = getattr(model, "eos_token_id", None)
    if eos_token_id is None:
        return set()
    if isinstance(eos_token_id, torch.Tensor):
        eos_token_id = eos_token_id.tolist()
    if _is_int(eos_token_id):
        return {int(eos_token_id)}
    if isinstance(eos_token_id, Sequence) and not isinstance(eos_token_id, str):
        if all(_is_int(i) for i in eos_token_id):
            return {int(i) for i in eos_token_id}
    raise TypeError(
        f"eos_token_id: expected a token id, a list of ids or [] (none), got {eos_token_id!r}"
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def vocabulary(model: Callable) -> int | None:
    config = getattr(model, "config", None)
    size = getattr(config, "vocab_size", None)
    if size is None:
        emb = _input_embeddings(model)
        size = getattr(emb, "num_embeddings", None)
    return None if size is None else int(size)


def _input_embeddings(model: Callable):
    get = getattr(model, "get_input_embeddings", None)
    if callable(get):
        try:
            return get()
        except (NotImplementedError, AttributeError):
            return None
    return None


def continuation(generated: object, batch: int, vocab: int | None, eos: set[int]):
    """``generated`` as ``[B, T_out]`` ids and which steps are real.

    A list of per-prompt sequences of different lengths is right-padded, the padding steps not
    real; in a tensor or a list, the steps after a row's first end-of-sequence id (``eos``) are
    not real either (what a finished row is filled with, as in a result's ``generated``).
    """
    if isinstance(generated, torch.Tensor):
        ids = check_ids(generated, "generated", vocab, batch)
        return ids, after_end(ids, eos)
    if not isinstance(generated, Sequence) or isinstance(generated, str):
        raise TypeError(
            f"generated: expected a [B, T_out] tensor of token ids or one sequence of ids per "
            f"prompt, got {type(generated).__name__}"
        )
    rows = []
    for b, r in enumerate(generated):
        row = torch.as_tensor(r)
        if row.is_floating_point() or row.is_complex() or row.dtype == torch.bool:
            raise TypeError(
                f"generated: expected integer token ids, got {row.dtype} values in sequence {b}"
            )
        rows.append(row.long().flatten())
    if len(rows) != batch:
        raise ValueError(
            f"generated: expected one continuation per prompt ({batch}), got {len(rows)}"
        )
    width = max(len(r) for r in rows)
    if width == 0:
        raise ValueError("generated: every continuation is empty; nothing to explain")
    ids = torch.zeros(batch, width, dtype=torch.long)
    real = torch.zeros(batch, width, dtype=torch.bool)
    for b, r in enumerate(rows):
        ids[b, : len(r)], real[b, : len(r)] = r, True
    check_ids(ids, "generated", vocab, batch)
    return ids, real & after_end(ids, eos)


def after_end(generated: torch.Tensor, eos: set[int]) -> torch.Tensor:
    """Steps that are real: up to and including each row's first end-of-sequence token."""
    if not eos:
        return torch.ones_like(generated, dtype=torch.bool)
    ended = torch.isin(generated, torch.tensor(sorted(eos), device=generated.device))
    before = ended.long().cumsum(1) - ended.long()  # end tokens strictly before each step
    return before == 0


def build(
    kind: str,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    generated: torch.Tensor,
    real: torch.Tensor,
    start: int | None,
) -> Context:
    device = input_ids.device
    generated, real = generated.to(device), real.to(device)
    if kind == "encoder-decoder":
        b = input_ids.shape[0]
        first = torch.full((b, 1), start, dtype=torch.long, device=device)
        ids = torch.cat([first, generated], 1)
        dmask = torch.cat([torch.ones_like(first), real.long()], 1)
        steps = torch.arange(generated.shape[1], device=device).expand(b, -1)
        return Context(ids, dmask, generated, steps.contiguous(), real, input_ids, mask)
    ids = torch.cat([input_ids, generated], 1)
    full = torch.cat([mask, real.long()], 1)
    p = input_ids.shape[1]
    columns = torch.arange(ids.shape[1], device=device).expand_as(ids)
    last_real = torch.where(full.bool(), columns, -1).cummax(1).values  # last real column <= j
    steps = last_real[:, p - 1 : p - 1 + generated.shape[1]]
    # A padding step predicts from the last real column too; its weight is 0 anyway.
    return Context(ids, full, generated, steps.contiguous(), real)


def causal_check(
    model: Callable, context: Context, forward: Callable, picked: torch.Tensor
) -> None:
    """Refuse a decoder whose logits at a step change when a later real token changes.

    ``picked``: the logits that predict every step ``[B, T_out, V]``; ``forward(ids, mask,
    steps)``: the logits at the columns ``steps`` ``[n, K]``, ``[n, K, V]``. One sample's last
    real column is changed, and only its real steps before that column are compared (the logits
    the explanation reads; outputs at padding are left out, and a model may fill them with
    anything). The sample is the one with the most such steps, so that a row that ended early
    (its last columns padding, which a mask hides) leaves the others to test.
    """
    columns = torch.arange(context.length, device=context.ids.device)
    last = torch.where(context.mask.bool(), columns, -1).amax(1)  # [B]: the last real column
    tested = context.real & (context.steps < last[:, None])  # [B, T_out]
    if not bool(tested.any()):
        return  # no real step has a real token after it to leak from
    b = int(tested.sum(1).argmax())
    keep = tested[b].nonzero().flatten()
    c, high = int(last[b]), int(context.ids.max())
    other = context.ids[b : b + 1].clone()
    other[0, c] = (other[0, c] + 1) % (high + 1) if high > 0 else 1  # another id in range
    after = forward(other, context.mask[b : b + 1], context.steps[b : b + 1, keep])[0]
    before = picked[b, keep]
    gap = float((before - after).abs().max())
    scale = float(before.abs().max()) + 1e-12
    if gap > 1e-4 * scale:
        raise ValueError(
            f"model: {type(model).__name__} is not causal: changing the last token changed the "
            f"outputs at earlier positions (by up to {gap:.3g}). A generated token is explained "
            "by its prefix, so explain_generation needs a causal language model or an "
            "encoder-decoder"
        )
