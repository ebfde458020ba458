"""Attribution maps -> numbers in ``[0, 1]`` (or ``[-1, 1]``): sign, channel reduction, clipping.

Colouring lives in :mod:`saliency.viz.colormaps`; this module only decides which value is "hot".

Examples
--------
>>> import numpy as np
>>> normalize(np.array([[0.0, 1.0], [2.0, 4.0]]), clip=None)
array([[0.  , 0.25],
       [0.5 , 1.  ]], dtype=float32)
>>> normalize(np.array([[-2.0, 1.0]]), sign="all", clip=None)
array([[-1. ,  0.5]], dtype=float32)
"""

from __future__ import annotations

import numpy as np

from saliency.viz.images import channel_axis, to_numpy

__all__ = ["SIGNS", "normalize"]

SIGNS = ("absolute", "positive", "negative", "all")
_REDUCTIONS = ("sum", "abs_sum", "max_abs", None)
_CLIPS = ("percentile", "mass", None)


def normalize(
    values: object,
    *,
    sign: str = "absolute",
    reduce: str | None = "sum",
    clip: str | None = "percentile",
    percentile: float = 99.0,
) -> np.ndarray:
    """Scale attribution maps to ``[0, 1]`` (``[-1, 1]`` for ``sign="all"``), one threshold per map.

    Parameters
    ----------
    values : tensor or array
        One map ``(H, W)``, ``(C, H, W)`` or ``(H, W, C)``, or a batch ``(..., C, H, W)`` /
        ``(..., H, W, C)`` normalised map by map (give a batch of single-channel maps as
        ``(N, 1, H, W)``). C must be 1, 3 or 4; channels first wins when both ends could be.
    sign : {"absolute", "positive", "negative", "all"}
        ``"absolute"`` shows ``|map|``; ``"positive"`` / ``"negative"`` show the magnitude of one
        sign only (the other becomes 0); ``"all"`` keeps the sign, symmetric around zero.
    reduce : {"sum", "abs_sum", "max_abs", None}
        How channels become one map: signed sum, sum of magnitudes, largest magnitude, or ``None``
        to keep the channels (the threshold is then shared by all channels of a map).
    clip : {"percentile", "mass", None}
        How the threshold that becomes 1 is chosen, from the magnitudes left after ``sign``:

        - ``"percentile"``: ``np.percentile(|map|, percentile)`` (PAIR saliency's convention);
        - ``"mass"``: the smallest ``|map|`` value such that the values up to and including it
          hold ``percentile`` % of the total ``|map|`` mass, i.e. the largest values holding the
          remaining share are saturated (Captum's convention with
          ``outlier_perc = 100 - percentile``);
        - ``None``: the largest magnitude (max-abs scaling, nothing saturates).

        Values beyond the threshold saturate at 1 (or -1). When the threshold is 0 but the map is
        not (a sparse map), the largest magnitude is used instead.
    percentile : float
        In ``[0, 100]``; see ``clip``.

    Returns
    -------
    numpy.ndarray
        float32, shape of ``values`` without the channel axis (with it for ``reduce=None``). An
        all-zero map gives all zeros.

    Raises
    ------
    ValueError
        For NaN or inf in ``values``, or an unknown option.
    """
    _check_choice("sign", sign, SIGNS)
    _check_choice("reduce", reduce, _REDUCTIONS)
    _check_choice("clip", clip, _CLIPS)
    if not 0.0 <= float(percentile) <= 100.0:
        raise ValueError(f"percentile={percentile!r}; expected a number in [0, 100]")
    arr = to_numpy(values, "values")
    if arr.ndim < 2:
        raise ValueError(
            f"values has shape {tuple(arr.shape)}; expected a map (H, W), (C, H, W), (H, W, C) "
            "or a batch of them"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    finite = np.isfinite(arr)
    if not finite.all():
        bad = arr.size - int(finite.sum())
        raise ValueError(
            f"values contains {bad} NaN or inf entries out of {arr.size}; expected finite "
            "attributions"
        )

    if arr.ndim == 2:
        maps, map_axes = arr, (-2, -1)
    else:
        axis = channel_axis(arr.shape, "values")
        if reduce is None:
            maps, map_axes = arr, (-3, -2, -1)
        elif reduce == "sum":
            maps, map_axes = arr.sum(axis=axis, dtype=np.float32), (-2, -1)
        elif reduce == "abs_sum":
            maps, map_axes = np.abs(arr).sum(axis=axis, dtype=np.float32), (-2, -1)
        else:
            maps, map_axes = np.abs(arr).max(axis=axis), (-2, -1)
    maps = maps.astype(np.float32, copy=False)

    if sign == "absolute":
        magnitude = np.abs(maps)
    elif sign == "positive":
        magnitude = np.maximum(maps, 0)
    elif sign == "negative":
        magnitude = np.maximum(-maps, 0)
    else:
        magnitude = np.abs(maps)

    threshold = _threshold(magnitude, map_axes, clip, float(percentile))
    if sign == "all":
        return np.clip(maps / threshold, -1.0, 1.0)
    return np.minimum(magnitude / threshold, 1.0)


def _threshold(
    magnitude: np.ndarray, map_axes: tuple[int, ...], clip: str | None, percentile: float
) -> np.ndarray:
    """One positive threshold per map, shaped to broadcast against ``magnitude``."""
    top = magnitude.max(axis=map_axes, keepdims=True)
    if clip == "percentile":
        t = np.percentile(magnitude, percentile, axis=map_axes, keepdims=True)
    elif clip == "mass":
        t = mass_threshold(magnitude, percentile, ndim=len(map_axes))
    else:
        t = top
    t = np.where(t > 0, t, top)
    # An all-zero map divides by 1 and stays zero.
    return np.where(t > 0, t, 1.0).astype(np.float32)


def mass_threshold(magnitude: np.ndarray, percentile: float, ndim: int = 2) -> np.ndarray:
    """Smallest value whose cumulative sum (ascending) reaches ``percentile`` % of the total.

    Thresholds are taken over the last ``ndim`` axes and returned with those axes kept as size 1.

    >>> mass_threshold(np.array([[1.0, 2.0, 3.0, 4.0]]), 60.0, ndim=1)  # 1+2+3 = 6 >= 6
    array([[3.]])
    """
    lead = magnitude.shape[: magnitude.ndim - ndim]
    flat = np.sort(magnitude.reshape(*lead, -1), axis=-1)
    cumulative = np.cumsum(flat, axis=-1, dtype=np.float64)
    target = cumulative[..., -1:] * 0.01 * percentile
    # cumulative is non-decreasing, so counting entries below the target finds the first >= it.
    index = np.minimum((cumulative < target).sum(axis=-1, keepdims=True), flat.shape[-1] - 1)
    t = np.take_along_axis(flat, index, axis=-1)
    return t.reshape(*lead, *([1] * ndim))


def _check_choice(name: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r}; expected one of {choices}")
