"""Clipping thresholds of attribution maps: a percentile of |map|, or a share of its mass.

Both are exact, but neither sorts a whole large map: a fixed random sample of each map bounds
where the threshold lies, and only the values above that bound are sorted (a few percent of the
map for the usual 98-99.9 %). When the bound turns out too high, the whole map is sorted.

Examples
--------
>>> import numpy as np
>>> x = np.array([[1.0, 2.0, 3.0, 4.0]])
>>> percentile_threshold(x, 50.0)  # as np.percentile: between 2 and 3
array([2.5])
>>> mass_threshold(x, 60.0)  # 1 + 2 + 3 = 6 is the first running sum >= 60 % of 10
array([3.])
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["full_colour", "mass_threshold", "percentile_threshold"]

_SAMPLE = 2048  # sample size per map; maps up to 4x this are simply sorted
_MARGIN = 0.03  # how far below the sample's estimate the bound goes (about 8 standard errors)


def percentile_threshold(magnitude: np.ndarray, percentile: float) -> np.ndarray:
    """``np.percentile(row, percentile)`` (linear interpolation) of every row of a 2-D array."""
    return _per_row(magnitude, percentile, _percentile_sorted, _percentile_tail)


def full_colour(values: np.ndarray, percentile: float = 99.0) -> float:
    """The magnitude drawn at full colour for ``values``: the ``percentile`` of ``|values|``, or
    their largest magnitude when that is 0 (or 1 for an all-zero map, a valid picture)."""
    magnitude = np.abs(np.asarray(values, dtype=np.float64)).reshape(1, -1)
    t = float(percentile_threshold(magnitude, percentile)[0])
    return t if t > 0 else (float(magnitude.max()) or 1.0)


def mass_threshold(magnitude: np.ndarray, percentile: float) -> np.ndarray:
    """For every row of a non-negative 2-D array: the first value, in ascending order, at which
    the running sum reaches ``percentile`` % of the row's total (Captum's
    ``_cumulative_sum_threshold``, with sums in float64)."""
    return _per_row(magnitude, percentile, _mass_sorted, _mass_tail)


def _per_row(magnitude, percentile, on_sorted, on_tail) -> np.ndarray:
    rows, n = magnitude.shape
    if n <= 4 * _SAMPLE:
        return on_sorted(np.sort(magnitude, axis=1), percentile)
    sample = np.sort(magnitude[:, _sample_index(n)], axis=1)
    out = np.empty(rows, dtype=np.float64)
    for r in range(rows):
        t = on_tail(magnitude[r], sample[r], percentile)
        out[r] = on_sorted(np.sort(magnitude[r])[None], percentile)[0] if t is None else t
    return out


@functools.lru_cache(maxsize=8)
def _sample_index(n: int) -> np.ndarray:
    index = np.sort(np.random.default_rng(0).choice(n, _SAMPLE, replace=False))
    index.setflags(write=False)
    return index


def _percentile_sorted(ordered: np.ndarray, percentile: float) -> np.ndarray:
    n = ordered.shape[1]
    below, frac = _position(percentile, n)
    return _lerp(ordered[:, below], ordered[:, min(below + 1, n - 1)], frac)


def _percentile_tail(row: np.ndarray, sample: np.ndarray, percentile: float) -> float | None:
    n = row.size
    bound = sample[int(max(0.0, percentile / 100.0 - _MARGIN) * (sample.size - 1))]
    tail = np.sort(row[row >= bound])
    start = n - tail.size  # ascending index of tail[0] in the whole sorted row
    below, frac = _position(percentile, n)
    if below < start:
        return None
    return float(_lerp(tail[below - start], tail[min(below + 1, n - 1) - start], frac))


def _mass_sorted(ordered: np.ndarray, percentile: float) -> np.ndarray:
    running = np.cumsum(ordered, axis=1, dtype=np.float64)
    target = running[:, -1:] * 0.01 * percentile
    # The running sum never decreases, so counting sums below the target finds the first >= it.
    index = np.minimum((running < target).sum(axis=1), ordered.shape[1] - 1)
    return ordered[np.arange(len(ordered)), index].astype(np.float64)


def _mass_tail(row: np.ndarray, sample: np.ndarray, percentile: float) -> float | None:
    # Where the threshold sits in the sample's own running sum says where to cut the row.
    running = np.cumsum(sample, dtype=np.float64)
    guess = int(np.searchsorted(running, running[-1] * 0.01 * percentile))
    bound = sample[max(0, guess - int(_MARGIN * sample.size) - 1)]
    tail = np.sort(row[row >= bound])
    tail_running = np.cumsum(tail, dtype=np.float64)
    total = float(np.sum(row, dtype=np.float64))
    target = total * 0.01 * percentile
    below = total - tail_running[-1]  # running sum just before the tail
    if below >= target:  # the threshold lies under the bound
        return None
    index = min(int(np.searchsorted(below + tail_running, target)), tail.size - 1)
    return float(tail[index])


def _position(percentile: float, n: int) -> tuple[int, float]:
    position = percentile / 100.0 * (n - 1)
    below = int(np.floor(position))
    return below, position - below


def _lerp(a, b, frac: float):
    # numpy's percentile interpolation: from the nearer end, so that both ends are exact.
    return a + (b - a) * frac if frac < 0.5 else b - (b - a) * (1.0 - frac)
