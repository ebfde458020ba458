"""Ready-made ``output=`` callables: a language model used as a classifier.

A causal language model returns logits ``[B, T, V]``; as a classifier, its class scores are the
logits of a few label tokens (" yes", " no", ...) as the next token after each sequence's last real
token. :func:`next_token` picks them, for right and left padding alike, from the attention mask the
call passes to the model. Like every ``output=``, it is applied by the engine to each forward pass,
so the mask it reads is the one of the rows in that pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["NextToken", "next_token"]

_THEN = ("logits", "softmax", "log_softmax")


@dataclass(frozen=True)
class NextToken:
    """The scores of ``ids`` as the next token after each sequence's last real position."""

    ids: tuple[int, ...] | None
    then: str = "logits"
    reads = ("attention_mask",)  # the engine hands over the rows' attention mask, when given

    def __call__(self, raw: object, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = _logits(raw)
        if logits.ndim != 3:
            raise ValueError(
                f"output: next_token expects language-model logits [B, T, V], got shape "
                f"{tuple(logits.shape)}; for a sequence classifier, leave output= out"
            )
        b, t, v = logits.shape
        if self.ids is not None and max(self.ids) >= v:
            raise ValueError(
                f"output: next_token ids must be below the vocabulary size {v}, got {max(self.ids)}"
            )
        last = _last_positions(attention_mask, b, t, logits.device)
        scores = logits[torch.arange(b, device=logits.device), last]  # [B, V]
        if self.ids is not None:
            scores = scores[:, list(self.ids)]
        if self.then == "softmax":
            return torch.softmax(scores, dim=1)
        if self.then == "log_softmax":
            return torch.log_softmax(scores, dim=1)
        return scores


def next_token(ids: int | Sequence[int] | torch.Tensor | None = None, *, then: str = "logits"):
    """``output=`` for a causal language model used as a classifier over label tokens.

    Scores ``[B, C]`` are the logits of the token ``ids`` (the classes, in that order) at each
    sequence's last real position, the one that predicts the next token. With an
    ``attention_mask=`` forward argument (as for the model itself), that is the last position
    whose mask is 1, so right and left padding both work; without one, the last position.

    Parameters
    ----------
    ids
        The label tokens' vocabulary ids, one per class; ``None`` keeps the whole vocabulary
        (``C = V``, then pick classes with ``classes=``).
    then
        ``"logits"``, or ``"softmax"`` / ``"log_softmax"`` over the chosen ``ids`` (a classifier's
        probabilities over its label tokens; with ``ids=None``, over the whole vocabulary).

    Examples
    --------
    >>> import torch, saliency
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> _ = torch.manual_seed(0)
    >>> lm = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2)).eval()
    >>> ids = torch.tensor([[7, 8, 9, 0], [5, 6, 7, 8]])  # the first row right-padded
    >>> mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    >>> a = saliency.gradients(lm, ids, layer=lm.get_input_embeddings(),
    ...                        output=saliency.next_token([10, 11]), attention_mask=mask)
    >>> a.values.shape  # [B, K, T, E]: the 2 label tokens' gradients at each input token
    torch.Size([2, 2, 4, 16])
    >>> bool((a.values[0, :, 3] == 0).all())  # the padding cannot change the last real token
    True
    """
    if then not in _THEN:
        raise ValueError(f"then: expected one of {list(_THEN)}, got {then!r}")
    if ids is None:
        return NextToken(None, then)
    if isinstance(ids, torch.Tensor):
        ids = ids.flatten().tolist()
    if isinstance(ids, int) and not isinstance(ids, bool):
        ids = [ids]
    ids = list(ids)
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ValueError(f"ids: expected non-negative token ids (ints), got {ids!r}")
    return NextToken(tuple(ids), then)


def _logits(raw: object) -> torch.Tensor:
    if isinstance(raw, torch.Tensor):
        return raw
    logits = getattr(raw, "logits", None)
    if logits is None and isinstance(raw, dict):
        logits = raw.get("logits")
    if logits is None and isinstance(raw, tuple | list) and raw:
        logits = raw[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"output: next_token expects a language model's logits (a tensor or an output with "
            f".logits), got {type(raw).__name__}"
        )
    return logits


def _last_positions(
    mask: torch.Tensor | None, b: int, t: int, device: torch.device
) -> torch.Tensor:
    if mask is None:
        return torch.full((b,), t - 1, dtype=torch.long, device=device)
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (b, t):
        raise ValueError(
            f"attention_mask: expected a [B, T] = [{b}, {t}] tensor of 0 and 1, got "
            f"{getattr(mask, 'shape', type(mask).__name__)}"
        )
    real = mask.to(device) != 0
    if not bool(real.any(1).all()):
        raise ValueError("attention_mask: a sequence has no real token (its mask is all 0)")
    positions = torch.arange(t, device=device).expand(b, t)
    return torch.where(real, positions, -1).amax(1)
