"""Adaptive Integrated Gradients: refine only the rows whose completeness gap is still too large.

The gap of a (sample, class) row is exactly the quadrature error of one scalar integral,
``integral_0^1 d/dt F(path(t)) dt = F(x) - F(b)``, so it says when a row needs more points. The
trapezoid rule nests: halving the spacing keeps every point computed so far, and
``T(h / 2) = T(h) / 2 + (h / 2) * sum of f at the new midpoints``. Each round therefore computes
gradients only at the new midpoints, only for the samples with an open row, and only for their
open classes.

A row that cannot reach ``tol`` within ``cap`` points is given up early instead of refined to the
cap. At a jump of ``F`` along the path (a scale-invariant front end at the zero baseline, say)
the gap stops changing; at a singular gradient it halves every round, from far above ``tol``.
Both are regular: the gap shrinks by the same factor round after round. ReLU networks are not
(their gaps jump up and down before they converge), so a row is given up only when its last three
factors agree within 10% and, at that rate, it would still be above ``tol`` with four times
``cap`` points. Every row left above ``tol`` is reported.
"""

from __future__ import annotations

import math

import torch

from .. import targets

__all__ = ["refine"]

_RATE_ROUNDS = 3  # rounds over which a row's rate of convergence is measured
_HOPELESS = 4  # a row predicted to need this many times the cap is given up
_STEADY = 1.1  # the largest and smallest of those rounds' factors agree within this


def refine(
    path, integral: torch.Tensor, gap: torch.Tensor, *, tol: float, first: int, cap: int
) -> tuple[torch.Tensor, dict | None]:
    """Refine ``integral`` (the trapezoid estimate of the mean gradient on ``first`` points,
    ``[B, K, *shape]``) in place until every row's relative gap is at most ``tol``, or reaches
    ``cap`` points, or is given up; returns the points each row used, ``[B, K]``, and a report
    of the rows left above ``tol`` (None when every row converged)."""
    b, k = gap.shape
    used = torch.full((b, k), first, dtype=torch.long)
    # A change this small next to the sample's scores is measured against the floor instead
    # (as saliency.audit.completeness does): relative to almost nothing, any gap is huge.
    floor = 1e-3 * path.req.outputs.abs().amax(1, keepdim=True).clamp_min(1e-30)
    scale = torch.maximum(gap.abs(), floor.to(gap.dtype))
    contrast = isinstance(path.req.classes, targets.Contrast)
    intervals = first - 1
    past: list[torch.Tensor] = []  # the relative gaps of the last rounds
    given_up = torch.zeros(b, k, dtype=torch.bool)
    while True:
        delta = (integral * path.diff.unsqueeze(1)).flatten(2).sum(-1) - gap
        relative = (delta.abs() / scale).cpu().double()
        if len(past) == _RATE_ROUNDS:
            given_up |= (relative > tol) & _hopeless(relative, past, intervals, tol, cap)
            past.pop(0)
        past.append(relative)
        open_ = (relative > tol) & ~given_up
        if not bool(open_.any()) or 2 * intervals + 1 > cap:
            return used, _report(relative, given_up, tol)
        samples = open_.any(1).nonzero().flatten()
        if contrast:  # a contrast's rows are not ids: refine every row of these samples
            cols = torch.arange(k).expand(len(samples), k)
            valid = torch.ones_like(cols, dtype=torch.bool)
            ids = None
        else:
            cols, valid = _open_columns(open_[samples])
            ids = path.req.rows.ids[samples.to(gap.device)].gather(1, cols.to(gap.device))
        h = 1.0 / (2 * intervals)
        alphas = (torch.arange(intervals, dtype=torch.float64) * 2 + 1) * h
        weights = torch.full((intervals,), h, dtype=torch.float64)
        new = path.integral(alphas, weights, samples=samples.to(gap.device), ids=ids)
        rows = samples[:, None].expand_as(cols)[valid]
        cols_valid = cols[valid]
        picked = torch.arange(cols.shape[1]).expand_as(cols)[valid]
        slot = samples.new_zeros(b)
        slot[samples] = torch.arange(len(samples))
        integral[rows, cols_valid] = integral[rows, cols_valid] / 2 + new[slot[rows], picked]
        used[rows, cols_valid] = 2 * intervals + 1
        intervals *= 2


def _hopeless(relative: torch.Tensor, past: list[torch.Tensor], intervals: int, tol, cap):
    """Rows whose gap shrank by one steady factor over the last ``_RATE_ROUNDS`` rounds (``past``
    holds the gaps before them) and, at that factor, would need more than ``_HOPELESS`` times
    ``cap`` points to reach ``tol``."""
    gaps = torch.stack([*past, relative]).clamp_min(1e-300)
    factors = gaps[1:] / gaps[:-1]
    steady = factors.amax(0) <= _STEADY * factors.amin(0)
    rate = factors.log().mean(0).exp()
    rounds = torch.log(tol / relative) / torch.log(rate.clamp_max(1 - 1e-12))
    limit = math.log2(_HOPELESS * (cap - 1) / intervals)
    return steady & ((rate >= 1) | (rounds > limit))


def _report(relative: torch.Tensor, given_up: torch.Tensor, tol: float) -> dict | None:
    missed = relative > tol
    if not bool(missed.any()):
        return None
    return {
        "rows": int(missed.sum()),
        "of": int(missed.numel()),
        "worst_relative_gap": float(relative[missed].max()),
        "stopped_early": int((missed & given_up).sum()),
    }


def _open_columns(open_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the indices of its open columns, padded to one width with a repeat of its
    first open column; and which entries are real."""
    count = open_rows.sum(1)
    width = int(count.max())
    order = torch.argsort((~open_rows).to(torch.int8), dim=1, stable=True)[:, :width]
    valid = torch.arange(width).expand(len(count), width) < count[:, None]
    cols = torch.where(valid, order, order[:, :1])
    return cols, valid
