"""256-entry uint8 colour lookup tables, built once per colour map from matplotlib's named maps.

Examples
--------
>>> import numpy as np
>>> colorize(np.array([[0.0, 1.0]]), "gray").tolist()
[[[0, 0, 0], [255, 255, 255]]]
>>> colorize(np.zeros((1, 1)), "bwr", signed=True).tolist()  # zero is the neutral middle
[[[255, 255, 255]]]
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["DIVERGING", "SEQUENTIAL", "blend_table", "colorize", "lookup_table"]

SEQUENTIAL = "inferno"
DIVERGING = "bwr"


@functools.lru_cache(maxsize=32)
def lookup_table(cmap: str, signed: bool = False) -> np.ndarray:
    """``(256, 3)`` uint8 colours of the matplotlib colour map named ``cmap`` (read-only, cached).

    For ``signed`` tables entries 127 and 128 are both the map's middle colour, so that zero maps
    to the neutral colour whichever way it rounds; entry 0 is the map's low end and 255 its top.
    """
    import matplotlib

    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(
            f"cmap={cmap!r} is not a matplotlib colour map name; expected e.g. "
            f"{SEQUENTIAL!r}, {DIVERGING!r}, 'viridis', 'hot' or 'RdBu_r'"
        ) from None
    if signed:
        # An odd-sized resampling has an entry exactly at 0.5 (matplotlib's own 256 has not).
        colormap = colormap.resampled(511)
        half = np.linspace(0.0, 0.5, 128)
        positions = np.concatenate([half, 0.5 + half])
    else:
        positions = np.linspace(0.0, 1.0, 256)
    rgb = colormap(positions)[:, :3]
    table = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
    table.setflags(write=False)
    return table


@functools.lru_cache(maxsize=32)
def blend_table(cmap: str, signed: bool, weight: int) -> np.ndarray:
    """``(65536, 3)`` uint8: entry ``heat * 256 + luma`` is colour ``heat`` of ``cmap`` blended
    over gray ``luma`` with weight ``weight / 256`` (rounded to nearest). Read-only, cached."""
    colours = lookup_table(cmap, signed).astype(np.uint16)[:, None, :] * np.uint16(weight)
    gray = np.arange(256, dtype=np.uint16)[None, :, None] * np.uint16(256 - weight)
    table = ((colours + gray + np.uint16(128)) >> np.uint16(8)).astype(np.uint8).reshape(-1, 3)
    table.setflags(write=False)
    return table


def colorize(normalized: np.ndarray, cmap: str, *, signed: bool = False) -> np.ndarray:
    """Map values in ``[0, 1]`` (``[-1, 1]`` if ``signed``) to uint8 RGB, shape ``(..., 3)``."""
    table = lookup_table(cmap, signed)
    if signed:
        scaled = (np.asarray(normalized, dtype=np.float32) + np.float32(1.0)) * np.float32(127.5)
    else:
        scaled = np.asarray(normalized, dtype=np.float32) * np.float32(255.0)
    index = np.clip(scaled + np.float32(0.5), 0, 255).astype(np.uint8)
    return table[index]
