"""Tests for the matplotlib figures and the notebook picture of ``saliency.viz``."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex
from PIL import Image

import saliency
from saliency import Attribution, models, viz
from saliency.viz.colormaps import lookup_table
from saliency.viz.notebook import attribution_png

matplotlib.use("Agg")


def _attr(values: torch.Tensor, classes: torch.Tensor, outputs: torch.Tensor) -> Attribution:
    return Attribution(values=values, classes=classes, outputs=outputs, method="gradients")


def _image_attribution(b: int = 2, k: int = 3) -> Attribution:
    g = torch.Generator().manual_seed(0)
    return _attr(
        values=torch.randn(b, k, 1, 8, 8, generator=g),
        classes=torch.arange(k).repeat(b, 1),
        outputs=torch.cat([torch.tensor([[1.5, -2.0, 0.25, 9.0], [0.5, 3.0, -1.0, 2.0]])] * b)[:b],
    )


def _pictures(fig) -> list:
    """The picture axes of a figure (colour bars left out), row by row."""
    return [ax for ax in fig.axes if ax.get_images()]


def _row_colours(values: np.ndarray, signed: bool) -> np.ndarray:
    """Hand-computed colours of one sample's maps [K, C, H, W]: channels summed, one threshold
    (99th percentile of the magnitudes) for the whole row, then bwr's 256-entry table."""
    maps = values.sum(axis=1)
    if not signed:
        maps = np.abs(maps)
    t = np.percentile(np.abs(maps), 99.0)
    scaled = np.clip(maps / t, -1.0 if signed else 0.0, 1.0)
    index = np.rint(scaled * 127.5 + 127.5 if signed else scaled * 255.0).astype(int)
    lut = lookup_table("bwr" if signed else "inferno", signed)  # tested in test_viz_draw.py
    return lut[index], t


def test_plot_classes_rows_are_samples_with_input_classes_and_a_colour_bar() -> None:
    attribution = _image_attribution()
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    fig = viz.plot_classes(
        attribution, images, labels=[3, 1], class_names=["zero", "one", "two", "three"]
    )
    axes = _pictures(fig)
    assert len(axes) == 2 * (1 + 3)
    titles = [ax.get_title() for ax in axes]
    assert titles == [
        "input", "zero (score 1.5)", "one (score -2)", "two (score 0.25)",
        "", "zero (score 0.5)", "one (score 3)", "two (score -1)",
    ]  # fmt: skip
    # rows say the sample, its true class and its prediction (the highest output)
    assert axes[0].get_ylabel() == "#0\ntrue three\npredicted three ✓"
    assert axes[4].get_ylabel() == "#1\ntrue one\npredicted one ✓"
    assert fig.get_suptitle() == "gradients"
    np.testing.assert_array_equal(axes[4].get_images()[0].get_array(), viz.to_rgb(images[1]))
    # signed values: a diverging map over one threshold per row, which the row's colour bar shows
    expected, t = _row_colours(attribution.values[1].numpy(), signed=True)
    for k in range(3):
        np.testing.assert_array_equal(axes[5 + k].get_images()[0].get_array(), expected[k])
    bars = [ax for ax in fig.axes if not ax.get_images() and ax not in axes]
    assert len(bars) == 2
    limits = sorted(bars[1].get_ylim())
    np.testing.assert_allclose(limits, [-t, t], rtol=1e-6)
    fig.savefig(io.BytesIO(), format="png")


def test_plot_classes_marks_a_wrong_prediction_and_keeps_magnitudes_unsigned() -> None:
    attribution = _image_attribution(b=1, k=2)
    positive = _attr(attribution.values.abs(), attribution.classes, attribution.outputs)
    fig = viz.plot_classes(positive, labels=[1], method_label="SmoothGrad")
    axes = _pictures(fig)
    assert len(axes) == 2  # no images: maps only
    assert axes[0].get_ylabel() == "#0\ntrue 1\npredicted 3 ✗"
    expected, _ = _row_colours(positive.values[0].numpy(), signed=False)
    np.testing.assert_array_equal(axes[1].get_images()[0].get_array(), expected[1])
    assert fig.get_suptitle() == "SmoothGrad"


