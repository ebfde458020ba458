"""Matplotlib figures for notebooks and reports: per-class image grids and feature bar charts.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot state), so they work
without a display; in Jupyter a returned figure shows itself.

Examples
--------
>>> import torch, saliency
>>> images = torch.rand(2, 3, 16, 16)                 # two RGB inputs in [0, 1]
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 5))
>>> fig = plot_classes(saliency.gradients(model, images, classes=[0, 3]), images, labels=[0, 3])
>>> len(fig.axes)                                    # 2 samples x (input + 2 classes + colour bar)
8
>>> tabular = saliency.gradients(torch.nn.Linear(4, 3), torch.randn(8, 4))
>>> fig = plot_features(tabular, ["age", "dose", "weight", "height"], top=3)
>>> len(fig.axes)                                    # one chart per class
3
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from saliency.viz.colormaps import DIVERGING, SEQUENTIAL
from saliency.viz.images import image_maps, to_numpy, to_rgb_batch
from saliency.viz.labels import class_label, class_name, output_word, true_labels
from saliency.viz.normalization import check_options, scaled_maps
from saliency.viz.paint import backgrounds, paint
from saliency.viz.thresholds import full_colour

__all__ = ["plot_classes", "plot_features"]

_POSITIVE, _NEGATIVE = "#c0392b", "#2e6db4"


def plot_classes(
    attribution: object,
    images: object = None,
    *,
    labels: object = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    method_label: str | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    value_range: tuple[float, float] | None = None,
    overlay: bool = False,
    sign: str | None = None,
    cmap: str | None = None,
    percentile: float = 99.0,
    cell_size: float = 2.0,
    **overlay_args: object,
) -> Figure:
    """A grid of pictures: one row per sample, one column per class of ``attribution``.

    Each row starts with the sample's image (when ``images`` is given), followed by the map of
    every class, titled with the class name and its output ``attribution.outputs[b, c]``, and
    ends with a colour bar: the maps of one row share one colour scale (the ``percentile`` of
    their magnitudes), so its classes can be compared. Rows are labelled with the sample's
    predicted class, and its true class when ``labels`` (``[B]``) are given.

    ``sign`` is as for :func:`~saliency.viz.normalize`; the default keeps the sign on a diverging
    map (``"all"``, zero white) when any value is negative, else ``"absolute"``. ``overlay=True``
    blends the maps over the images instead of drawing them beside; ``overlay_args`` (``alpha``,
    ``grayscale_background``) then go to :func:`saliency.viz.overlay`. ``images``, ``mean``,
    ``std`` and ``value_range`` are as for :func:`saliency.viz.save_overlays`. ``method_label``
    (default: ``attribution.method``) titles the figure; ``cell_size`` is each picture's size in
    inches.
    """
    values = image_maps(to_numpy(attribution.values, "attribution.values"))
    classes = to_numpy(attribution.classes, "attribution.classes")
    n_samples, n_classes = values.shape[:2]
    outputs = _outputs(attribution)
    truth = true_labels(labels, n_samples)
    if sign is None:
        sign = "all" if bool((values < 0).any()) else "absolute"
    check_options(sign=sign, percentile=percentile)
    signed = sign == "all"
    if cmap is None:
        cmap = DIVERGING if signed else SEQUENTIAL
    if overlay_args and not overlay:
        raise TypeError(f"{sorted(overlay_args)} apply with overlay=True only")
    pixels = None
    if images is not None:
        pixels = to_rgb_batch(images, mean=mean, std=std, value_range=value_range)
        if len(pixels) != n_samples:
            raise ValueError(
                f"images holds {len(pixels)} images; expected one per sample ({n_samples})"
            )
    elif overlay:
        raise ValueError("overlay=True blends the maps over images; pass images")
    # One threshold per row: the row's maps side by side are normalised as one map.
    maps = scaled_maps(values, sign=sign, reduce="sum", clip=None)[0]  # [B, K, H, W], signs kept
    height, width = maps.shape[-2:]
    rows = np.ascontiguousarray(maps.transpose(0, 2, 1, 3)).reshape(n_samples, height, -1)
    thresholds = [full_colour(rows[b], percentile) for b in range(n_samples)]
    indices = (
        np.stack([_indices(rows[b], t, signed) for b, t in enumerate(thresholds)])
        .reshape(n_samples, height, n_classes, width)
        .transpose(0, 2, 1, 3)
    )
    if overlay:
        if pixels.shape[1:3] != (height, width):
            raise ValueError(
                f"images are {pixels.shape[1]}x{pixels.shape[2]}; overlay=True needs maps of "
                f"the same size ({height}x{width})"
            )
        background = backgrounds(pixels, overlay_args.pop("grayscale_background", True))
        background = np.broadcast_to(background[:, None], (*indices.shape, *background.shape[3:]))
        pictures = paint(
            indices, np.ascontiguousarray(background), cmap=cmap, signed=signed, **overlay_args
        )
    else:
        pictures = paint(indices, cmap=cmap, signed=signed)
    first = 1 if pixels is not None and not overlay else 0
    columns = first + n_classes

    fig = Figure(
        figsize=(cell_size * columns + 0.9, cell_size * n_samples + 0.5), layout="constrained"
    )
    axes = fig.subplots(n_samples, columns, squeeze=False)
    word = output_word(attribution)
    for b in range(n_samples):
        predicted = int(np.argmax(outputs[b])) if outputs is not None and outputs.shape[1] else -1
        if first:
            axes[b, 0].imshow(pixels[b], interpolation="nearest")
            if b == 0:
                axes[b, 0].set_title("input", fontsize=9)
        for k in range(n_classes):
            ax = axes[b, first + k]
            ax.imshow(pictures[b, k], interpolation="nearest")
            c = int(classes[b, k])
            title = class_label(c, class_names)
            if outputs is not None and 0 <= c < outputs.shape[1]:
                title += f" ({word} {outputs[b, c]:.3g})"
            ax.set_title(title, fontsize=9, fontweight="bold" if c == predicted else "normal")
        for ax in axes[b]:
            ax.set_xticks([])
            ax.set_yticks([])
        axes[b, 0].set_ylabel(_row_label(b, truth, outputs, class_names), fontsize=9)
        limit = float(thresholds[b])
        mappable = ScalarMappable(Normalize(-limit if signed else 0.0, limit), colormaps[cmap])
        bar = fig.colorbar(mappable, ax=axes[b, :].tolist(), shrink=0.85, pad=0.01, aspect=12)
        bar.ax.tick_params(labelsize=7)
    label = method_label if method_label is not None else getattr(attribution, "method", None)
    if label:
        fig.suptitle(str(label))
    return fig


def plot_features(
    attribution: object,
    feature_names: Sequence[str],
    *,
    top: int | None = None,
    sample: int | None = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
) -> Figure:
    """Signed horizontal bar charts of feature attributions, one chart per class.

    ``attribution.values`` is ``[B, K, D]`` with one name per feature in ``feature_names``. The
    bars show sample ``sample``, or by default the mean over all samples (signed, so opposite
    effects cancel; classes must then be the same for every sample). Each chart shows its
    ``top`` features of largest magnitude (default: all), largest at the top; positive bars are
    red, negative blue.
    """
    values = to_numpy(attribution.values, "attribution.values")
    classes = to_numpy(attribution.classes, "attribution.classes")
    if values.ndim != 3:
        raise ValueError(
            f"attribution.values has shape {tuple(values.shape)}; expected [B, K, D] for "
            "tabular inputs (use plot_classes for images)"
        )
    n_samples, n_classes, n_features = values.shape
    if len(feature_names) != n_features:
        raise ValueError(
            f"feature_names has {len(feature_names)} names; expected one per feature ({n_features})"
        )
    if top is not None and (not isinstance(top, int) or top < 1):
        raise ValueError(f"top={top!r}; expected a positive integer or None")
    if sample is None:
        if not (classes == classes[:1]).all():
            raise ValueError(
                "attribution.classes differ between samples, so a mean over samples would mix "
                "classes; pass sample= to plot one sample"
            )
        shown, ids, what = values.mean(axis=0), classes[0], f"mean over {n_samples} samples"
    else:
        if not -n_samples <= sample < n_samples:
            raise ValueError(f"sample={sample!r}; expected an index below {n_samples}")
        shown, ids, what = values[sample], classes[sample], f"sample {sample}"
    outputs = _outputs(attribution)
    count = n_features if top is None else min(top, n_features)

    fig = Figure(figsize=(3.2 * n_classes, 0.6 + 0.28 * count), layout="constrained")
    axes = fig.subplots(1, n_classes, squeeze=False)[0]
    for k, ax in enumerate(axes):
        order = np.argsort(-np.abs(shown[k]), kind="stable")[:count][::-1]
        bars = shown[k][order]
        ax.barh(
            np.arange(count),
            bars,
            color=[_POSITIVE if v >= 0 else _NEGATIVE for v in bars],
        )
        ax.set_yticks(np.arange(count), [str(feature_names[i]) for i in order], fontsize=8)
        ax.axvline(0.0, color="black", linewidth=0.8)
        title = class_label(ids[k], class_names)
        if outputs is not None and sample is not None and 0 <= ids[k] < outputs.shape[1]:
            title += f"  ({outputs[sample, ids[k]]:.3g})"
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    label = getattr(attribution, "method", None)
    fig.suptitle(f"{label}: {what}" if label else what, fontsize=10)
    return fig


def _outputs(attribution: object) -> np.ndarray | None:
    outputs = getattr(attribution, "outputs", None)
    return None if outputs is None else to_numpy(outputs, "attribution.outputs")


def _row_label(b: int, truth, outputs, class_names) -> str:
    parts = [f"#{b}"]
    if truth is not None:
        parts.append(f"true {class_name(truth[b], class_names)}")
    if outputs is not None and outputs.shape[1]:
        predicted = int(np.argmax(outputs[b]))
        mark = "" if truth is None else (" ✓" if predicted == truth[b] else " ✗")
        parts.append(f"predicted {class_name(predicted, class_names)}{mark}")
    return "\n".join(parts)


def _indices(maps: np.ndarray, threshold: float, signed: bool) -> np.ndarray:
    """uint8 colour-table indices of maps scaled by ``threshold`` (as the colour bar reads)."""
    t = np.clip(maps / threshold, -1.0 if signed else 0.0, 1.0)
    return np.rint(t * 127.5 + 127.5 if signed else t * 255.0).astype(np.uint8)
