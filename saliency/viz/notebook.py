"""The picture an :class:`~saliency.Attribution` shows of itself in Jupyter."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from saliency.viz.draw import grid
from saliency.viz.images import to_numpy
from saliency.viz.labels import class_label
from saliency.viz.paint import heat_pixels

__all__ = ["attribution_png"]


def attribution_png(
    attribution: object, *, max_samples: int = 4, max_classes: int = 10
) -> bytes | None:
    """PNG bytes of a small picture of ``attribution``: at most ``max_samples`` x ``max_classes``.

    Image maps (``values`` ``[B, K, C, H, W]`` or ``[B, K, H, W]``) become a grid of heat maps,
    one row per sample, its predicted class first and then its other classes by output, highest
    first; tabular values ``[B, K, D]`` become bar charts of the first sample's features (at most
    10 per class). Returns None, so that Jupyter falls back to the text repr, for values it
    cannot draw (other shapes, NaN or inf).
    """
    try:
        return _picture(attribution, max_samples, max_classes)
    except ValueError:
        return None


def _picture(attribution: object, max_samples: int, max_classes: int) -> bytes:
    # Pick rows before converting: the values may be large, or on a GPU.
    rows = _rows(attribution, max_samples, max_classes)
    picked = torch.arange(rows.shape[0])[:, None]
    values = to_numpy(attribution.values[picked, rows], "attribution.values")
    classes = to_numpy(attribution.classes[picked, rows], "attribution.classes")
    if values.ndim == 3:
        return _features_png(attribution, values, classes)
    if values.ndim == 4:
        values = values[:, :, None]
    pictures = heat_pixels(values)
    outputs = getattr(attribution, "outputs", None)
    outputs = None if outputs is None else to_numpy(outputs, "attribution.outputs")
    labels = []
    for b in range(classes.shape[0]):
        for k in range(classes.shape[1]):
            c = int(classes[b, k])
            label = f"#{b} class {class_label(c, None)}"
            if outputs is not None and 0 <= c < outputs.shape[1]:
                label += f": {outputs[b, c]:.2f}"
            labels.append(label)
    tiles = [Image.fromarray(p) for p in pictures.reshape(-1, *pictures.shape[-3:])]
    picture = grid(tiles, rows=classes.shape[0], labels=labels, min_size=96)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _rows(attribution: object, max_samples: int, max_classes: int) -> torch.Tensor:
    """``[b, k]`` row indices per sample: the predicted class's row first, then by output."""
    classes = attribution.classes[:max_samples].detach().cpu().long()
    outputs = attribution.outputs[:max_samples].detach().cpu().float()
    n_outputs = outputs.shape[1]
    inside = (classes >= 0) & (classes < n_outputs)
    scores = outputs.gather(1, classes.clamp(0, max(n_outputs - 1, 0)))
    scores = torch.where(inside, scores, torch.full_like(scores, -float("inf")))
    scores = torch.nan_to_num(scores, nan=-float("inf"))
    # stable: ties (and rows of classes without an output) keep their order
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :max_classes]


def _features_png(attribution: object, values: np.ndarray, classes: np.ndarray) -> bytes:
    from types import SimpleNamespace

    from saliency.viz.figures import plot_features

    first = SimpleNamespace(
        values=values[:1],
        classes=classes[:1],
        outputs=getattr(attribution, "outputs", None),
        method=getattr(attribution, "method", None),
    )
    names = [f"x{i}" for i in range(values.shape[2])]
    fig = plot_features(first, names, top=10, sample=0)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72)
    return buffer.getvalue()
