"""Class sensitivity: do the maps of different classes differ, for every pair of classes?

An explanation that shows the same picture whatever class it is asked about explains the input,
not the decision (Sixt et al. 2020, "When Explanations Lie"). Quantus's RandomLogit compares the
label's map with one random other class; here every pair of the ``K`` class maps is compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..attribution import Attribution
from ..engine import parse_memory
from .records import MetricRecord
from .similarity import check_similarity, compare_matrix, prepare_maps

__all__ = ["ClassSensitivity", "class_sensitivity"]


@dataclass(frozen=True, eq=False)
class ClassSensitivity:
    """Similarity of every pair of class maps of every sample.

    Attributes
    ----------
    matrix : torch.Tensor
        ``[B, K, K]``: ``matrix[b, i, j]`` compares the maps of classes ``classes[b, i]`` and
        ``classes[b, j]``; 1 on the diagonal (NaN where a map is constant).
    mean_other : torch.Tensor
        ``[B, K]``: the mean similarity of each class map to the ``K - 1`` others.
    off_diagonal : torch.Tensor
        ``[B]``: the mean over all pairs of different classes.
    flagged : torch.Tensor
        ``[B]`` bool: every pair of different classes is at least ``threshold`` similar (the maps
        look the same whatever the class).
    classes : torch.Tensor
        ``[B, K]`` class ids of the rows.
    similarity : str
    threshold : float
    """

    matrix: torch.Tensor
    mean_other: torch.Tensor
    off_diagonal: torch.Tensor
    flagged: torch.Tensor
    classes: torch.Tensor
    similarity: str
    threshold: float

    def summary(self) -> dict:
        """Mean and median off-diagonal similarity and the flagged samples, JSON-safe."""
        off = self.off_diagonal.double()
        flagged = self.flagged.nonzero().flatten().tolist()
        return {
            "metric": "class_sensitivity",
            "similarity": self.similarity,
            "threshold": self.threshold,
            "samples": int(self.classes.shape[0]),
            "classes_per_sample": int(self.classes.shape[1]),
            "mean": _number(off.nanmean()),
            "median": _number(off.nanmedian()),
            "flagged": len(flagged),
            "flagged_samples": flagged,
            "undefined": int(off.isnan().sum()),
        }


def class_sensitivity(
    attribution: Attribution,
    *,
    similarity: str = "spearman",
    threshold: float = 0.9,
    abs: bool = True,
    sum_channels: bool = True,
    mask: torch.Tensor | None = None,
    max_memory: int | str | None = None,
) -> ClassSensitivity:
    """Compare the maps of every pair of classes of every sample; flag class-blind samples.

    Each sample's ``K`` class maps give a ``K x K`` similarity matrix, computed for all samples
    in batched matrix products (maps ranked once each for Spearman), in chunks of samples under
    ``max_memory``. A sample is flagged when all its pairs of different classes are at least
    ``threshold`` similar: its explanation does not depend on the class asked about.

    Parameters
    ----------
    attribution
        Any :class:`saliency.Attribution` with ``K >= 2`` classes per sample.
    similarity
        ``"spearman"`` (rank correlation, the default), ``"cosine"``, or ``"ssim"`` (images
        ``[H, W]`` after summing channels, or signals ``[D]``); see
        :mod:`saliency.audit.similarity`.
    threshold
        The similarity from which a pair of class maps counts as the same (default 0.9; the
        bundled digits model's gradient maps stay below 0.65 on every sample, for every
        similarity).
    abs, sum_channels
        As in :func:`saliency.audit.randomization_test`: image channels summed, then absolute
        values (the default), so that maps differing only in sign or scale count as the same.
    mask
        Which positions to compare, ``[B, *positions]`` (nonzero or True: compared), e.g. a text
        batch's ``attention_mask`` ``[B, T]``. Padding is zero in every class map, so left in it
        would count as agreement between classes. ``positions`` are the leading dimensions of
        the maps after the channels are summed (``[T]`` for token scores ``[B, K, T]`` and for
        embedding attributions ``[B, K, T, E]``; ``[H, W]`` for images). With ``"ssim"``, only
        1-D maps can be masked (the kept positions are read as one signal).
    max_memory
        A budget for the working set, as in :func:`saliency.class_jacobian`'s ``max_memory``.

    Returns
    -------
    ClassSensitivity

    Examples
    --------
    >>> import torch, saliency
    >>> from saliency.audit import class_sensitivity
    >>> g = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    >>> blind = lambda x: g(x) * torch.tensor([1.0, -2.0, 3.0])   # every logit a_k * g(x)
    >>> r = class_sensitivity(saliency.gradients(blind, torch.randn(4, 5)))
    >>> r.matrix.shape, r.flagged.tolist()
    (torch.Size([4, 3, 3]), [True, True, True, True])
    """
    if not isinstance(attribution, Attribution):
        raise TypeError(
            f"attribution: expected a saliency.Attribution, got {type(attribution).__name__}"
        )
    similarity = check_similarity(similarity)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise TypeError(f"threshold: expected a number, got {threshold!r}")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold: expected a similarity in [-1, 1], got {threshold!r}")
    for name, flag in (("abs", abs), ("sum_channels", sum_channels)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name}: expected True or False, got {flag!r}")
    values = attribution.values
    n, k = values.shape[:2]
    if k < 2:
        raise ValueError(
            f"attribution: holds {k} class per sample; comparing classes needs at least 2 "
            "(explain with classes=None, a list or saliency.top_k(k))"
        )
    if not bool(torch.isfinite(values).all()):
        bad = (~torch.isfinite(values.flatten(1))).any(1).nonzero().flatten().tolist()
        raise ValueError(f"attribution: NaN or inf values for samples {bad[:8]}")

    raw_ndim = values.ndim - 2
    rows = _samples_per_chunk(values, k, similarity, parse_memory(max_memory))
    parts = []
    for start in range(0, n, rows):
        maps, map_ndim = prepare_maps(
            values[start : start + rows], raw_ndim, abs=abs, sum_channels=sum_channels
        )
        if mask is None:
            parts.append(compare_matrix(maps, similarity, map_ndim))
            continue
        if start == 0:
            keep = _mask(mask, values, maps, map_ndim, similarity)
        parts.append(_masked_matrix(maps, keep[start : start + rows], similarity))
    matrix = torch.cat(parts)

    eye = torch.eye(k, dtype=torch.bool, device=matrix.device)
    others = matrix.masked_fill(eye, math.nan)
    mean_other = others.nanmean(-1)
    off_diagonal = others.flatten(1).nanmean(-1)
    # A NaN pair (a constant map) neither proves nor refutes sameness: it does not block a flag,
    # but a sample needs at least one defined pair to be flagged.
    defined = ~others.isnan()
    lowest = others.nan_to_num(nan=math.inf).flatten(1).amin(-1)
    flagged = (lowest >= threshold) & defined.flatten(1).any(-1)
    return ClassSensitivity(
        matrix=matrix,
        mean_other=mean_other,
        off_diagonal=off_diagonal,
        flagged=flagged,
        classes=attribution.classes,
        similarity=similarity,
        threshold=float(threshold),
    )


def _mask(mask, values, maps, map_ndim: int, similarity: str) -> torch.Tensor:
    """``mask`` checked against the maps: a bool ``[B, *positions]``, ``positions`` leading the
    map's dimensions, with at least two positions kept per sample."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask: expected a tensor [B, *positions] or None, got {mask!r}")
    shape = tuple(maps.shape[2:])
    n, d = values.shape[0], mask.ndim - 1
    if d < 1 or mask.shape[0] != n or tuple(mask.shape[1:]) != shape[:d]:
        raise ValueError(
            f"mask: expected [B, *positions] with B={n} and positions leading the compared maps' "
            f"shape {list(shape)} (e.g. [{n}, {shape[0]}]), got {list(mask.shape)}"
        )
    if similarity == "ssim" and not (map_ndim == 1 and d == 1):
        raise ValueError(
            "mask: 'ssim' compares the kept positions as one signal, so it masks 1-D maps "
            f"only; these maps are {list(shape)}. Use 'spearman' or 'cosine'"
        )
    keep = mask.to(device=values.device).flatten(1) != 0
    few = (keep.sum(1) < 2).nonzero().flatten().tolist()
    if few:
        raise ValueError(f"mask: samples {few[:8]} keep fewer than 2 positions to compare")
    return keep