def test_plot_classes_overlay_blends_over_the_images() -> None:
    attribution = _image_attribution(b=1, k=2)
    images = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    beside = _pictures(viz.plot_classes(attribution, images))
    over = _pictures(viz.plot_classes(attribution, images, overlay=True, alpha=0.7))
    assert len(beside) == 3 and len(over) == 2
    shown = over[0].get_images()[0].get_array().astype(int)
    heat = beside[1].get_images()[0].get_array().astype(int)
    gray = viz.to_rgb(images[0]).astype(int)
    np.testing.assert_allclose(shown, 0.7 * heat + 0.3 * gray, atol=1.5)
    with pytest.raises(TypeError, match="overlay=True"):
        viz.plot_classes(attribution, images, alpha=0.5)
    with pytest.raises(ValueError, match="labels: expected one integer class id per sample"):
        viz.plot_classes(attribution, images, labels=[1, 2])


def _tabular() -> Attribution:
    values = torch.tensor(
        [
            [[0.5, -3.0, 1.0, 0.0], [1.0, 1.0, -1.0, 2.0]],
            [[1.5, -1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 2.0]],
        ]
    )
    return _attr(values=values, classes=torch.tensor([[0, 1], [0, 1]]), outputs=torch.ones(2, 2))


def test_plot_features_shows_top_signed_bars_of_the_mean() -> None:
    fig = viz.plot_features(_tabular(), ["a", "b", "c", "d"], top=2, class_names=["no", "yes"])
    first, second = fig.axes
    # Mean over samples: class 0 = [1, -2, 1, 0]; top 2 by magnitude: b (-2), then a (1, stable).
    assert [t.get_text() for t in first.get_yticklabels()] == ["a", "b"]  # largest at the top
    widths = [bar.get_width() for bar in first.patches]
    assert widths == [1.0, -2.0]
    colours = [to_hex(bar.get_facecolor()) for bar in first.patches]
    assert colours[0] != colours[1]  # positive and negative differ
    assert first.get_title() == "no" and second.get_title() == "yes"
    assert "mean over 2 samples" in fig.get_suptitle()


def test_plot_features_one_sample_titles_with_score() -> None:
    fig = viz.plot_features(_tabular(), ["a", "b", "c", "d"], sample=1)
    assert [bar.get_width() for bar in fig.axes[0].patches] == [0.0, 1.0, -1.0, 1.5]
    assert fig.axes[0].get_title() == "0  (1)"


def test_plot_features_refuses_to_average_different_classes() -> None:
    tab = _tabular()
    mixed = _attr(values=tab.values, classes=torch.tensor([[0, 1], [1, 0]]), outputs=tab.outputs)
    with pytest.raises(ValueError, match="pass sample="):
        viz.plot_features(mixed, ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="feature_names has 2 names"):
        viz.plot_features(tab, ["a", "b"])


@pytest.mark.parametrize("attribution", [_image_attribution(b=6, k=8), _tabular()])
def test_notebook_picture_is_a_small_png(attribution: Attribution) -> None:
    data = attribution._repr_png_()
    assert data == attribution_png(attribution)
    with Image.open(io.BytesIO(data)) as picture:
        assert picture.format == "PNG"
        assert max(picture.size) < 1200


def test_notebook_picture_of_real_gradients() -> None:
    model, _ = models.load("digits")
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    attribution = saliency.gradients(model, x, strategy="loop")  # [3, 10, 1, 8, 8]
    with Image.open(io.BytesIO(attribution._repr_png_())) as picture:
        # 3 rows of 6 classes (capped), 8x8 maps enlarged to 96x96 tiles.
        assert picture.width > 6 * 96 and 3 * 96 < picture.height < 4 * 140
    model, _ = models.load("breast_cancer")
    x = torch.randn(2, 30, generator=torch.Generator().manual_seed(0))
    assert attribution_png(saliency.gradients(model, x, strategy="loop")).startswith(b"\x89PNG")


def test_notebook_picture_falls_back_to_text_for_nan() -> None:
    attribution = _image_attribution(b=1, k=1)
    attribution.values[0, 0, 0, 0, 0] = float("nan")
    assert attribution._repr_png_() is None


def test_notebook_picture_starts_each_row_with_the_predicted_class() -> None:
    from saliency.viz.notebook import _rows

    model, _ = models.load("digits")
    x, _ = models.held_out("digits", 3)
    attribution = saliency.gradients(model, x, strategy="loop")
    rows = _rows(attribution, max_samples=4, max_classes=10)
    assert rows.shape == (3, 10)
    predicted = attribution.outputs.argmax(1)
    assert torch.equal(attribution.classes[torch.arange(3), rows[:, 0]], predicted)
    assert predicted[0] == 7  # the row the picture missed when it showed classes 0-5
    scores = attribution.outputs.gather(1, attribution.classes.gather(1, rows))
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # then by output, highest first
