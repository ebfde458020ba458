"""Matplotlib figures for notebooks and reports: per-class image grids and feature bar charts.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot state), so they work
without a display; in Jupyter a returned figure shows itself.

Examples
--------
>>> import torch, saliency
>>> images = torch.rand(2, 3, 16, 16)                 # two RGB inputs in [0, 1]
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 5))
>>> fig = plot_classes(saliency.gradients(model, images, classes=[0, 3]), images)
>>> len(fig.axes)                                    # 2 samples x 2 classes
4
>>> tabular = saliency.gradients(torch.nn.Linear(4, 3), torch.randn(8, 4))
>>> fig = plot_features(tabular, ["age", "dose", "weight", "height"], top=3)
>>> len(fig.axes)                                    # one chart per class
3
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from saliency.viz.images import image_maps, to_numpy, to_rgb_batch
from saliency.viz.labels import class_label
from saliency.viz.paint import heat_pixels, overlay_pixels

__all__ = ["plot_classes", "plot_features"]

_POSITIVE, _NEGATIVE = "#c0392b", "#2e6db4"


def plot_classes(
    attribution: object,
    images: object = None,
    *,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    method_label: str | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    value_range: tuple[float, float] | None = None,
    cell_size: float = 2.0,
    **overlay_args: object,
) -> Figure:
    """A grid of pictures: one row per sample, one column per class of ``attribution``.

    Each picture is the class's map over the sample's image (or the heat map alone when
    ``images`` is None), titled with the class name and its score ``attribution.outputs[b, c]``.
    ``method_label`` (default: ``attribution.method``) titles the figure. ``images``, ``mean``,
    ``std`` and ``value_range`` are as for :func:`saliency.viz.save_overlays`; ``overlay_args``
    as for :func:`saliency.viz.overlay`. ``cell_size`` is each picture's size in inches.
    """
    values = image_maps(to_numpy(attribution.values, "attribution.values"))
    classes = to_numpy(attribution.classes, "attribution.classes")
    n_samples, n_classes = values.shape[:2]
    outputs = _outputs(attribution)
    if images is None:
        overlay_args.pop("alpha", None)
        overlay_args.pop("grayscale_background", None)
        pictures = heat_pixels(values, **overlay_args)
    else:
        pixels = to_rgb_batch(images, mean=mean, std=std, value_range=value_range)
        if len(pixels) != n_samples:
            raise ValueError(
                f"images holds {len(pixels)} images; expected one per sample ({n_samples})"
            )
        pictures = overlay_pixels(pixels, values, **overlay_args)

    fig = Figure(figsize=(cell_size * n_classes, cell_size * n_samples + 0.4), layout="constrained")
    axes = fig.subplots(n_samples, n_classes, squeeze=False)
    for b in range(n_samples):
        for k in range(n_classes):
            ax = axes[b, k]
            ax.imshow(pictures[b, k], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            title = class_label(classes[b, k], class_names)
            if outputs is not None and 0 <= classes[b, k] < outputs.shape[1]:
                title += f"  ({outputs[b, classes[b, k]]:.3g})"
            ax.set_title(title, fontsize=9)
            if k == 0:
                ax.set_ylabel(f"sample {b}", fontsize=9)
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
