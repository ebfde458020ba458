"""Figures for deletion, insertion and ROAD: score curves of a few rows beside their random order.

Built with :class:`matplotlib.figure.Figure` directly (no pyplot state), so they work without a
display; in Jupyter a returned figure shows itself.

Examples
--------
>>> import torch, saliency
>>> from saliency.audit import deletion
>>> model = torch.nn.Linear(6, 3)
>>> x = torch.randn(4, 6)
>>> r = deletion(model, x, saliency.gradients(model, x, times_input=True), steps=6, seed=0)
>>> len(plot_curves(r, samples=[0, 1], classes=[0, 2]).axes)      # 2 samples x 2 rows
4
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from ..viz.labels import class_label

__all__ = ["plot_curves"]

_VERB = {
    "deletion": "removed",
    "insertion": "inserted",
    "road_morf": "removed (MoRF)",
    "road_lerf": "removed (LeRF)",
}


def plot_curves(
    result: object,
    *,
    samples: Sequence[int] = (0,),
    classes: Sequence[int] | None = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    size: tuple[float, float] = (2.6, 2.0),
) -> Figure:
    """Draw the score curves of a few samples and rows, each beside its random-order curve.

    One panel per chosen sample and row: the curve in the map's order (solid), the random
    order (dashed, when computed), and the areas of both in the title. ``classes`` are row
    indices into each sample's ``K`` rows (default: the first); ``result`` is what
    :func:`saliency.audit.deletion`, :func:`~saliency.audit.insertion` or
    :func:`~saliency.audit.road` returned.
    """
    fields = ("curves", "random_curves", "fractions", "auc", "random_auc", "classes", "kind")
    if not all(hasattr(result, f) for f in fields):
        # By fields, not isinstance: doctest collection may import the module twice.
        raise TypeError(f"result: expected PerturbationCurves, got {type(result).__name__}")
    n, k = result.classes.shape
    samples = _indices(samples, n, "samples")
    rows = _indices((0,) if classes is None else classes, k, "classes")
    shown = [(b, r) for b in samples for r in rows]
    fractions = result.fractions.double().numpy()
    curves = result.curves.double().cpu().numpy()
    random = None if result.random_curves is None else result.random_curves.double().cpu().numpy()

    cols = min(len(shown), 4)
    lines = -(-len(shown) // cols)
    fig = Figure(figsize=(size[0] * cols, size[1] * lines + 0.4), layout="constrained")
    axes = fig.subplots(lines, cols, squeeze=False).ravel()
    for ax, (b, r) in zip(axes, shown, strict=False):
        ax.plot(fractions, curves[b, r], color="C0", label="map order")
        title = f"auc {float(result.auc[b, r]):.3g}"
        if random is not None:
            ax.plot(fractions, random[b, r], color="C7", linestyle="--", label="random order")
            title += f", random {float(result.random_auc[b, r]):.3g}"
        label = class_label(int(result.classes[b, r]), class_names)
        ax.set_title(f"sample {b}, class {label}\n{title}", fontsize=8)
        ax.set_xlabel(f"fraction {_VERB.get(result.kind, 'perturbed')}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(shown) :]:
        fig.delaxes(ax)
    axes[0].legend(fontsize=7)
    return fig


def _indices(values: object, size: int, name: str) -> list[int]:
    if isinstance(values, int) and not isinstance(values, bool):
        values = (values,)
    if not isinstance(values, Sequence) or isinstance(values, str) or not values:
        raise TypeError(f"{name}: expected a non-empty list of indices, got {values!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or not 0 <= v < size:
            raise ValueError(f"{name}: expected indices in [0, {size}), got {list(values)}")
    return [int(v) for v in values]
