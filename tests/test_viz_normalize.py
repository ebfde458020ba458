"""Tests for ``saliency.viz.normalize``: thresholds by hand and against Captum, sign, channels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr._utils.visualization import _cumulative_sum_threshold, _normalize_attr

from saliency.viz import normalize
from saliency.viz.thresholds import mass_threshold, percentile_threshold


def test_percentile_threshold_matches_hand_computation() -> None:
    # |map| = 0..9; the 50th percentile (linear interpolation) is 4.5, so 4.5 and up saturate.
    values = np.arange(10, dtype=np.float32).reshape(2, 5)
    out = normalize(values, clip="percentile", percentile=50.0)
    np.testing.assert_allclose(out.ravel(), np.minimum(np.arange(10) / 4.5, 1.0), rtol=1e-6)


def test_mass_threshold_matches_hand_computation() -> None:
    # Sorted |map| = 1, 2, 3, 4 (total 10). 60 % of the mass is 6 = 1 + 2 + 3, reached at 3;
    # 61 % (6.1) is first reached at 4.
    values = np.array([[4.0, -1.0], [3.0, 2.0]])
    np.testing.assert_allclose(
        normalize(values, clip="mass", percentile=60.0), [[1.0, 1 / 3], [1.0, 2 / 3]], rtol=1e-6
    )
    np.testing.assert_allclose(
        normalize(values, clip="mass", percentile=61.0), [[1.0, 0.25], [0.75, 0.5]], rtol=1e-6
    )


def test_mass_threshold_matches_captum_convention() -> None:
    rng = np.random.default_rng(0)
    for trial in range(20):
        mag = np.abs(rng.standard_normal((7, 9)) ** 3)
        perc = float(rng.uniform(50, 100)) if trial else 98.0
        ours = mass_threshold(mag.reshape(1, -1), perc)[0]
        assert ours == _cumulative_sum_threshold(mag, perc)


def _large_maps() -> np.ndarray:
    """Rows of 100x100 maps that stress the sampled bound: smooth, heavy-tailed, sparse, ties."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:100, :100]
    smooth = np.exp(-((yy - 30.0) ** 2 + (xx - 60.0) ** 2) / 300.0)
    heavy = np.abs(rng.standard_cauchy((100, 100)))
    sparse = np.zeros((100, 100))
    sparse[rng.integers(0, 100, 50), rng.integers(0, 100, 50)] = rng.random(50)
    ties = np.round(rng.random((100, 100)) * 4) / 4
    one_spike = np.full((100, 100), 1e-3)
    one_spike[5, 5] = 1e6  # all the mass in one value
    return np.stack([smooth, heavy, sparse, ties, one_spike]).reshape(5, -1).astype(np.float32)


@pytest.mark.parametrize("percentile", [0.0, 50.0, 90.0, 98.0, 99.0, 99.9, 100.0])
def test_sampled_thresholds_of_large_maps_are_exact(percentile: float) -> None:
    maps = _large_maps()
    expected = np.percentile(maps, percentile, axis=1)
    np.testing.assert_allclose(percentile_threshold(maps, percentile), expected, rtol=1e-6)
    for row, ours in zip(maps, mass_threshold(maps, percentile), strict=True):
        ordered = np.sort(row.astype(np.float64))
        running = np.cumsum(ordered)
        hits = np.flatnonzero(running >= running[-1] * 0.01 * percentile)
        assert ours == ordered[hits[0] if hits.size else -1]  # Captum's rule, without its crash
        if percentile < 100:  # at 100 Captum's own float rounding can leave no hit (IndexError)
            assert ours == _cumulative_sum_threshold(row.astype(np.float64), percentile)


@pytest.mark.parametrize("sign", ["positive", "absolute", "all", "negative"])
def test_mass_clipping_matches_captum_normalisation(sign: str) -> None:
    rng = np.random.default_rng(1)
    attr = rng.standard_normal((12, 10))
    captum_sign = "absolute_value" if sign == "absolute" else sign
    expected = _normalize_attr(attr, captum_sign, outlier_perc=2)
    out = normalize(attr, sign=sign, clip="mass", percentile=98.0)
    if sign == "negative":  # Captum keeps the magnitude positive too: attr / -threshold.
        expected = np.clip(expected, 0, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)


