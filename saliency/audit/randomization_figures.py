"""Figures for the sanity checks: maps through the randomisation steps, and class-similarity grids.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot state), so they
work without a display; in Jupyter a returned figure shows itself.

Examples
--------
>>> import torch, saliency
>>> from saliency.audit import class_sensitivity, randomization_test
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
>>> x = torch.randn(3, 1, 8, 8)
>>> r = randomization_test(model, x, saliency.gradients, seed=0, keep_maps=True)
>>> len(plot_randomization(r, samples=[0, 2], classes=[1]).axes)   # 2 rows x 2 steps
4
>>> fig = plot_class_similarity(class_sensitivity(saliency.gradients(model, x)), sample=1)
>>> len(fig.axes)                                                   # the grid and its colour bar
2
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from ..viz.labels import class_label
from ._class_sensitivity import ClassSensitivity
from ._randomization import RandomizationResult

__all__ = ["plot_class_similarity", "plot_randomization"]

ClassNames = Sequence[str] | Mapping[int, str] | None


def plot_randomization(
    result: RandomizationResult,
    *,
    samples: Sequence[int] = (0,),
    classes: Sequence[int] | None = None,
    similarity: str | None = None,
    class_names: ClassNames = None,
    cell_size: float = 1.6,
) -> Figure:
    """The compared maps of a few samples and classes, one column per randomisation step.

    Needs a result computed with ``keep_maps=True``. Rows are the chosen ``samples`` times
    their rows ``classes`` (indices into each sample's ``K`` rows; default: the first); each
    picture is titled with its step's ``similarity`` (default: the first one computed) to the
    original map. Maps are drawn as computed: scaled to a largest absolute value of 1.
    """
    _check_result(result, RandomizationResult, ("steps", "similarity", "classes", "maps"))
    if result.maps is None:
        raise ValueError(
            "result: holds no maps; run randomization_test(..., keep_maps=True) to draw them"
        )
    steps, n, k = result.maps.shape[:3]
    samples = _indices(samples, n, "samples")
    rows = _indices((0,) if classes is None else classes, k, "classes")
    name = similarity if similarity is not None else next(iter(result.similarity))
    if name not in result.similarity:
        raise ValueError(
            f"similarity: {name!r} was not computed; the result holds {list(result.similarity)}"
        )
    maps = result.maps.double().numpy()
    scores = result.similarity[name].double().cpu().numpy()
    signed = bool((maps < 0).any())
    shown = [(b, r) for b in samples for r in rows]

    fig = Figure(figsize=(cell_size * steps, cell_size * len(shown) + 0.5), layout="constrained")
    axes = fig.subplots(len(shown), steps, squeeze=False)
    for i, (b, r) in enumerate(shown):
        for s in range(steps):
            ax = axes[i, s]
            picture = maps[s, b, r]
            if picture.ndim == 1:
                picture = picture[None, :]  # a signal as a one-pixel-high strip
            elif picture.ndim > 2:
                picture = picture.reshape(picture.shape[0], -1)
            ax.imshow(
                picture,
                cmap="RdBu_r" if signed else "magma",
                vmin=-1.0 if signed else 0.0,
                vmax=1.0,
                interpolation="nearest",
                aspect="auto" if picture.shape[0] == 1 else "equal",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            title = "original" if s == 0 else result.steps[s]
            ax.set_title(f"{title}\n{name} {scores[s, b, r]:.2f}", fontsize=8)
            if s == 0:
                label = class_label(int(result.classes[b, r]), class_names)
                ax.set_ylabel(f"sample {b}\n{label}", fontsize=8)
    fig.suptitle(f"randomisation test ({result.order})", fontsize=10)
    return fig


def plot_class_similarity(
    result: ClassSensitivity,
    *,
    sample: int = 0,
    class_names: ClassNames = None,
    cell_size: float = 0.45,
) -> Figure:
    """The ``K x K`` similarity of one sample's class maps as a heat map, values written in.

    A bright off-diagonal means two classes are explained alike; a flagged sample is bright
    everywhere.
    """
    _check_result(result, ClassSensitivity, ("matrix", "classes", "flagged", "off_diagonal"))
    n, k = result.classes.shape
    (sample,) = _indices((sample,), n, "sample")
    matrix = result.matrix[sample].double().cpu().numpy()
    labels = [class_label(int(c), class_names) for c in result.classes[sample].tolist()]
    side = max(3.0, cell_size * k + 1.5)
    fig = Figure(figsize=(side + 0.8, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="viridis", vmin=-1.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(np.arange(k), labels, rotation=90, fontsize=8)
    ax.set_yticks(np.arange(k), labels, fontsize=8)
    if k <= 12:
        for i in range(k):
            for j in range(k):
                value = matrix[i, j]
                ax.text(
                    j, i, "nan" if np.isnan(value) else f"{value:.2f}",
                    ha="center", va="center", fontsize=7,
                    color="black" if value > 0.3 else "white",
                )  # fmt: skip
    fig.colorbar(image, ax=ax, shrink=0.8, label=result.similarity)
    flag = "  (flagged)" if bool(result.flagged[sample]) else ""
    ax.set_title(
        f"sample {sample}: mean off-diagonal {float(result.off_diagonal[sample]):.2f}{flag}",
        fontsize=9,
    )
    return fig


def _check_result(result: object, kind: type, fields: tuple[str, ...]) -> None:
    # By its fields, not isinstance: a module imported twice (doctest collection) makes two classes.
    if not all(hasattr(result, f) for f in fields):
        raise TypeError(f"result: expected a {kind.__name__}, got {type(result).__name__}")


def _indices(values: object, size: int, name: str) -> list[int]:
    if isinstance(values, int) and not isinstance(values, bool):
        values = (values,)
    if not isinstance(values, Sequence) or not values:
        raise TypeError(f"{name}: expected a non-empty list of indices, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not -size <= v < size:
            raise ValueError(f"{name}: index {v!r} is out of range for {size}")
        out.append(v % size)
    return out