def _masked_matrix(maps, keep: torch.Tensor, similarity: str) -> torch.Tensor:
    """``compare_matrix`` over the kept positions of each sample, samples that keep the same
    number of positions compared together."""
    b, k = maps.shape[:2]
    flat = maps.reshape(b, k, keep.shape[1], -1)  # [b, K, positions, rest]
    counts = keep.sum(1)
    order, parts = [], []
    for count in counts.unique().tolist():
        rows = (counts == count).nonzero().flatten()
        kept = flat[rows].transpose(1, 2)[keep[rows]]  # [rows * count, K, rest]
        kept = kept.view(len(rows), count, k, -1).transpose(1, 2).flatten(2)  # [rows, K, D]
        # Scaled again to their own largest value: padding no longer sets the scale (SSIM).
        peak = kept.abs().amax(-1, keepdim=True)
        kept = kept / torch.where(peak > 0, peak, torch.ones_like(peak))
        order.append(rows)
        parts.append(compare_matrix(kept, similarity, 1))
    return torch.cat(parts)[torch.argsort(torch.cat(order))]


RECORDS = (
    MetricRecord(
        name="class_sensitivity",
        function=class_sensitivity,
        result=ClassSensitivity,
        explanation="how similar each sample's maps of different classes are: maps that look "
        "the same whatever the class explain the input, not the decision",
        doc="audit/class-sensitivity.md",
        columns={"mean_other": "lower", "off_diagonal": "lower", "flagged": None},
        rows="several",
        baseline="identical maps give 1, maps of unrelated classes about 0",
    ),
)


def _samples_per_chunk(values: torch.Tensor, k: int, similarity: str, budget: int | None) -> int:
    n = values.shape[0]
    if budget is None:
        return n
    d = values[0, 0].numel()
    # float64 working copies: ranks, sort keys and indices per map; SSIM holds a few [K, K, D].
    per_sample = 8 * (6 * k * d + 2 * k * k) + (4 * 8 * k * k * d if similarity == "ssim" else 0)
    rows = budget // per_sample
    if rows < 1:
        raise MemoryError(
            f"max_memory: {budget} bytes cannot hold one sample's {k} maps of {d} values "
            f"(about {per_sample} bytes for {similarity!r})"
        )
    return min(n, rows)


def _number(value: torch.Tensor) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None
