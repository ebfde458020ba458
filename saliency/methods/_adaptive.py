"""Adaptive Integrated Gradients: refine only the rows whose completeness gap is still too large.

The gap of a (sample, class) row is exactly the quadrature error of one scalar integral,
``integral_0^1 d/dt F(path(t)) dt = F(x) - F(b)``, so it says when a row needs more points. The
trapezoid rule nests: halving the spacing keeps every point computed so far, and
``T(h / 2) = T(h) / 2 + (h / 2) * sum of f at the new midpoints``. Each round therefore computes
gradients only at the new midpoints, only for the samples with an open row, and only for their
open classes.
"""

from __future__ import annotations

import torch

from .. import targets

__all__ = ["refine"]


def refine(path, integral: torch.Tensor, gap: torch.Tensor, *, tol: float, first: int, cap: int):
    """Refine ``integral`` (the trapezoid estimate of the mean gradient on ``first`` points,
    ``[B, K, *shape]``) in place until every row's relative gap is at most ``tol`` or the rows
    reach ``cap`` points; returns the points each row used, ``[B, K]``."""
    b, k = gap.shape
    used = torch.full((b, k), first, dtype=torch.long)
    # A change this small next to the sample's scores is measured against the floor instead
    # (as saliency.audit.completeness does): relative to almost nothing, any gap is huge.
    floor = 1e-3 * path.req.outputs.abs().amax(1, keepdim=True).clamp_min(1e-30)
    scale = torch.maximum(gap.abs(), floor.to(gap.dtype))
    contrast = isinstance(path.req.classes, targets.Contrast)
    intervals = first - 1
    while True:
        delta = (integral * path.diff.unsqueeze(1)).flatten(2).sum(-1) - gap
        open_ = (delta.abs() > tol * scale).cpu()
        if not bool(open_.any()) or 2 * intervals + 1 > cap:
            return used
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


def _open_columns(open_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the indices of its open columns, padded to one width with a repeat of its
    first open column; and which entries are real."""
    count = open_rows.sum(1)
    width = int(count.max())
    order = torch.argsort((~open_rows).to(torch.int8), dim=1, stable=True)[:, :width]
    valid = torch.arange(width).expand(len(count), width) < count[:, None]
    cols = torch.where(valid, order, order[:, :1])
    return cols, valid
