"""Redraw the pictures in docs/img: ``MPLBACKEND=Agg python docs/img/make_pictures.py``.

- overlay_grid.png: one smooth, signed, synthetic map (three Gaussian bumps) over the scikit-learn
  photograph, under each ``sign`` option.
- plot_classes.png: gradients of the bundled digits model for four held-out digits and classes
  0-4, over the digits (the model's standardisation undone with its mean and std).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_image

import saliency
from saliency import models, viz

HERE = Path(__file__).resolve().parent


def overlay_grid() -> None:
    photo = Image.fromarray(load_sample_image("china.jpg")).crop((100, 0, 527, 427))
    photo = np.asarray(photo.resize((176, 176), Image.Resampling.BILINEAR))
    yy, xx = np.mgrid[:176, :176] / 176.0

    def bump(cy: float, cx: float, width: float, weight: float) -> np.ndarray:
        return weight * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))

    field = bump(0.25, 0.7, 0.1, 1.0) + bump(0.65, 0.3, 0.15, -0.7) + bump(0.78, 0.78, 0.07, 0.5)
    values = np.stack([0.3 * field, 0.5 * field, 0.2 * field])  # [C, H, W], as a model sees it
    signs = ["absolute", "positive", "negative", "all"]
    tiles = [viz.overlay(photo, values, sign=sign) for sign in signs]
    labels = [f'sign="{sign}"' for sign in signs]
    viz.grid(tiles, rows=1, labels=labels).save(HERE / "overlay_grid.png", optimize=True)


def plot_classes() -> None:
    model, info = models.load("digits")
    x, _ = models.held_out("digits", n=4)
    attribution = saliency.gradients(model, x, classes=[0, 1, 2, 3, 4])
    fig = viz.plot_classes(
        attribution,
        x,
        class_names=info.class_names,
        sign="all",
        mean=info.mean,
        std=info.std,
        cell_size=1.5,
    )
    fig.savefig(HERE / "plot_classes.png", dpi=64, pil_kwargs={"optimize": True})


if __name__ == "__main__":
    overlay_grid()
    plot_classes()
