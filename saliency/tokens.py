"""One score per token or per image patch, from attributions of embeddings or of pixels.

Text models are explained at their embedding layer, ``[B, K, T, E]``, and vision transformers see
images as patches; these reductions give the unit a reader thinks in. Both keep the classes and
outputs, record the reduction in ``params``, and keep ``delta`` only where the reduced values sum
to the same total (see each function).
"""

from __future__ import annotations

import torch

from .attribution import Attribution

__all__ = ["patch_scores", "token_scores"]

TOKEN_REDUCTIONS = ("sum", "norm", "times_input")
PATCH_REDUCTIONS = ("sum", "abs_sum", "norm")


def token_scores(
    attribution: Attribution,
    how: str = "sum",
    embeddings: torch.Tensor | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
) -> Attribution:
    """Reduce embedding attributions ``[B, K, T, E]`` to one score per token, ``[B, K, T]``.

    Parameters
    ----------
    attribution
        An :class:`~saliency.Attribution` whose values have one ``E``-vector per token, e.g. a
        layer method at the embedding layer.
    how
        ``"sum"``: the sum over the embedding dimension (keeps the sign; for Integrated Gradients
        the token scores still add up to ``F(x) - F(baseline)``). ``"norm"``: the L2 norm (how
        much, not which way). ``"times_input"``: ``(values * embeddings).sum(-1)``, gradient x
        input per token, for values that are gradients with respect to ``embeddings``.
    embeddings
        ``[B, T, E]``, the embedded input; needed by ``"times_input"`` only.
    attention_mask
        ``[B, T]``, nonzero at real tokens and zero at padding (a tokenizer's
        ``attention_mask``): padding positions get the score 0, whatever the method gave them,
        and ``params["attention_mask"]`` is True. Pass the same mask as ``mask=`` to
        :func:`saliency.audit.class_sensitivity`, so that padding does not count as agreement.

    Returns
    -------
    Attribution
        ``values`` ``[B, K, T]``, the same ``classes``, ``outputs`` and ``method``, and
        ``params["token_scores"] = how``. ``delta`` is kept for ``"sum"``, which leaves every
        row's total, and so its completeness gap, unchanged (less what was set to 0 at padding);
        it becomes None for ``"norm"`` and ``"times_input"``, whose totals are other quantities.

    Examples
    --------
    >>> import torch, saliency
    >>> from saliency.tokens import token_scores
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(5 * 4, 3))
    >>> embedded = torch.randn(2, 5, 4)                       # 2 texts, 5 tokens, width 4
    >>> grads = saliency.gradients(model, embedded)           # values [2, 3, 5, 4]
    >>> token_scores(grads, "times_input", embeddings=embedded).values.shape
    torch.Size([2, 3, 5])
    """
    values = _values(attribution, 4, "[B, K, T, E] (one embedding vector per token)")
    if how not in TOKEN_REDUCTIONS:
        raise ValueError(f"how: expected one of {list(TOKEN_REDUCTIONS)}, got {how!r}")
    if how == "times_input":
        values = values * _embeddings(embeddings, values).unsqueeze(1)
    elif embeddings is not None:
        raise ValueError(
            f"embeddings: only how='times_input' uses them, got how={how!r}; leave embeddings "
            "out, or ask for how='times_input'"
        )
    scores = values.norm(dim=-1) if how == "norm" else values.sum(-1)
    if attention_mask is None:
        return _reduced(attribution, scores, how == "sum", token_scores=how)
    real = _attention_mask(attention_mask, scores)
    dropped = scores.masked_fill(real.unsqueeze(1), 0).sum(-1)  # what padding held, [B, K]
    reduced = _reduced(
        attribution,
        scores.masked_fill(~real.unsqueeze(1), 0),
        how == "sum",
        token_scores=how,
        attention_mask=True,
    )
    if reduced.delta is None:
        return reduced
    return Attribution(
        reduced.values,
        reduced.classes,
        reduced.outputs,
        reduced.method,
        reduced.params,
        reduced.delta - dropped.to(reduced.delta.dtype),
    )


