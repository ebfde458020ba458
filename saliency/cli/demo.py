"""``saliency demo``: the bundled digits model explained with every method, in one run."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from .. import models, viz
from .._atomic import atomic_write
from ..attribution import Attribution
from ..audit import completeness
from ..methods import gradients, integrated_gradients, smoothgrad
from ..viz.class_grid import class_grid
from .options import check_free, check_out

# SmoothGrad's usual setting (Smilkov et al. 2017: 10-20 % of the value range).
NOISE, SAMPLES = 0.15, 50
TOL = 0.01  # adaptive IG: every row within 1 % of F(x) - F(baseline)


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
    results: dict[str, Attribution] = {
        "gradients": gradients(model, x),
        "smoothgrad": smoothgrad(model, x, n_samples=SAMPLES, noise=NOISE, seed=0),
        "ig": integrated_gradients(model, x, baseline=black, steps="auto", tol=TOL),
    }
    # 8x8 digits: enlarge pixels and maps alike (nearest neighbour), so that each map pixel
    # covers the input pixel it belongs to instead of being blurred across its neighbours.
    images = viz.enlarge(x * info.std[0] + info.mean[0])
    factor = images.shape[-1] // x.shape[-1]
    files: list[Path] = []
    for name, attr in results.items():
        files += viz.save_overlays(
            SimpleNamespace(values=_enlarged(attr.values, factor), classes=attr.classes),
            images,
            out / name,
            class_names=info.class_names,
            overwrite=args.overwrite,
            sign="all",
            value_range=(0.0, 1.0),
        )
    summary = out / "summary.png"
    check_free([summary], args.overwrite)
    similarity = _cosine(results["gradients"], results["smoothgrad"])
    picture = class_grid(
        {
            "gradients": results["gradients"],
            "SmoothGrad": results["smoothgrad"],
            "Integrated Gradients": results["ig"],
        },
        x,
        labels=labels,
        class_names=info.class_names,
        mean=info.mean,
        std=info.std,
        value_range=(0.0, 1.0),
        title=f"{len(x)} held-out digits: a map of every class, by method",
        notes={
            "gradients": "d logit / d pixel",
            "SmoothGrad": f"{SAMPLES} samples, noise {NOISE:.0%}",
            "Integrated Gradients": "from a black image",
        },
        tile=96,
    )
    _save_image(picture, summary)
    elapsed = time.perf_counter() - start

    ig = results["ig"]
    correct = int((ig.outputs.argmax(1) == labels).sum())
    used = torch.tensor(ig.params["steps_used"]).float()
    print(f"Explained {len(x)} held-out digits ({correct} classified correctly) for all 10 classes")
    print(
        f"with vanilla gradients, SmoothGrad ({SAMPLES} samples) and Integrated Gradients "
        f'(steps="auto": {int(used.min())} to {int(used.max())} points per row, '
        f"mean {used.mean():.0f})."
    )
    print(
        "\nIntegrated Gradients completeness gap per class, |sum(attr) - (F(x) - F(baseline))|"
        "\n(F: the class's logit; baseline: a black image; rows whose logit hardly changes are"
        "\nmeasured against a thousandth of the sample's largest logit instead):"
    )
    relative = _print_gap(completeness(ig, tol=TOL), info.class_names)
    worst = float(relative.max())
    if worst <= TOL:
        print(f"Every row is within {TOL:.0%} of F(x) - F(baseline) (worst {worst:.2%}).")
    else:
        missed = int((relative > TOL).sum())
        print(
            f"{missed} of {relative.numel()} rows are further than {TOL:.0%} from "
            f"F(x) - F(baseline) (worst {worst:.2%}): raise max_steps, or try another baseline."
        )
    print(
        f"\nSmoothGrad against gradients: mean cosine similarity {similarity:.3f}. This small "
        "CNN is nearly linear\naround each digit, so averaging over noise changes its "
        "gradients little."
    )
    print(f"\nWrote {len(files)} overlays under {out}/{{gradients,smoothgrad,ig}}/")
    print(f"Summary of every digit, class and method: {summary}")
    print(f"Done in {elapsed:.1f} s.")
    return 0


def _enlarged(values: torch.Tensor, factor: int) -> torch.Tensor:
    if factor == 1:
        return values
    return values.repeat_interleave(factor, -1).repeat_interleave(factor, -2)


def _cosine(a: Attribution, b: Attribution) -> float:
    flat_a, flat_b = a.values.flatten(2), b.values.flatten(2)
    return float(torch.nn.functional.cosine_similarity(flat_a, flat_b, dim=2).mean())


def _print_gap(check, names) -> torch.Tensor:
    gap, relative = check.abs_gap, check.relative_gap  # [B, K]; classes are all C in order
    for k in range(gap.shape[1]):
        print(
            f"  class {names[k]}: max {gap[:, k].max():.2e}, "
            f"max relative to |F(x) - F(baseline)| {relative[:, k].max():.2%}"
        )
    return relative


def _save_image(image, path: Path) -> None:
    with atomic_write(path) as f:
        image.save(f, format="PNG")
