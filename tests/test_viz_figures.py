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


def test_plot_classes_rows_are_samples_and_columns_classes() -> None:
    attribution = _image_attribution()
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    fig = viz.plot_classes(attribution, images, class_names=["zero", "one", "two", "three"])
    assert len(fig.axes) == 6
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "zero  (1.5)",
        "one  (-2)",
        "two  (0.25)",
        "zero  (0.5)",
        "one  (3)",
        "two  (-1)",
    ]
    assert fig.axes[3].get_ylabel() == "sample 1"
    assert fig.get_suptitle() == "gradients"
    shown = fig.axes[4].get_images()[0].get_array()
    expected = viz.overlay(images[1], attribution.values[1, 1])
    np.testing.assert_array_equal(shown, np.asarray(expected))
    fig.savefig(io.BytesIO(), format="png")


def test_plot_classes_without_images_shows_heat_maps() -> None:
    attribution = _image_attribution(b=1, k=2)
    fig = viz.plot_classes(attribution, method_label="SmoothGrad", sign="all")
    np.testing.assert_array_equal(
        fig.axes[1].get_images()[0].get_array(),
        np.asarray(viz.heatmap(attribution.values[0, 1], sign="all")),
    )
    assert fig.get_suptitle() == "SmoothGrad"


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
