"""Pixel-level tests for ``saliency.viz`` heat maps, overlays, grids and image conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from saliency import viz
from saliency.viz.colormaps import lookup_table
from saliency.viz.images import to_rgb, to_rgb_batch


def _smooth_map(h: int = 20, w: int = 24, channels: int = 3) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    bump = np.exp(-((yy - 5.0) ** 2 + (xx - 16.0) ** 2) / 18.0) - 0.6 * np.exp(
        -((yy - 14.0) ** 2 + (xx - 6.0) ** 2) / 10.0
    )
    return np.stack([bump * (c + 1) for c in range(channels)]).astype(np.float32)


def test_hottest_pixel_gets_the_top_colour() -> None:
    values = _smooth_map()
    hot = np.unravel_index(np.abs(values.sum(0)).argmax(), values.shape[1:])
    for sign, cmap in [("absolute", "inferno"), ("positive", "hot"), ("all", "bwr")]:
        pixels = np.asarray(viz.heatmap(values, sign=sign, cmap=cmap))
        assert tuple(pixels[hot]) == tuple(lookup_table(cmap, sign == "all")[255])


def test_most_negative_pixel_gets_the_low_end_of_a_diverging_map() -> None:
    values = -np.abs(_smooth_map(channels=1))
    cold = np.unravel_index(values[0].argmin(), values.shape[1:])
    pixels = np.asarray(viz.heatmap(values, sign="all", clip=None))
    assert tuple(pixels[cold]) == (0, 0, 255)  # bwr's blue end


def test_zero_map_gives_the_neutral_colour() -> None:
    zeros = torch.zeros(3, 6, 7)
    signed = np.asarray(viz.heatmap(zeros, sign="all"))
    assert (signed == 255).all()  # bwr's white middle
    for clip in ("percentile", "mass", None):
        plain = np.asarray(viz.heatmap(zeros, clip=clip))
        assert (plain == lookup_table("inferno")[0]).all()


def test_channels_first_tensor_and_channels_last_array_give_identical_pictures() -> None:
    values = _smooth_map()
    image = np.random.default_rng(0).random((3, 20, 24)).astype(np.float32)
    a = viz.overlay(torch.from_numpy(image), torch.from_numpy(values))
    b = viz.overlay(image.transpose(1, 2, 0), values.transpose(1, 2, 0))
    assert a.tobytes() == b.tobytes()
    assert (
        viz.heatmap(torch.from_numpy(values)).tobytes()
        == viz.heatmap(values.transpose(1, 2, 0)).tobytes()
    )


def test_grayscale_layouts_agree() -> None:
    values = _smooth_map(channels=1)
    image = np.random.default_rng(1).random((20, 24))
    pictures = [
        viz.overlay(image, values[0]),
        viz.overlay(image[None], values),
        viz.overlay(image[:, :, None], values.transpose(1, 2, 0)),
        viz.overlay(torch.tensor(image)[None], torch.tensor(values)),
    ]
    assert all(p.mode == "RGB" and p.size == (24, 20) for p in pictures)
    assert len({p.tobytes() for p in pictures}) == 1


def test_value_ranges_and_normalisation_are_undone() -> None:
    rng = np.random.default_rng(2)
    as_bytes = rng.integers(0, 256, (3, 5, 6), dtype=np.uint8)
    unit = as_bytes.astype(np.float32) / 255
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    normalised = (unit - np.reshape(mean, (3, 1, 1))) / np.reshape(std, (3, 1, 1))
    expected = as_bytes.transpose(1, 2, 0)
    np.testing.assert_array_equal(to_rgb(as_bytes), expected)
    np.testing.assert_array_equal(to_rgb(unit), expected)
    np.testing.assert_array_equal(to_rgb(as_bytes.astype(np.float64)), expected)
    np.testing.assert_array_equal(
        to_rgb(torch.from_numpy(normalised), mean=mean, std=std), expected
    )
    # An explicit range wins over detection: a dark [0, 255] float image whose maximum is 1.
    np.testing.assert_array_equal(to_rgb(np.ones((2, 2)), value_range=(0, 255))[0, 0], [1, 1, 1])


def test_normalised_image_without_mean_and_std_warns() -> None:
    with pytest.warns(UserWarning, match="mean= and std="):
        to_rgb(np.full((3, 4, 4), -1.5))


def test_batches_and_lists_convert_alike() -> None:
    rng = np.random.default_rng(3)
    batch = rng.random((4, 3, 5, 6)).astype(np.float32)
    as_list = to_rgb_batch([torch.from_numpy(b) for b in batch])
    np.testing.assert_array_equal(to_rgb_batch(batch), as_list)
    np.testing.assert_array_equal(to_rgb_batch(batch.transpose(0, 2, 3, 1)), as_list)
    assert to_rgb_batch(batch[:, 0]).shape == (4, 5, 6, 3)


def test_overlay_has_the_image_size_even_when_the_map_is_smaller() -> None:
    image = np.zeros((40, 48, 3), dtype=np.uint8)
    picture = viz.overlay(image, _smooth_map())  # map 20x24, image 40x48
    assert picture.size == (48, 40)
    assert np.asarray(picture).any()


def test_overlay_blends_with_alpha() -> None:
    image = np.random.default_rng(4).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    values = _smooth_map()
    heat = np.asarray(viz.heatmap(values))
    gray = np.asarray(Image.fromarray(image).convert("L"))
    np.testing.assert_array_equal(np.asarray(viz.overlay(image, values, alpha=1.0)), heat)
    background = np.asarray(viz.overlay(image, values, alpha=0.0))
    np.testing.assert_array_equal(background, np.repeat(gray[..., None], 3, axis=-1))
    colour = np.asarray(viz.overlay(image, values, alpha=0.0, grayscale_background=False))
    np.testing.assert_array_equal(colour, image)
    half = np.asarray(viz.overlay(image, values, alpha=0.5)).astype(int)
    assert np.abs(half - (heat.astype(int) + background) / 2).max() <= 1


def test_inputs_are_not_mutated() -> None:
    image = torch.rand(3, 20, 24)
    values = torch.from_numpy(_smooth_map())
    before = image.clone(), values.clone()
    viz.overlay(image, values, mean=[0.5] * 3, std=[0.2] * 3)
    assert torch.equal(image, before[0]) and torch.equal(values, before[1])


def test_grid_layout_and_labels() -> None:
    tiles = [viz.heatmap(_smooth_map() * (i + 1)) for i in range(5)]
    plain = viz.grid(tiles, rows=2, pad=2, min_size=0)
    assert plain.size == (3 * 24 + 4 * 2, 2 * 20 + 3 * 2)
    labelled = viz.grid(tiles, labels=["a", "b", "c", "d", "a very long label"], pad=2)
    assert labelled.height > plain.height  # text strips; tiles enlarged to >= 64 px
    np.testing.assert_array_equal(np.asarray(labelled)[0, 0], [255, 255, 255])
    batch = viz.grid(torch.rand(4, 1, 8, 8))  # 8x8 digits get enlarged to 64x64
    assert batch.size == (2 * 64 + 3 * 2, 2 * 64 + 3 * 2)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: viz.heatmap(np.ones((2, 3, 4, 5))), "expected one map"),
        (lambda: viz.heatmap(np.ones((5, 5)), cmap="nope"), "cmap='nope'"),
        (lambda: viz.overlay(np.ones((5, 5)), np.ones((5, 5)), alpha=2), "alpha=2"),
        (lambda: viz.overlay(np.ones((5, 6, 7)), np.ones((5, 5))), "image has shape"),
        (lambda: viz.grid([viz.heatmap(np.ones((5, 5)))], labels=["a", "b"]), "labels has 2"),
        (lambda: to_rgb(np.ones((3, 5, 5)), mean=[0, 0]), "mean has 2 entries"),
    ],
)
def test_errors_name_the_argument(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
