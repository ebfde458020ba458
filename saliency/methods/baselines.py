"""Integrated Gradients baselines: the reference input each path starts from.

``baseline`` accepts a number, a tensor broadcastable to ``x``, a callable of ``x``, or one of the
names below. Every form becomes a tensor of ``x``'s shape, dtype and device.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.nn import functional as F

__all__ = ["NAMED", "blur", "make_baseline", "make_layer_baseline", "uniform"]

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
    *,
    name: str = "baseline",
    extra: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> torch.Tensor:
    """A reference input of ``x``'s shape (a broadcast view where possible): a number, a tensor
    broadcastable to ``x``, a callable of ``x``, or a name (:data:`NAMED`, plus ``extra``).

    ``name`` is the argument's name in error messages (the audits read their substrates here).
    """
    named = {**dict.fromkeys(NAMED), **(extra or {})}
    if isinstance(baseline, str):
        if baseline in (extra or {}):
            return extra[baseline](x)
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
            f"{name}: expected a number, a tensor, a callable or one of {list(named)}, "
            f"got {baseline!r}"
        )
    if isinstance(baseline, bool):
        raise TypeError(f"{name}: expected a number, not the bool {baseline!r}")
    if isinstance(baseline, int | float):
        return torch.full_like(x, float(baseline))
    value = baseline
    if callable(baseline):
        value = baseline(x.detach())
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"{name}: the callable must return a tensor, got {type(value).__name__}"
            )
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name}: expected a number, a tensor, a callable or one of {list(named)}, "
            f"got {type(baseline).__name__}"
        )
    try:
        ok = torch.broadcast_shapes(value.shape, x.shape) == x.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name}: shape {tuple(value.shape)} cannot broadcast to x's shape {tuple(x.shape)}"
        )
    return value.detach().to(dtype=x.dtype, device=x.device).expand_as(x)


def make_layer_baseline(
    baseline: float | str | torch.Tensor | Callable,
    req,
    point: torch.Tensor,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The start of a path in a layer's output space, ``point``'s shape.

    ``baseline`` is an input (a number, a name, a tensor broadcastable to ``x``, or a callable of
    ``x``) whose layer output starts the path, or a floating tensor broadcastable to the layer's
    output (``point``), used as the start itself. For integer ``x`` (token ids), a number must be
    an int id (say, the pad id).
    """
    x = req.x
    if callable(baseline) and not isinstance(baseline, torch.Tensor):
        baseline = baseline(x)
        if not isinstance(baseline, torch.Tensor):
            raise TypeError(
                f"baseline: the callable must return a tensor, got {type(baseline).__name__}"
            )
    if isinstance(baseline, torch.Tensor):
        if baseline.is_floating_point() == x.is_floating_point() and _fits(baseline, x):
            return _layer_of(req, baseline.to(device=x.device, dtype=x.dtype).expand_as(x))
        if baseline.is_floating_point() and _fits(baseline, point):
            return baseline.detach().to(dtype=point.dtype, device=point.device).expand_as(point)
        raise ValueError(
            f"baseline: a tensor of shape {tuple(baseline.shape)} and dtype {baseline.dtype} is "
            f"neither an input like x ({tuple(x.shape)}, {x.dtype}) nor a layer output like "
            f"{tuple(point.shape)} (floating)"
        )
    if not x.is_floating_point():
        if isinstance(baseline, bool) or not isinstance(baseline, int):
            raise ValueError(
                f"baseline: x holds integer ids, so a baseline is an id (say, the pad id), a "
                f"tensor of ids, or a floating tensor of the layer's output shape "
                f"{tuple(point.shape)}; got {baseline!r}"
            )
        return _layer_of(req, torch.full_like(x, baseline))
    return _layer_of(req, make_baseline(baseline, x, generator))


def _layer_of(req, inputs: torch.Tensor) -> torch.Tensor:
    """The layer's output when the model runs on ``inputs`` (with the request's kwargs)."""
    return req.layer_output(inputs.contiguous())


def _fits(value: torch.Tensor, like: torch.Tensor) -> bool:
    try:
        return torch.broadcast_shapes(value.shape, like.shape) == like.shape
    except RuntimeError:
        return False