def test_signs() -> None:
    values = np.array([[-2.0, -1.0, 0.0, 1.0, 4.0]])
    kw = {"clip": None}
    np.testing.assert_allclose(normalize(values, sign="absolute", **kw), [[0.5, 0.25, 0, 0.25, 1]])
    np.testing.assert_allclose(normalize(values, sign="positive", **kw), [[0, 0, 0, 0.25, 1]])
    np.testing.assert_allclose(normalize(values, sign="negative", **kw), [[1, 0.5, 0, 0, 0]])
    np.testing.assert_allclose(normalize(values, sign="all", **kw), [[-0.5, -0.25, 0, 0.25, 1]])


def test_reductions_over_channels() -> None:
    values = np.zeros((3, 1, 2), dtype=np.float32)
    values[:, 0, 0] = [1.0, -3.0, 1.0]  # sum -1, abs_sum 5, max_abs 3
    values[:, 0, 1] = [2.0, 2.0, 1.0]  # sum 5, abs_sum 5, max_abs 2
    kw = {"clip": None, "sign": "all"}
    np.testing.assert_allclose(normalize(values, reduce="sum", **kw), [[-0.2, 1.0]])
    np.testing.assert_allclose(normalize(values, reduce="abs_sum", **kw), [[1.0, 1.0]])
    np.testing.assert_allclose(normalize(values, reduce="max_abs", **kw), [[1.0, 2 / 3]])
    kept = normalize(values, reduce=None, **kw)
    assert kept.shape == (3, 1, 2)
    np.testing.assert_allclose(kept[:, 0, 0], [1 / 3, -1.0, 1 / 3])


def test_zero_map_gives_zeros_without_warnings() -> None:
    with np.errstate(all="raise"):
        for clip in ("percentile", "mass", None):
            for sign in ("absolute", "all", "negative"):
                out = normalize(np.zeros((3, 5, 5)), clip=clip, sign=sign)
                assert out.shape == (5, 5)
                assert not out.any()


def test_sparse_map_falls_back_to_the_largest_magnitude() -> None:
    values = np.zeros((10, 10))
    values[3, 4] = -0.5  # the 90th percentile of |map| is 0: scale by the spike instead
    out = normalize(values, clip="percentile", percentile=90.0)
    assert out[3, 4] == 1.0
    assert out.sum() == 1.0


def test_nan_raises_naming_values() -> None:
    values = torch.zeros(3, 4, 4)
    values[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="values contains 1 NaN"):
        normalize(values)


def test_thresholds_are_per_map_in_a_batch() -> None:
    rng = np.random.default_rng(2)
    batch = rng.standard_normal((2, 4, 3, 6, 6)).astype(np.float32)
    batch[1, 2] *= 100.0
    out = normalize(batch, sign="all")
    assert out.shape == (2, 4, 6, 6)
    for b in range(2):
        for k in range(4):
            np.testing.assert_allclose(out[b, k], normalize(batch[b, k], sign="all"), rtol=1e-6)


def test_channels_first_tensor_equals_channels_last_array_and_input_is_untouched() -> None:
    chw = torch.randn(3, 8, 9)
    before = chw.clone()
    hwc = chw.permute(1, 2, 0).numpy().copy()
    np.testing.assert_array_equal(normalize(chw), normalize(hwc))
    assert torch.equal(chw, before)


def test_tensor_with_grad_is_accepted() -> None:
    values = torch.randn(1, 5, 5, requires_grad=True) * 2
    assert normalize(values).shape == (5, 5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sign": "abs"}, "sign='abs'"),
        ({"reduce": "mean"}, "reduce='mean'"),
        ({"clip": "outliers"}, "clip='outliers'"),
        ({"percentile": 101}, "percentile=101"),
    ],
)
def test_bad_options_name_the_argument(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        normalize(np.ones((4, 4)), **kwargs)


def test_bad_shape_names_values() -> None:
    with pytest.raises(ValueError, match="values has shape"):
        normalize(np.ones(5))
    with pytest.raises(ValueError, match="values has shape"):
        normalize(np.ones((5, 6, 7)))


def test_large_maps_match_numpy_percentile_end_to_end() -> None:
    rng = np.random.default_rng(5)
    values = rng.standard_normal((2, 3, 128, 96)).astype(np.float32) ** 3  # heavy tails
    out = normalize(values, percentile=99.5)
    for m, o in zip(values, out, strict=True):
        magnitude = np.abs(m.sum(axis=0))
        expected = np.minimum(magnitude / np.percentile(magnitude, 99.5), 1.0)
        np.testing.assert_allclose(o, expected, rtol=1e-5, atol=1e-6)
