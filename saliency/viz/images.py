"""Turn whatever the user holds (tensor or array, channels first or last, any value range) into
``uint8`` RGB pixels, once, at the door of every picture function.

Examples
--------
>>> import torch
>>> to_rgb(torch.zeros(1, 4, 5)).shape  # grayscale, channels first
(4, 5, 3)
>>> to_rgb(torch.full((3, 2, 2), -1.0), mean=[0.5] * 3, std=[0.5] * 3)[0, 0]  # undo (x - 0.5) / 0.5
array([0, 0, 0], dtype=uint8)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["channel_axis", "image_maps", "to_numpy", "to_rgb", "to_rgb_batch"]

# Channel counts we recognise: grayscale, RGB, RGBA.
_CHANNEL_COUNTS = (1, 3, 4)


def to_numpy(x: object, name: str) -> np.ndarray:
    """``x`` as a numpy array without copying more than needed (tensors are detached first)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.numpy()
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a tensor or an array; got {type(x).__name__}") from e
    if arr.dtype == object:
        raise TypeError(f"{name} must be a numeric tensor or array; got {type(x).__name__}")
    return arr


def channel_axis(shape: tuple[int, ...], name: str) -> int:
    """Which of the last three axes of ``shape`` holds channels: -3 (channels first) or -1.

    Channels first wins when both ends look like channels, because that is how models see inputs.
    """
    if shape[-3] in _CHANNEL_COUNTS:
        return -3
    if shape[-1] in _CHANNEL_COUNTS:
        return -1
    raise ValueError(
        f"{name} has shape {tuple(shape)}; expected (C, H, W) or (H, W, C) with C in "
        f"{_CHANNEL_COUNTS} in its last three axes"
    )


def to_rgb(
    image: object,
    *,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """One image as ``(H, W, 3)`` uint8 RGB.

    ``image`` is ``(H, W)``, ``(C, H, W)`` or ``(H, W, C)`` with C in 1 (grayscale), 3 (RGB) or 4
    (RGBA, alpha dropped). ``mean`` and ``std`` undo ``(x - mean) / std`` per channel. The value
    range is ``value_range`` if given, else ``[0, 255]`` for uint8 or when the maximum exceeds 1,
    else ``[0, 1]``.
    """
    arr = to_numpy(image, "image")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.ndim == 3:
        if channel_axis(arr.shape, "image") == -3:
            arr = np.moveaxis(arr, 0, -1)
    else:
        raise ValueError(
            f"image has shape {tuple(arr.shape)}; expected (H, W), (C, H, W) or (H, W, C)"
        )
    return _pixels(arr, mean, std, value_range, "image")


def to_rgb_batch(
    images: object,
    *,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """A batch of images as ``(N, H, W, 3)`` uint8 RGB.

    ``images`` is ``(N, C, H, W)``, ``(N, H, W, C)``, ``(N, H, W)`` (grayscale) or a list of single
    images of one size. The value range is detected once for the whole batch (see :func:`to_rgb`).
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("images is empty; expected at least one image")
        singles = []
        for img in images:
            arr = to_numpy(img, "images")
            if arr.ndim == 2:
                arr = arr[:, :, None]
            elif arr.ndim == 3 and channel_axis(arr.shape, "images") == -3:
                arr = np.moveaxis(arr, 0, -1)
            elif arr.ndim != 3:
                raise ValueError(
                    f"images holds an image of shape {tuple(arr.shape)}; expected (H, W), "
                    "(C, H, W) or (H, W, C)"
                )
            singles.append(arr)
        shapes = {a.shape for a in singles}
        if len(shapes) > 1:
            raise ValueError(f"images have different shapes {sorted(shapes)}; expected one size")
        arr = np.stack(singles)
    else:
        arr = to_numpy(images, "images")
        if arr.ndim == 3:
            arr = arr[..., None]
        elif arr.ndim == 4:
            if channel_axis(arr.shape, "images") == -3:
                arr = np.moveaxis(arr, 1, -1)
        else:
            raise ValueError(
                f"images has shape {tuple(arr.shape)}; expected (N, C, H, W), (N, H, W, C), "
                "(N, H, W) or a list of images"
            )
    return _pixels(arr, mean, std, value_range, "images")


def _pixels(
    arr: np.ndarray,
    mean: float | Sequence[float] | None,
    std: float | Sequence[float] | None,
    value_range: tuple[float, float] | None,
    name: str,
) -> np.ndarray:
    """Channels-last array (..., H, W, C) -> uint8 (..., H, W, 3)."""
    channels = arr.shape[-1]
    if channels == 4:
        arr = arr[..., :3]
        channels = 3
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if mean is not None or std is not None:
        arr = arr.astype(np.float32) * _per_channel(std, 1.0, channels, "std")
        arr = arr + _per_channel(mean, 0.0, channels, "mean")
    if value_range is not None:
        lo, hi = (float(v) for v in value_range)
        if not hi > lo:
            raise ValueError(f"value_range={value_range!r}; expected (low, high) with low < high")
    elif arr.dtype == np.uint8:
        lo, hi = 0.0, 255.0
    else:
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or inf; expected finite pixel values")
        top = float(arr.max()) if arr.size else 0.0
        lo, hi = (0.0, 255.0) if top > 1.0 else (0.0, 1.0)
        if arr.size and float(arr.min()) < lo - 0.05 * (hi - lo):
            warnings.warn(
                f"{name} has values down to {float(arr.min()):.3g}, below the detected range "
                f"[{lo:g}, {hi:g}]; pass mean= and std= to undo normalisation, or value_range=",
                stacklevel=3,
            )
    if arr.dtype == np.uint8 and (lo, hi) == (0.0, 255.0):
        out = arr
    else:
        scaled = (arr.astype(np.float32) - lo) * np.float32(255.0 / (hi - lo)) + np.float32(0.5)
        out = np.clip(scaled, 0, 255).astype(np.uint8)
    if channels == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out)


def _per_channel(
    value: float | Sequence[float] | None, default: float, channels: int, name: str
) -> np.ndarray:
    if value is None:
        return np.float32(default)
    vec = np.asarray(value, dtype=np.float32).reshape(-1)
    if vec.size not in (1, channels):
        raise ValueError(
            f"{name} has {vec.size} entries ({value!r}); expected 1 or one per channel ({channels})"
        )
    return vec


def image_maps(values: np.ndarray) -> np.ndarray:
    """Attribution values ``[B, K, H, W]``, ``[B, K, C, H, W]`` or ``[B, K, H, W, C]`` -> 5-D."""
    if values.ndim == 4:
        return values[:, :, None]
    if values.ndim == 5:
        channel_axis(values.shape, "attribution.values")
        return values
    raise ValueError(
        f"attribution.values has shape {tuple(values.shape)}; expected image maps "
        "[B, K, C, H, W] or [B, K, H, W]"
    )
