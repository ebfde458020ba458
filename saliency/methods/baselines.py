"""Integrated Gradients baselines: the reference input each path starts from.

``baseline`` accepts a number, a tensor broadcastable to ``x``, a callable of ``x``, or one of the
names below. Every form becomes a tensor of ``x``'s shape, dtype and device.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.nn import functional as F

__all__ = ["NAMED", "blur", "make_baseline", "uniform"]

NAMED = ("zeros", "blur", "uniform")


def blur(x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """Gaussian blur of images ``[B, C, H, W]``, each channel on its own.

    ``sigma`` (pixels) defaults to ``max(H, W) / 10``; the kernel spans ``3 sigma`` each side and
    edges are padded by replication. Other ranks are refused: what "blurred" means for tabular
    features or token embeddings is a modelling choice, so pass a baseline of your own there.

    Examples
    --------
    >>> import torch
    >>> x = torch.zeros(1, 1, 9, 9)
    >>> x[0, 0, 4, 4] = 1
    >>> b = blur(x, sigma=1.0)
    >>> b.shape, round(float(b.sum()), 4), bool(b[0, 0, 4, 4] < 1)
    (torch.Size([1, 1, 9, 9]), 1.0, True)
    """
    if x.ndim != 4:
        raise ValueError(
            f"baseline='blur': expected images [B, C, H, W], got x of shape {tuple(x.shape)}; "
            "for other inputs pass a number, 'zeros', 'uniform', a tensor or a callable"
        )
    b, c, h, w = x.shape
    if sigma is None:
        sigma = max(h, w) / 10
    if not sigma > 0:
        raise ValueError(f"sigma: expected a positive number of pixels, got {sigma!r}")
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    y = x.detach().reshape(b * c, 1, h, w)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    return y.reshape(b, c, h, w)


def uniform(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform noise in each sample's value range ``[min, max]``."""
    flat = x.detach().flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    shape = (-1,) + (1,) * (x.ndim - 1)
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return lo.view(shape) + (hi - lo).view(shape) * u


def make_baseline(
    baseline: float | str | torch.Tensor | Callable,
    x: torch.Tensor,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The baseline as a tensor of ``x``'s shape (a broadcast view where possible)."""
    if isinstance(baseline, str):
        if baseline == "zeros":
            return torch.zeros_like(x)
        if baseline == "blur":
            return blur(x)
        if baseline == "uniform":
            if generator is None:
                generator = torch.Generator(x.device)
                generator.seed()
            return uniform(x, generator)
        raise ValueError(
            f"baseline: expected a number, a tensor, a callable or one of {list(NAMED)}, "
            f"got {baseline!r}"
        )
    if isinstance(baseline, bool):
        raise TypeError(f"baseline: expected a number, not the bool {baseline!r}")
    if isinstance(baseline, int | float):
        return torch.full_like(x, float(baseline))
    value = baseline
    if callable(baseline):
        value = baseline(x.detach())
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"baseline: the callable must return a tensor, got {type(value).__name__}"
            )
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"baseline: expected a number, a tensor, a callable or one of {list(NAMED)}, "
            f"got {type(baseline).__name__}"
        )
    try:
        ok = torch.broadcast_shapes(value.shape, x.shape) == x.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"baseline: shape {tuple(value.shape)} cannot broadcast to x's shape {tuple(x.shape)}"
        )
    return value.detach().to(dtype=x.dtype, device=x.device).expand_as(x)
