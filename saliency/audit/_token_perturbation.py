"""Deletion and insertion for token models: the score of every class as its top tokens go.

The text counterpart of :func:`saliency.audit.deletion`. A token is deleted by substituting a
chosen token id (the pad, mask or unknown token) or, with ``layer=``, a vector at the embedding
layer's output (the pad token's embedding, zeros). Only real tokens are deleted: padding (the
``attention_mask`` forward argument's zeros), the ids in ``keep_ids`` (special tokens such as
[CLS] and [SEP]) and tokens that already are the substitute id stay as they are, so a fraction
is a fraction of each text's own deletable tokens. Each distinct perturbed text is run once:
the first and last points do not depend on the order and are shared by all classes and the
random order, and a short text's repeated counts are run once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..attribution import Attribution
from ..engine import layer_name, layer_output, outputs, parse_memory
from ._perturbation import PerturbationCurves
from ._scores import Tracked, check_explains, describe, generator, rows_per_chunk, take, tracked
from .records import MetricRecord

__all__ = ["token_deletion", "token_insertion"]

_DEFAULT_STEPS = 20


def token_deletion(
    model: Callable,
    x: torch.Tensor,
    attribution: Attribution,
    *,
    substitute: int | torch.Tensor,
    keep_ids: Sequence[int] = (),
    layer: nn.Module | str | None = None,
    steps: int | None = None,
    abs: bool = False,
    random_order: bool = True,
    seed: int | None = None,
    output: str | Callable | None = None,
    max_memory: int | str | None = None,
    **forward_kwargs: object,
) -> PerturbationCurves:
    """Track every row's score as its highest-scoring tokens are replaced by ``substitute``.

    For each sample ``b`` with ``D_b`` deletable tokens and each row ``k``, the tokens are
    ranked by decreasing score (ties by position) and point ``i`` of ``steps + 1`` deletes the
    first ``floor(i * D_b / steps)`` of them, from the text itself to every deletable token
    substituted. Lower areas mean more faithful scores; ``random_auc`` is the same for a random
    order (one per sample, seeded, shared by its classes), the reference to beat.

    Parameters
    ----------
    model, x, **forward_kwargs
        The model and token ids ``[B, T]`` the attribution explains, as in
        :func:`saliency.class_jacobian`. An ``attention_mask`` ``[B, T]`` forward argument
        (zeros at padding) is passed to the model and marks the padding, never deleted.
    attribution
        An :class:`saliency.Attribution` of ``x`` with one score per token, ``[B, K, T]``
        (:func:`saliency.token_scores` of an embedding attribution).
    substitute
        What a deleted token becomes: a token id (the pad, mask or unknown token's), or with
        ``layer`` a float vector ``[E]`` (or a tensor broadcastable to the layer's output
        ``[B, T, E]``) put in place of the deleted tokens' embeddings.
    keep_ids
        Token ids never deleted (special tokens: [CLS], [SEP], BOS; the pad id of a model
        without an attention mask).
    layer
        The embedding module (or its dotted name) whose output an embedding ``substitute``
        replaces.
    steps
        The number of equal parts each text's deletable tokens are deleted in (default 20, or
        the longest text's number of deletable tokens when smaller).
    abs
        Rank by absolute score (for scores whose sign carries no importance, e.g. gradient
        norms); default: signed, most positive first.
    random_order, seed, output, max_memory
        As in :func:`saliency.audit.deletion`.

    Returns
    -------
    PerturbationCurves
        ``kind`` ``"deletion"``, ``params["features"] = "tokens"``; ``fractions`` are the
        nominal ``i / steps`` (each text deletes the nearest whole number of its own tokens
        below that).

    Examples
    --------
    >>> import torch, saliency
    >>> from saliency.audit import token_deletion
    >>> emb = torch.nn.Embedding(20, 4)
    >>> model = lambda ids: emb(ids).sum(1)[:, :3]          # 3 classes from a bag of words
    >>> ids = torch.tensor([[3, 7, 9, 4, 0], [5, 2, 8, 0, 0]])    # 0 pads
    >>> a = saliency.gradients(model, ids, layer=emb, times_input=True)
    >>> scores = saliency.token_scores(a)                      # [2, 3, 5]
    >>> r = token_deletion(model, ids, scores, substitute=0, steps=4, seed=0)
    >>> r.curves.shape, r.params["deletable"]
    (torch.Size([2, 3, 5]), [4, 3])
    """
    return _run(
        "deletion", model, x, attribution, substitute=substitute, keep_ids=keep_ids,
        layer=layer, steps=steps, abs=abs, random_order=random_order, seed=seed, output=output,
        max_memory=max_memory, forward_kwargs=forward_kwargs,
    )  # fmt: skip


def token_insertion(
    model: Callable,
    x: torch.Tensor,
    attribution: Attribution,
    *,
    substitute: int | torch.Tensor,
    keep_ids: Sequence[int] = (),
    layer: nn.Module | str | None = None,
    steps: int | None = None,
    abs: bool = False,
    random_order: bool = True,
    seed: int | None = None,
    output: str | Callable | None = None,
    max_memory: int | str | None = None,
    **forward_kwargs: object,
) -> PerturbationCurves:
    """Track every row's score as its highest-scoring tokens are put back into a substituted text.

    The mirror of :func:`token_deletion` (same arguments): point ``i`` starts from every
    deletable token substituted and restores the first ``floor(i * D_b / steps)`` in order of
    decreasing score, up to the text itself. Higher areas mean more faithful scores.

    Examples
    --------
    >>> import torch, saliency
    >>> from saliency.audit import token_insertion
    >>> emb = torch.nn.Embedding(20, 4)
    >>> model = lambda ids: emb(ids).sum(1)[:, :3]
    >>> ids = torch.tensor([[3, 7, 9, 4, 0], [5, 2, 8, 0, 0]])
    >>> scores = saliency.token_scores(saliency.gradients(model, ids, layer=emb, times_input=True))
    >>> r = token_insertion(model, ids, scores, substitute=0, random_order=False)
    >>> torch.allclose(r.curves[..., -1], model(ids).detach())   # all put back: the text
    True
    """
    return _run(
        "insertion", model, x, attribution, substitute=substitute, keep_ids=keep_ids,
        layer=layer, steps=steps, abs=abs, random_order=random_order, seed=seed, output=output,
        max_memory=max_memory, forward_kwargs=forward_kwargs,
    )  # fmt: skip


def _run(
    kind: str,
    model: Callable,
    x: torch.Tensor,
    attribution: Attribution,
    *,
    substitute: int | torch.Tensor,
    keep_ids: Sequence[int],
    layer: nn.Module | str | None,
    steps: int | None,
    abs: bool,
    random_order: bool,
    seed: int | None,
    output: str | Callable | None,
    max_memory: int | str | None,
    forward_kwargs: dict,
) -> PerturbationCurves:
    scores = _check(x, attribution)
    check_explains(model, x, attribution, output, forward_kwargs)
    for name, flag in (("abs", abs), ("random_order", random_order)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name}: expected True or False, got {flag!r}")
    x = x.detach()
    n, t = x.shape
    fill = _Fill(model, x, substitute, layer, forward_kwargs)
    deletable = _deletable(x, keep_ids, fill.substitute_id, forward_kwargs.get("attention_mask"))
    total = deletable.sum(1)  # D_b
    if steps is None:
        steps = max(1, min(_DEFAULT_STEPS, int(total.max())))
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    points = torch.arange(steps + 1)
    counts = points[None, :] * total[:, None] // steps  # [B, S] tokens deleted at each point
    gen, seed = generator(seed, x.device)
    track = tracked(model, x, attribution, output, forward_kwargs)
    budget = parse_memory(max_memory)

    maps = scores.detach().to(x.device).double()
    if abs:
        maps = maps.abs()
    rank = _ranks(maps.masked_fill(~deletable[:, None], -math.inf))  # [B, K, T]
    random_rank = None
    if random_order:
        keys = torch.rand(n, t, generator=gen, device=x.device).double()
        random_rank = _ranks(keys.masked_fill(~deletable, -math.inf)[:, None])[:, 0]

    jobs = _Jobs(counts, total)
    k = maps.shape[1]
    curve_jobs = jobs.add_rows(torch.arange(k))  # [B, K, S]
    random_jobs = jobs.add_rows(torch.tensor([-1]))[:, 0] if random_order else None
    # Without a budget, one point's worth of texts per forward pass, as the image audits run.
    chunk = rows_per_chunk(
        track, x, budget, default=n * k, per_row_extra=t * 16, what="one perturbed text"
    )
    out = jobs.run(
        lambda b, row, count: _removed(b, row, count, rank, random_rank, deletable, kind),
        fill,
        track,
        chunk,
    )
    samples = torch.arange(n, device=x.device)[:, None, None].expand(n, k, steps + 1)
    picked = out[curve_jobs]  # [B, K, S, C]
    rows = torch.arange(k, device=x.device)[None, :, None].expand(n, k, steps + 1)
    flat = picked.reshape(-1, picked.shape[-1])
    curves = track.scores(flat, samples.reshape(-1), rows.reshape(-1)).view(n, k, steps + 1)
    is_top = track.is_top(flat, samples.reshape(-1), rows.reshape(-1)).view(n, k, steps + 1)
    random_curves = None
    if random_jobs is not None:
        r_out = out[random_jobs]  # [B, S, C]
        r_samples = torch.arange(n, device=x.device)[:, None].expand(n, steps + 1).reshape(-1)
        random_curves = (
            track.scores(r_out.reshape(-1, r_out.shape[-1]), r_samples, None)
            .view(n, steps + 1, k)
            .transpose(1, 2)
            .to(curves.dtype)
        )

    fractions = points.double() / steps
    params = {
        "steps": steps,
        "features": "tokens",
        "substitute": fill.describe(),
        "keep_ids": [int(i) for i in keep_ids],
        "deletable": total.tolist(),
        "abs": abs,
        "random_order": random_order,
        "seed": seed,
        "output": describe(track.output),
        "max_memory": max_memory,
    }
    if layer is not None:
        params["layer"] = layer_name(model, layer)
    return PerturbationCurves.from_curves(
        curves, random_curves, fractions, is_top, attribution.classes, kind, params
    )


class _Fill:
    """Perturbed texts: ids with the substitute id, or embeddings with the substitute vector."""

    def __init__(self, model, x, substitute, layer, forward_kwargs: dict) -> None:
        self.model, self.x, self.layer, self.kw = model, x, layer, forward_kwargs
        self.substitute_id: int | None = None
        if isinstance(substitute, int) and not isinstance(substitute, bool):
            if layer is not None:
                raise ValueError(
                    "layer: a token id substitute replaces ids, so layer= is not used; pass a "
                    "float vector as substitute= to replace embeddings, or leave layer out"
                )
            self.substitute_id = substitute
            self.embedded = None
            return
        if not isinstance(substitute, torch.Tensor) or not substitute.is_floating_point():
            raise TypeError(
                f"substitute: expected a token id (int) or a float embedding vector [E] with "
                f"layer=, got {substitute!r}"
            )
        if layer is None:
            raise ValueError(
                "layer: an embedding substitute replaces the output of the embedding layer; pass "
                "layer= (the embedding module or its dotted name)"
            )
        self.embedded = layer_output(model, x, layer, **forward_kwargs)
        try:
            self.vector = torch.broadcast_to(
                substitute.detach().to(self.embedded), self.embedded.shape
            )
        except RuntimeError:
            raise ValueError(
                f"substitute: a vector of shape {list(substitute.shape)} does not broadcast to "
                f"the layer's output {list(self.embedded.shape)}"
            ) from None
        self.shape = list(substitute.shape)

    def __call__(self, removed, samples, track: Tracked) -> torch.Tensor:
        """Outputs ``[R, C]`` of the texts ``x[samples]`` with the ``removed`` tokens
        substituted."""
        x = self.x
        ids = x[samples]
        if self.substitute_id is not None:
            return track.outputs(ids.masked_fill(removed, self.substitute_id), samples)
        value = torch.where(removed[..., None], self.vector[samples], self.embedded[samples])
        kwargs = {k: take(v, samples, x.shape[0]) for k, v in self.kw.items()}
        return outputs(
            self.model, ids, output=track.output, layer=self.layer, layer_value=value, **kwargs
        )

    def describe(self) -> object:
        if self.substitute_id is not None:
            return self.substitute_id
        return f"embedding{self.shape}"


class _Jobs:
    """The distinct perturbed texts: ``(sample, order, count)`` with ``order`` a row ``k``, the
    random order (-1) or none (-2: nothing or every deletable token substituted)."""

    def __init__(self, counts: torch.Tensor, total: torch.Tensor) -> None:
        self.counts, self.total = counts, total
        self.index: dict[tuple[int, int, int], int] = {}

    def __len__(self) -> int:
        return len(self.index)

    def add_rows(self, orders: torch.Tensor) -> torch.Tensor:
        """Job ids ``[B, len(orders), S]`` for every sample, order and point."""
        n, s = self.counts.shape
        ids = torch.empty(n, len(orders), s, dtype=torch.long)
        for b in range(n):
            for j, order in enumerate(orders.tolist()):
                for i, count in enumerate(self.counts[b].tolist()):
                    shared = count == 0 or count == int(self.total[b])
                    key = (b, -2 if shared else order, count)
                    ids[b, j, i] = self.index.setdefault(key, len(self.index))
        return ids

    def run(self, removed_of, fill: _Fill, track: Tracked, chunk: int) -> torch.Tensor:
        """Outputs ``[jobs, C]`` of every job, in chunks of ``chunk`` texts."""
        keys = list(self.index)
        parts = []
        for start in range(0, len(keys), chunk):
            part = keys[start : start + chunk]
            b = torch.tensor([key[0] for key in part])
            row = torch.tensor([key[1] for key in part])
            count = torch.tensor([key[2] for key in part])
            removed = removed_of(b, row, count)
            samples = b.to(removed.device)
            parts.append(fill(removed, samples, track))
        return torch.cat(parts)


def _removed(b, row, count, rank, random_rank, deletable, kind: str) -> torch.Tensor:
    """Which tokens each job substitutes, ``[R, T]``: its order's first ``count`` deletable
    tokens (deletion), or the deletable tokens after them (insertion)."""
    device = rank.device
    b, row, count = b.to(device), row.to(device), count.to(device)
    ranks = rank[b, row.clamp(min=0)]
    if random_rank is not None:
        ranks = torch.where((row == -1)[:, None], random_rank[b], ranks)
    top = ranks < count[:, None]
    every = (row == -2)[:, None]  # nothing or everything: the count says which
    top = torch.where(every, (count > 0)[:, None].expand_as(top), top)
    top = top & deletable[b]
    return top if kind == "deletion" else deletable[b] & ~top


def _ranks(maps: torch.Tensor) -> torch.Tensor:
    """Each position's place in its map's descending order (stable: ties by position)."""
    order = torch.sort(maps, dim=-1, descending=True, stable=True).indices
    places = torch.arange(maps.shape[-1], device=maps.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, places)


def _deletable(x, keep_ids, substitute_id, mask) -> torch.Tensor:
    """Real tokens that a deletion changes: not padding, not kept, not the substitute already."""
    out = torch.ones_like(x, dtype=torch.bool)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(x.shape):
            got = list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"attention_mask: expected shape {list(x.shape)} like x, got {got}")
        out &= mask.to(x.device) != 0
    if isinstance(keep_ids, int) or not isinstance(keep_ids, Sequence | torch.Tensor):
        raise TypeError(f"keep_ids: expected a sequence of token ids, got {keep_ids!r}")
    for i in list(keep_ids):
        out &= x != int(i)
    if substitute_id is not None:
        out &= x != substitute_id
    empty = (out.sum(1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"x: samples {empty[:8]} have no token to delete (all padding, kept ids or the "
            "substitute itself)"
        )
    return out


def _check(x: object, attribution: object) -> torch.Tensor:
    if not isinstance(attribution, Attribution):
        raise TypeError(
            f"attribution: expected a saliency.Attribution, got {type(attribution).__name__}"
        )
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.is_floating_point() or x.is_complex():
        what = f"{x.dtype} {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"x: expected token ids, an integer tensor [B, T], got {what}")
    v = attribution.values
    if v.ndim == 4 and v.shape[0] == x.shape[0] and v.shape[2] == x.shape[1]:
        raise ValueError(
            f"attribution: values {list(v.shape)} hold a vector per token; reduce them to one "
            "score per token with saliency.token_scores(attribution) first"
        )
    if v.ndim != 3 or v.shape[0] != x.shape[0] or v.shape[2] != x.shape[1]:
        raise ValueError(
            f"attribution: values {list(v.shape)} do not score the tokens of x {list(x.shape)}; "
            f"expected [{x.shape[0]}, K, {x.shape[1]}]"
        )
    if not bool(torch.isfinite(v).all()):
        bad = (~torch.isfinite(v.flatten(1))).any(1).nonzero().flatten().tolist()
        raise ValueError(f"attribution: NaN or inf values for samples {bad[:8]}")
    return v


RECORDS = (
    MetricRecord(
        name="token_deletion",
        function=token_deletion,
        result=PerturbationCurves,
        explanation="the class score as the tokens the scores rank first are substituted (pad, "
        "mask or unknown token): faithful token scores make it fall fast (area under the "
        "curve, against a random order)",
        doc="audit/deletion-insertion.md",
        columns={"auc": "lower", "random_auc": None, "normalized_auc": "lower"},
        random={"auc": "random_auc"},
        # Declared literally: the command reads the records without importing this module.
        not_in_runs="needs one score per token of token-id inputs (saliency.token_scores), "
        "which a data-set run does not make of its methods' embedding attributions yet; call it "
        "on a batch",
    ),
    MetricRecord(
        name="token_insertion",
        function=token_insertion,
        result=PerturbationCurves,
        explanation="the class score as the tokens the scores rank first are put back into a "
        "substituted text: faithful token scores make it rise fast (area under the curve, "
        "against a random order)",
        doc="audit/deletion-insertion.md",
        columns={"auc": "higher", "random_auc": None, "normalized_auc": "higher"},
        random={"auc": "random_auc"},
        # Declared literally: the command reads the records without importing this module.
        not_in_runs="needs one score per token of token-id inputs (saliency.token_scores), "
        "which a data-set run does not make of its methods' embedding attributions yet; call it "
        "on a batch",
    ),
)
