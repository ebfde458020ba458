"""class_grid: every class of every sample in one picture, maps at the input's own resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import saliency
from saliency.attribution import Attribution
from saliency.viz.class_grid import class_grid


def _attribution(values: torch.Tensor, outputs: torch.Tensor) -> Attribution:
    b, k = values.shape[:2]
    return Attribution(
        values=values,
        classes=torch.arange(k).expand(b, k).clone(),
        outputs=outputs,
        method="gradients",
        params={},
    )


def _colours(picture: Image.Image) -> set[tuple[int, int, int]]:
    return {tuple(c) for c in np.asarray(picture).reshape(-1, 3).tolist()}


def test_one_map_pixel_is_one_block_of_the_enlarged_tile():
    # One sample, two classes; class 1 has a single positive pixel at (2, 5) of an 8x8 input.
    values = torch.zeros(1, 2, 1, 8, 8)
    values[0, 1, 0, 2, 5] = 1.0
    outputs = torch.tensor([[0.0, 3.0]])  # class 1 predicted
    picture = class_grid(_attribution(values, outputs), torch.zeros(1, 1, 8, 8), tile=64)
    pixels = np.asarray(picture).astype(int)
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
    rows, cols = np.nonzero(red)
    # Exactly one 8x8 block of saturated red (legend bar aside, which is above the maps).
    maps = rows > rows.max() - 64
    assert maps.sum() == 64, "one map pixel must cover factor x factor pixels, nothing blurred"
    assert np.ptp(rows[maps]) == 7 and np.ptp(cols[maps]) == 7


def test_all_zero_maps_and_labels_draw():
    x = torch.rand(3, 1, 8, 8)
    values = torch.zeros(3, 4, 1, 8, 8)
    picture = class_grid(
        {
            "a": _attribution(values, torch.randn(3, 4)),
            "b": _attribution(values, torch.randn(3, 4)),
        },
        x,
        labels=[0, 1, 2],
        class_names=["zero", "one", "two", "three"],
        title="all zero",
    )
    assert picture.mode == "RGB" and picture.height > 3 * 2 * 64
    assert (255, 255, 255) in _colours(picture)


def test_maps_of_another_size_are_drawn_at_the_input_size():
    # Grad-CAM without upsampling: 4x4 maps for 8x8 inputs, grayscale and RGB.
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3),
    )  # fmt: skip
    x = torch.rand(2, 3, 8, 8)
    cam = saliency.gradcam(model, x, layer=model[2], size=None)
    assert cam.values.shape[-2:] == (4, 4)
    rgb = class_grid(cam, x, sign="positive")
    gray = class_grid(cam, x.mean(1, keepdim=True), sign="positive")
    assert rgb.size == gray.size


def test_real_model_rgb_input_and_sample_choice():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3))
    x = torch.rand(4, 3, 16, 16)
    attr = saliency.gradients(model, x)
    all_samples = class_grid(attr, x)
    two = class_grid(attr, x, samples=[1, 3])
    assert two.height < all_samples.height and two.width == all_samples.width


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda a, other, x: class_grid(a, x[:2]), "one per sample"),
        (lambda a, other, x: class_grid(a, x, labels=[1]), "labels"),
        (lambda a, other, x: class_grid(a, x, samples=[7]), "samples"),
        (lambda a, other, x: class_grid({"a": a, "b": other}, x), "other samples"),
        (lambda a, other, x: class_grid({}, x), "empty"),
        (lambda a, other, x: class_grid(a, x, sign="both"), "sign"),
    ],
)
def test_bad_input_is_named(call, match):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    x = torch.rand(3, 1, 8, 8)
    attr = saliency.gradients(model, x)
    other = saliency.gradients(model, x, classes=[0, 1])
    with pytest.raises(ValueError, match=match):
        call(attr, other, x)


def test_not_an_attribution():
    with pytest.raises(TypeError, match="attributions"):
        class_grid([1, 2], torch.rand(1, 1, 8, 8))