def patch_scores(attribution: Attribution, patch: int = 16, how: str = "sum") -> Attribution:
    """Pool image attributions over non-overlapping ``patch`` x ``patch`` squares (ViT patches).

    Parameters
    ----------
    attribution
        An :class:`~saliency.Attribution` with image maps, ``values`` ``[B, K, C, H, W]`` or
        ``[B, K, H, W]``.
    patch
        The side of a patch in pixels; ``H`` and ``W`` must be multiples of it.
    how
        Over the channels and pixels of each patch: ``"sum"`` (signed), ``"abs_sum"`` (the sum of
        magnitudes) or ``"norm"`` (the L2 norm).

    Returns
    -------
    Attribution
        ``values`` ``[B, K, H / patch, W / patch]``, the same ``classes``, ``outputs`` and
        ``method``, ``params["patch_scores"] = {"patch": patch, "how": how}``. ``delta`` is kept
        for ``"sum"`` (the total of each row is unchanged) and None otherwise.

    Examples
    --------
    >>> import torch, saliency
    >>> from saliency.tokens import patch_scores
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4))
    >>> a = saliency.gradients(model, torch.rand(2, 3, 32, 32))
    >>> patch_scores(a, patch=16).values.shape
    torch.Size([2, 4, 2, 2])
    """
    values = _values(attribution, (4, 5), "[B, K, C, H, W] or [B, K, H, W] image maps")
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1:
        raise ValueError(f"patch: expected a positive int (pixels per side), got {patch!r}")
    if how not in PATCH_REDUCTIONS:
        raise ValueError(f"how: expected one of {list(PATCH_REDUCTIONS)}, got {how!r}")
    if values.ndim == 4:
        values = values.unsqueeze(2)
    b, k, c, h, w = values.shape
    if h % patch or w % patch:
        raise ValueError(
            f"patch: the maps are {h} x {w} pixels, not a whole number of {patch} x {patch} "
            "patches; crop or pad the input, or choose a patch size dividing both"
        )
    blocks = values.reshape(b, k, c, h // patch, patch, w // patch, patch)
    if how == "abs_sum":
        blocks = blocks.abs()
    dims = (2, 4, 6)  # channels and the pixels of each patch
    scores = torch.linalg.vector_norm(blocks, dim=dims) if how == "norm" else blocks.sum(dims)
    return _reduced(attribution, scores, how == "sum", patch_scores={"patch": patch, "how": how})


def _values(attribution: object, ndim: int | tuple[int, ...], expected: str) -> torch.Tensor:
    if not isinstance(attribution, Attribution):
        raise TypeError(
            f"attribution: expected a saliency.Attribution, got {type(attribution).__name__}"
        )
    values = attribution.values
    if values.ndim not in (ndim if isinstance(ndim, tuple) else (ndim,)):
        raise ValueError(f"attribution: expected values {expected}, got shape {list(values.shape)}")
    return values


def _embeddings(embeddings: object, values: torch.Tensor) -> torch.Tensor:
    b, _, t, e = values.shape
    if embeddings is None:
        raise ValueError(
            f"embeddings: how='times_input' multiplies by the embedded input, so pass "
            f"embeddings= of shape [{b}, {t}, {e}] (e.g. the embedding layer's output at x)"
        )
    if not isinstance(embeddings, torch.Tensor):
        raise TypeError(f"embeddings: expected a torch.Tensor, got {type(embeddings).__name__}")
    if tuple(embeddings.shape) != (b, t, e):
        raise ValueError(
            f"embeddings: expected shape [{b}, {t}, {e}] (values' [B, T, E]), got "
            f"{list(embeddings.shape)}"
        )
    return embeddings.detach().to(values.device)


def _attention_mask(mask: object, scores: torch.Tensor) -> torch.Tensor:
    b, _, t = scores.shape
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"attention_mask: expected a tensor [B, T] or None, got {mask!r}")
    if tuple(mask.shape) != (b, t):
        raise ValueError(
            f"attention_mask: expected shape [{b}, {t}] (one entry per token of each sample), "
            f"got {list(mask.shape)}"
        )
    return mask.to(scores.device) != 0


def _reduced(
    attribution: Attribution, scores: torch.Tensor, keeps_total: bool, **record: object
) -> Attribution:
    return Attribution(
        scores,
        attribution.classes,
        attribution.outputs,
        attribution.method,
        {**attribution.params, **record},
        attribution.delta if keeps_total else None,
        attribution.negatives,
    )
