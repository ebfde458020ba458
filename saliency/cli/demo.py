"""``saliency demo``: the bundled digits model explained with every method, in one run."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .. import models, viz
from .._atomic import atomic_write
from ..attribution import Attribution
from ..methods import gradients, integrated_gradients, smoothgrad
from .options import check_free, check_out


def demo(args: argparse.Namespace) -> int:
    """All-class gradients, SmoothGrad and IG for held-out digits; overlays, a summary, the gap."""
    start = time.perf_counter()
    out = Path(args.out)
    check_out(out)
    if args.samples < 1:
        raise ValueError(f"--samples: expected a positive number of digits, got {args.samples}")
    out.mkdir(parents=True, exist_ok=True)
    model, info = models.load("digits")
    x, labels = models.held_out("digits", n=args.samples)
    # Pixel 0 (black) in the model's normalised space: the natural IG baseline for digits.
    black = (0.0 - info.mean[0]) / info.std[0]
    runs = {
        "gradients": lambda: gradients(model, x),
        "smoothgrad": lambda: smoothgrad(model, x, n_samples=50, noise=0.15, seed=0),
        "ig": lambda: integrated_gradients(model, x, baseline=black, steps=50),
    }
    images = viz.enlarge(x * info.std[0] + info.mean[0])
    results: dict[str, Attribution] = {}
    files: list[Path] = []
    for name, run in runs.items():
        results[name] = attr = run()
        files += viz.save_overlays(
            attr,
            images,
            out / name,
            class_names=info.class_names,
            overwrite=args.overwrite,
            sign="all",
            value_range=(0.0, 1.0),
        )
    summary = out / "summary.png"
    check_free([summary], args.overwrite)
    _save_image(_summary(results, images, info.class_names), summary)
    elapsed = time.perf_counter() - start

    correct = int((results["ig"].outputs.argmax(1) == labels).sum())
    print(f"Explained {len(x)} held-out digits ({correct} classified correctly) for all 10 classes")
    print("with vanilla gradients, SmoothGrad (50 samples) and Integrated Gradients (50 steps).")
    with torch.no_grad():
        change = model(x) - model(torch.full_like(x, black))
    print("\nIntegrated Gradients completeness gap per class, |sum(attr) - (F(x) - F(baseline))|:")
    _print_gap(results["ig"], change, info.class_names)
    print(f"\nWrote {len(files)} overlays under {out}/{{gradients,smoothgrad,ig}}/")
    print(f"Summary grid (samples x classes, per method): {summary}")
    print(f"Done in {elapsed:.1f} s.")
    return 0


def _summary(results: dict[str, Attribution], images: torch.Tensor, names) -> object:
    tiles, labels = [], []
    for b in range(min(4, images.shape[0])):
        for method, attr in results.items():
            for k, class_id in enumerate(attr.classes[b].tolist()):
                score = float(attr.outputs[b, class_id])
                tiles.append(viz.overlay(images[b], attr.values[b, k], sign="all"))
                labels.append(f"{method} {names[class_id]}: {score:.1f}")
    return viz.grid(tiles, rows=len(tiles) // results["ig"].values.shape[1], labels=labels)


def _print_gap(attr: Attribution, change: torch.Tensor, names) -> None:
    gap = attr.delta.abs()  # [B, K]; classes are all C in order
    relative = gap / change.abs().clamp_min(1e-12)
    for k in range(attr.values.shape[1]):
        print(
            f"  class {names[k]}: max {gap[:, k].max():.2e}, "
            f"max relative to |F(x) - F(baseline)| {relative[:, k].max():.2%}"
        )


def _save_image(image, path: Path) -> None:
    with atomic_write(path) as f:
        image.save(f, format="PNG")
