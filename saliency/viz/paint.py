"""Array work behind every picture, for whole batches at once: colour indices, blending.

Maps become uint8 indices into a 256-entry colour table in one pass (the division by each map's
threshold is folded in); over a grayscale background, colour and blend are one lookup in a
``(256 x 256)`` table of finished colours indexed by (heat, luma).

Examples
--------
>>> import numpy as np
>>> images = np.zeros((2, 4, 4, 3), dtype=np.uint8)
>>> overlay_pixels(images, np.random.rand(2, 3, 1, 4, 4)).shape  # 2 images, 3 maps each
(2, 3, 4, 4, 3)
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from saliency.viz.colormaps import DIVERGING, SEQUENTIAL, blend_table, lookup_table
from saliency.viz.normalization import scaled_maps

__all__ = ["backgrounds", "color_indices", "heat_pixels", "overlay_pixels", "paint"]


def color_indices(
    values: object,
    *,
    sign: str = "absolute",
    reduce: str | None = "sum",
    clip: str | None = "percentile",
    percentile: float = 99.0,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """uint8 colour-table indices ``(..., H, W)`` of maps, as :func:`~saliency.viz.normalize`
    scales them (0 -> 0 and 1 -> 255; for ``sign="all"``, -1 -> 0, 0 -> 128 and 1 -> 255).

    ``size`` is an ``(H, W)`` to resize the normalised maps to (bilinear) first.
    """
    if reduce is None:
        raise ValueError("reduce=None keeps channels, but a heat map needs one value per pixel")
    maps, threshold = scaled_maps(
        values, sign=sign, reduce=reduce, clip=clip, percentile=percentile
    )
    signed = sign == "all"
    if size is not None and tuple(maps.shape[-2:]) != tuple(size):
        maps = _resize(np.clip(maps / threshold, -1.0 if signed else 0.0, 1.0), size)
        threshold = np.float32(1.0)
    if signed:
        scaled = maps * (np.float32(127.5) / threshold)
        scaled += np.float32(128.0)
        np.clip(scaled, 0.0, 255.0, out=scaled)
    else:
        scaled = maps * (np.float32(255.0) / threshold)
        scaled += np.float32(0.5)
        np.minimum(scaled, 255.0, out=scaled)
    return scaled.astype(np.uint8)


def backgrounds(images: np.ndarray, grayscale: bool = True) -> np.ndarray:
    """What heat is blended over: luma ``(N, H, W)`` (ITU-R 601, as PIL's ``convert("L")``) of
    uint8 RGB ``(N, H, W, 3)`` images, or the images themselves if not ``grayscale``."""
    if not grayscale:
        return images
    return np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in images])


def paint(
    indices: np.ndarray,
    background: np.ndarray | None = None,
    *,
    cmap: str | None = None,
    signed: bool = False,
    alpha: float = 0.5,
) -> np.ndarray:
    """uint8 RGB ``(..., H, W, 3)``: colour ``indices`` and blend them over ``background``.

    ``background`` is luma ``(..., H, W)`` or RGB ``(..., H, W, 3)`` broadcastable against
    ``indices``, or None for the heat map alone. ``alpha`` is the heat's weight, in 1/256 steps.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha={alpha!r}; expected a number in [0, 1]")
    if cmap is None:
        cmap = DIVERGING if signed else SEQUENTIAL
    weight = round(float(alpha) * 256)
    if background is None:
        return np.take(lookup_table(cmap, signed), indices, axis=0)
    if background.ndim == indices.ndim:  # luma: one lookup of finished colours
        index = indices.astype(np.uint16) << np.uint16(8)
        index |= background
        return np.take(blend_table(cmap, signed, weight), index, axis=0)
    heat = np.take(lookup_table(cmap, signed), indices, axis=0)
    blended = heat.astype(np.uint16) * np.uint16(weight)
    blended += background.astype(np.uint16) * np.uint16(256 - weight) + np.uint16(128)
    blended >>= 8
    return blended.astype(np.uint8)


def heat_pixels(values: object, *, cmap: str | None = None, **normalize_args: object) -> np.ndarray:
    """Coloured maps, uint8 ``(..., H, W, 3)``; ``normalize_args`` as for :func:`color_indices`."""
    indices = color_indices(values, **normalize_args)
    return paint(indices, cmap=cmap, signed=normalize_args.get("sign") == "all")


def overlay_pixels(
    images: np.ndarray,
    values: object,
    *,
    alpha: float = 0.5,
    grayscale_background: bool = True,
    cmap: str | None = None,
    **normalize_args: object,
) -> np.ndarray:
    """Maps blended over uint8 RGB images ``(N, H, W, 3)``.

    ``values`` holds one map per image ``(N, ...)``, or K maps per image ``(N, K, ...)``, each
    image then shared by its K maps (result ``(N, K, H, W, 3)``).
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha={alpha!r}; expected a number in [0, 1]")
    indices = color_indices(values, size=images.shape[-3:-1], **normalize_args)
    background = backgrounds(images, grayscale_background)
    extra = indices.ndim - (background.ndim - (0 if grayscale_background else 1))
    background = background.reshape(background.shape[:1] + (1,) * extra + background.shape[1:])
    return paint(
        indices,
        background,
        cmap=cmap,
        signed=normalize_args.get("sign") == "all",
        alpha=alpha,
    )


def _resize(norm: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    lead = norm.shape[:-2]
    flat = norm.reshape(-1, *norm.shape[-2:])
    out = np.empty((flat.shape[0], *size), dtype=np.float32)
    for i, m in enumerate(flat):
        picture = Image.fromarray(np.ascontiguousarray(m, dtype=np.float32), mode="F")
        out[i] = np.asarray(picture.resize((size[1], size[0]), Image.Resampling.BILINEAR))
    return out.reshape(*lead, *size)
