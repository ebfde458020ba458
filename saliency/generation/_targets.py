"""What is differentiated for each generated token: its score at the position that predicts it.

Every step is one class of the engine: the callable ``output=`` below turns the model's logits
``[n, L, V]`` into ``[n, K]``, column ``k`` being the score of step ``k``'s token at its
predicting position. Per-sample step data (positions, tokens, alternatives, weights) travel as
forward arguments that the output :func:`reads <saliency.engine.problem.call_output>`, so they
follow their rows however the engine chunks, repeats or interpolates the batch; the small model
wrappers here take them and drop them before calling the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..engine import scores_of

__all__ = ["SCORES", "Contrast", "Forced", "ForcedSeq2Seq", "StepScores", "contrast", "parse"]

SCORES = ("probability", "log_probability", "logit")
STEP_ARGS = ("step_positions", "step_tokens", "step_alternatives", "step_weights")


@dataclass(frozen=True)
class Contrast:
    """The generated token's score minus an alternative token's, at every step."""

    alternatives: torch.Tensor  # [B, T_out] or [T_out] long
    score: str = "probability"


def contrast(alternatives: int | torch.Tensor | list, score: str = "probability") -> Contrast:
    """A contrastive ``target=``: why this token rather than another, at every step.

    Step ``t`` explains ``score(y_t) - score(a_t)`` at the same prefix, where ``a_t`` is the
    alternative token (Inseq's ``contrast_prob_diff`` with the probability, when the
    alternatives are one token each and the prefix is the generated one).

    Parameters
    ----------
    alternatives
        One token id for every step, a ``[T_out]`` sequence (the same for every prompt) or a
        ``[B, T_out]`` tensor.
    score
        ``"probability"``, ``"log_probability"`` or ``"logit"``.

    Examples
    --------
    >>> from saliency.generation import contrast
    >>> contrast(7).score
    'probability'
    """
    if score not in SCORES:
        raise ValueError(f"score: expected one of {list(SCORES)}, got {score!r}")
    alt = torch.as_tensor(alternatives)
    if alt.is_floating_point() or alt.dtype == torch.bool or alt.ndim > 2:
        raise ValueError(
            f"alternatives: expected token ids (an int, [T_out] or [B, T_out]), got "
            f"{alt.dtype} of shape {tuple(alt.shape)}"
        )
    return Contrast(alt.long(), score)


def parse(target: object) -> tuple[str, Contrast | None]:
    if isinstance(target, Contrast):
        return target.score, target
    if isinstance(target, str) and target in SCORES:
        return target, None
    raise ValueError(
        f"target: expected one of {list(SCORES)} or saliency.generation.contrast(...), "
        f"got {target!r}"
    )


def alternatives_for(c: Contrast, generated: torch.Tensor, vocab: int | None) -> torch.Tensor:
    alt = c.alternatives.to(generated.device)
    b, t = generated.shape
    try:
        alt = alt.expand(b, t) if alt.ndim < 2 else alt
    except RuntimeError:
        alt = None
    if alt is None or tuple(alt.shape) != (b, t):
        raise ValueError(
            f"target: the contrast's alternatives have shape {tuple(c.alternatives.shape)}; "
            f"expected one id per step: an int, [{t}] or [{b}, {t}]"
        )
    if int(alt.min()) < 0 or (vocab is not None and int(alt.max()) >= vocab):
        raise ValueError(
            f"target: alternative token ids must lie in [0, {vocab}), got {int(alt.min())} to "
            f"{int(alt.max())}"
        )
    return alt.contiguous()


@dataclass(frozen=True)
class StepScores:
    """``output=``: the score of each step's token at the column that predicts it, ``[n, K]``."""

    score: str
    contrastive: bool
    mask: str = "attention_mask"  # the forward argument whose width is the decoder's context

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.mask, *STEP_ARGS)

    def __call__(self, raw: object, **given: torch.Tensor) -> torch.Tensor:
        logits = scores_of(raw)
        if logits.ndim != 3:
            raise ValueError(
                f"model: expected language-model logits [B, T, V], got shape "
                f"{tuple(logits.shape)}; explain_generation needs a model with a language-model "
                "head"
            )
        offset = given[self.mask].shape[1] - logits.shape[1]  # logits kept for the last columns
        at = (given["step_positions"] - offset).unsqueeze(-1)  # [n, K, 1]
        picked = logits.gather(1, at.expand(-1, -1, logits.shape[2]))  # [n, K, V]
        if self.score == "probability":
            picked = picked.softmax(-1)
        elif self.score == "log_probability":
            picked = picked.log_softmax(-1)
        out = picked.gather(2, given["step_tokens"].unsqueeze(-1)).squeeze(-1)
        if self.contrastive:
            out = out - picked.gather(2, given["step_alternatives"].unsqueeze(-1)).squeeze(-1)
        return out * given["step_weights"]


class Forced:
    """A decoder-only model called on teacher-forced ids; the step arguments are for the output.

    ``logits_to_keep`` (HuggingFace models) limits the language-model head to the columns that
    predict this pass's steps, which saves its cost in the forward and in every backward pass.
    """

    def __init__(
        self, model: Callable, *, masked: bool, positions: bool, keep: bool, no_cache: bool
    ) -> None:
        self.model, self.masked, self.positions = model, masked, positions
        self.keep, self.no_cache = keep, no_cache

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        step_positions: torch.Tensor | None = None,
        step_tokens: torch.Tensor | None = None,
        step_alternatives: torch.Tensor | None = None,
        step_weights: torch.Tensor | None = None,
    ) -> object:
        kwargs: dict = {"attention_mask": attention_mask} if self.masked else {}
        if self.positions and position_ids is not None:
            kwargs["position_ids"] = position_ids
        if self.keep and step_positions is not None:
            kwargs["logits_to_keep"] = input_ids.shape[1] - int(step_positions.min())
        if self.no_cache:
            kwargs["use_cache"] = False
        return self.model(input_ids, **kwargs)


class ForcedSeq2Seq:
    """An encoder-decoder called on ``x = [source embeddings | decoder embeddings]``, ``[n, S +
    L, E]``: one differentiated tensor gives both parts' gradients from the same backward pass."""

    def __init__(self, model: Callable) -> None:
        self.model = model

    def __call__(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor,
        decoder_attention_mask: torch.Tensor,
        step_positions: torch.Tensor | None = None,
        step_tokens: torch.Tensor | None = None,
        step_alternatives: torch.Tensor | None = None,
        step_weights: torch.Tensor | None = None,
    ) -> object:
        s = attention_mask.shape[1]
        return self.model(
            inputs_embeds=x[:, :s],
            attention_mask=attention_mask,
            decoder_inputs_embeds=x[:, s:],
            decoder_attention_mask=decoder_attention_mask,
            use_cache=False,
        )
