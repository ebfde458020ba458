"""Completeness: does an attribution add up to the change of the score it explains?

Integrated Gradients records its completeness gap ``delta = sum(values) - (F(x) - F(baseline))``
for every row; this metric turns it into a relative gap and counts the rows beyond a tolerance.
Nothing is recomputed: ``F(x) - F(baseline) = sum(values) - delta``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..attribution import Attribution
from .records import MetricRecord

__all__ = ["Completeness", "completeness"]


@dataclass(frozen=True, eq=False)
class Completeness:
    """Completeness gaps of every row of an Attribution.

    Attributes
    ----------
    gap : torch.Tensor
        ``[B, K]``: ``sum(values) - (F(x) - F(baseline))``, the recorded ``delta``.
    abs_gap : torch.Tensor
        ``[B, K]``: ``|gap|``.
    change : torch.Tensor
        ``[B, K]``: ``F(x) - F(baseline)``, the score change the row should add up to.
    relative_gap : torch.Tensor
        ``[B, K]``: ``|gap| / max(|change|, floor)``.
    flat : torch.Tensor
        ``[B, K]`` bool: ``|change| < floor``; these rows are measured against ``floor``.
    exceeds : torch.Tensor
        ``[B, K]`` bool: ``relative_gap > tol``.
    floor : torch.Tensor
        ``[B]``: the smallest change a gap is measured against, per sample.
    classes : torch.Tensor
        ``[B, K]`` class ids of the rows.
    tol : float
    """

    gap: torch.Tensor
    abs_gap: torch.Tensor
    change: torch.Tensor
    relative_gap: torch.Tensor
    flat: torch.Tensor
    exceeds: torch.Tensor
    floor: torch.Tensor
    classes: torch.Tensor
    tol: float

    def summary(self) -> dict:
        """Mean, median and largest relative gap and the rows beyond ``tol``, JSON-safe."""
        rel = self.relative_gap.double().flatten()
        return {
            "metric": "completeness",
            "tol": self.tol,
            "samples": int(self.classes.shape[0]),
            "classes_per_sample": int(self.classes.shape[1]),
            "mean": _number(rel.mean()),
            "median": _number(rel.median()),
            "max": _number(rel.max()),
            "mean_abs_gap": _number(self.abs_gap.double().mean()),
            "exceeding": int(self.exceeds.sum()),
            "flat": int(self.flat.sum()),
            "rows": int(rel.numel()),
        }


def completeness(
    attribution: Attribution, *, tol: float = 0.01, floor: float | None = None
) -> Completeness:
    """Measure how far each row's sum falls from its score change, relative to that change.

    For an Attribution that records its completeness gap ``delta`` (Integrated Gradients
    does, for every row), the relative gap ``|delta| / |F(x) - F(baseline)|`` per sample and
    class, and which rows exceed ``tol``. Where the score hardly changes along the path
    (``|F(x) - F(baseline)| < floor``) a relative gap would divide by almost nothing; such
    rows are marked ``flat`` and their gap is measured against ``floor`` instead, so that
    rounding noise does not count as a failure but a real gap still does.

    Parameters
    ----------
    attribution
        An :class:`saliency.Attribution` with ``delta``, e.g. from
        :func:`saliency.integrated_gradients`.
    tol
        The largest relative gap that passes (default 1%).
    floor
        The smallest score change to divide by; default ``1e-3`` times the largest absolute
        output of the sample (a scale that follows the model's, for logits or
        probabilities alike).

    Returns
    -------
    Completeness

    Examples
    --------
    >>> import torch, saliency
    >>> from saliency.audit import completeness
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> ig = saliency.integrated_gradients(model, torch.randn(5, 4), steps=2)
    >>> r = completeness(ig, tol=0.01)
    >>> r.relative_gap.shape, r.summary()["rows"]
    (torch.Size([5, 3]), 15)
    >>> fine = saliency.integrated_gradients(model, torch.randn(5, 4), steps=64)
    >>> completeness(fine).exceeds.any()
    tensor(False)
    """
    if not isinstance(attribution, Attribution):
        raise TypeError(
            f"attribution: expected a saliency.Attribution, got {type(attribution).__name__}"
        )
    if attribution.delta is None:
        raise ValueError(
            f"attribution: method {attribution.method!r} records no completeness gap (delta is "
            "None); completeness needs an Attribution with delta, e.g. from "
            "saliency.integrated_gradients"
        )
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not tol >= 0:
        raise ValueError(f"tol: expected a non-negative number, got {tol!r}")
    delta = attribution.delta.detach()
    values = attribution.values.detach()
    if not bool(torch.isfinite(delta).all()) or not bool(torch.isfinite(values).all()):
        bad = ~torch.isfinite(values.flatten(2)).all(-1) | ~torch.isfinite(delta)
        raise ValueError(
            f"attribution: NaN or inf values or delta for samples "
            f"{bad.any(1).nonzero().flatten().tolist()[:8]}"
        )
    work = torch.promote_types(values.dtype, torch.float32)
    delta = delta.to(work)
    change = values.to(work).flatten(2).sum(-1) - delta

    n = values.shape[0]
    if floor is None:
        scale = attribution.outputs.detach().to(device=delta.device, dtype=work).abs()
        floors = 1e-3 * scale.amax(1)
    else:
        if isinstance(floor, bool) or not isinstance(floor, int | float) or not floor > 0:
            raise ValueError(f"floor: expected a positive number or None, got {floor!r}")
        floors = torch.full((n,), float(floor), dtype=work, device=delta.device)
    # A sample whose outputs are all zero has no scale: fall back to the dtype's resolution.
    floors = floors.clamp_min(torch.finfo(work).tiny)

    abs_gap = delta.abs()
    flat = change.abs() < floors[:, None]
    relative = abs_gap / torch.maximum(change.abs(), floors[:, None])
    return Completeness(
        gap=delta,
        abs_gap=abs_gap,
        change=change,
        relative_gap=relative,
        flat=flat,
        exceeds=relative > tol,
        floor=floors,
        classes=attribution.classes,
        tol=float(tol),
    )


RECORDS = (
    MetricRecord(
        name="completeness",
        function=completeness,
        result=Completeness,
        explanation="how far each row's sum falls from its score change F(x) - F(baseline), "
        "relative to that change (Integrated Gradients' completeness axiom)",
        doc="audit/completeness.md",
        columns={
            "gap": None,
            "abs_gap": "lower",
            "change": None,
            "relative_gap": "lower",
            "flat": None,
            "exceeds": None,
            "floor": None,
        },
        needs=("delta",),
        baseline="0 is exact; rows above the tolerance are counted in exceeds",
        faithfulness=True,
    ),
)


def _number(value: torch.Tensor) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None
