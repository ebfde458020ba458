"""Model inputs as pictures: undo the normalisation, and enlarge small inputs to be legible.

Examples
--------
>>> import torch
>>> x = (torch.rand(2, 1, 8, 8) - 0.3) / 0.4          # digits, normalised as the model saw them
>>> pictures = input_pictures(x, mean=0.3, std=0.4)
>>> float(pictures.min()) >= 0.0 and float(pictures.max()) <= 1.0
True
>>> enlarge(pictures).shape                            # 8 x 8 -> 96 x 96, pixels stay crisp
torch.Size([2, 1, 96, 96])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["enlarge", "input_pictures"]


def input_pictures(
    x: torch.Tensor,
    *,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
) -> torch.Tensor:
    """Images ``[B, C, H, W]`` in ``[0, 1]`` from model inputs normalised as ``(x - mean) / std``.

    ``mean`` and ``std`` (one value, or one per channel) are undone first; then each picture is
    stretched to ``[0, 1]`` by its own minimum and maximum, so inputs of any range can be drawn
    (a constant picture becomes black).
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(
            f"x: expected images [B, C, H, W] as a tensor, got "
            f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
        )
    raw = x.detach().float().cpu()
    for values, name in ((std, "std"), (mean, "mean")):
        if values is None:
            continue
        stats = torch.as_tensor(values, dtype=raw.dtype).reshape(-1)
        if stats.numel() not in (1, raw.shape[1]):
            raise ValueError(
                f"{name}: expected 1 value or one per channel ({raw.shape[1]}), got {stats.numel()}"
            )
        stats = stats.view(1, -1, 1, 1)
        raw = raw * stats if name == "std" else raw + stats
    lo = raw.amin(dim=(1, 2, 3), keepdim=True)
    hi = raw.amax(dim=(1, 2, 3), keepdim=True)
    return (raw - lo) / (hi - lo).clamp_min(1e-12)


def enlarge(images: torch.Tensor, min_size: int = 96) -> torch.Tensor:
    """Enlarge images ``[..., H, W]`` by a whole factor (nearest neighbour) to at least
    ``min_size`` pixels wide; larger images are returned as they are."""
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
        raise ValueError(f"min_size: expected a positive int, got {min_size!r}")
    factor = max(1, -(-min_size // images.shape[-1]))
    if factor == 1:
        return images
    return images.repeat_interleave(factor, -1).repeat_interleave(factor, -2)
