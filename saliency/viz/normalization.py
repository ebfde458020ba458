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
from saliency.viz.thresholds import mass_threshold, percentile_threshold

__all__ = ["SIGNS", "check_options", "normalize", "scaled_maps"]

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
    maps, threshold = scaled_maps(
        values, sign=sign, reduce=reduce, clip=clip, percentile=percentile
    )
    if sign == "all":
        return np.clip(maps / threshold, -1.0, 1.0)
    return np.minimum(maps / threshold, 1.0)


def scaled_maps(
    values: object,
    *,
    sign: str = "absolute",
    reduce: str | None = "sum",
    clip: str | None = "percentile",
    percentile: float = 99.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The maps :func:`normalize` divides, and the per-map thresholds it divides them by.

    The maps are float32: signed for ``sign="all"``, magnitudes otherwise; the thresholds are
    positive float32 with the map axes kept as size 1. Colouring uses these directly to fold the
    division into its index computation.
    """
    check_options(sign=sign, reduce=reduce, clip=clip, percentile=percentile)
    arr = to_numpy(values, "values")
    if arr.ndim < 2:
        raise ValueError(
            f"values has shape {tuple(arr.shape)}; expected a map (H, W), (C, H, W), (H, W, C) "
            "or a batch of them"
        )
    if arr.dtype != np.float32:
        arr = arr.astype(np.float32)

    if arr.ndim == 2 or reduce is None:
        maps = arr
        map_ndim = 2 if arr.ndim == 2 else 3
        if arr.ndim > 2:
            channel_axis(arr.shape, "values")
    else:
        axis = channel_axis(arr.shape, "values")
        channels = [
            arr[..., i, :, :] if axis == -3 else arr[..., i] for i in range(arr.shape[axis])
        ]
        if reduce != "sum":
            channels = [np.abs(c) for c in channels]
        combine = np.maximum if reduce == "max_abs" else np.add
        maps = channels[0].copy()
        for c in channels[1:]:
            combine(maps, c, out=maps)
        map_ndim = 2
    # NaN and inf survive every reduction, so checking the (smaller) reduced maps suffices.
    finite = np.isfinite(maps)
    if not finite.all():
        bad = int(np.isnan(arr).sum() + np.isinf(arr).sum())
        raise ValueError(
            f"values contains {bad} NaN or inf entries out of {arr.size}; expected finite "
            "attributions"
        )

    if sign in ("absolute", "all"):
        magnitude = np.abs(maps)
    elif sign == "positive":
        magnitude = np.maximum(maps, 0)
    else:
        magnitude = np.maximum(-maps, 0)
    threshold = _threshold(magnitude, map_ndim, clip, float(percentile))
    return (maps if sign == "all" else magnitude), threshold


def _threshold(magnitude: np.ndarray, map_ndim: int, clip: str | None, percentile: float):
    """One positive threshold per map, with the map axes kept as size 1."""
    lead = magnitude.shape[: magnitude.ndim - map_ndim]
    flat = magnitude.reshape(-1, int(np.prod(magnitude.shape[-map_ndim:])))
    top = flat.max(axis=1)
    if clip == "percentile":
        t = percentile_threshold(flat, percentile)
    elif clip == "mass":
        t = mass_threshold(flat, percentile)
    else:
        t = top
    t = np.where(t > 0, t, top)
    # An all-zero map divides by 1 and stays zero.
    t = np.where(t > 0, t, 1.0).astype(np.float32)
    return t.reshape(*lead, *([1] * map_ndim))


def check_options(
    *,
    sign: str = "absolute",
    reduce: str | None = "sum",
    clip: str | None = "percentile",
    percentile: float = 99.0,
) -> None:
    """Raise ValueError naming the first of these :func:`normalize` options that is invalid."""
    _check_choice("sign", sign, SIGNS)
    _check_choice("reduce", reduce, _REDUCTIONS)
    _check_choice("clip", clip, _CLIPS)
    if not 0.0 <= float(percentile) <= 100.0:
        raise ValueError(f"percentile={percentile!r}; expected a number in [0, 100]")


def _check_choice(name: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r}; expected one of {choices}")
