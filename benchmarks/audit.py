"""Audit metrics on the bundled digits model: time per (sample, class), and against Quantus 0.6.

Same model (the bundled digits CNN, eval mode), data (64 held-out digits with their labels) and
explanation (vanilla gradients: ``saliency.gradients`` here, ``quantus.explain(method="Gradient")``
in Quantus, Captum's signed ``Saliency`` summed over channels) on both sides, and Quantus's own
batching (``batch_size=64``: the whole set in one batch). Quantus evaluates one class per sample
(the label, or one random other class); ours evaluate all 10 classes in one call, so times are
compared per (sample, class) evaluated.

- MPRT vs ``randomization_test``: cascading from the top, Spearman rank correlation of absolute
  maps (Quantus's defaults: ``layer_order="top_down"``, ``abs=True``, ``normalise=True``, which
  Spearman ignores). Agreement: ours is run again with Quantus's re-initialisation (its
  ``torch.manual_seed(seed + 1)`` then ``reset_parameters()`` per layer, passed as ``reinit=``)
  and the per-layer Spearman of each sample's label row is compared with Quantus's.
- RandomLogit vs ``class_sensitivity``: Quantus compares the label's map with one random other
  class per sample (``num_classes=10``: its default of 1000 crashes on a 10-class model); ours
  compares all 45 pairs of classes. Spearman on signed maps (``abs=False``) on both sides, so that
  the numbers can be compared: the random classes Quantus draws are recorded and our matrix is read
  at (label, random class). A second pair of rows uses SSIM (RandomLogit's default); those
  definitions differ (Quantus: 1-D SSIM of flattened maps scaled by one batch-wide maximum; ours:
  2-D SSIM of each map scaled by its own maximum), so no agreement is checked there.
- PixelFlipping vs ``saliency.audit.deletion``: one pixel per step (``features_in_step=1``, so
  ``steps=64``), Quantus's ``"black"`` baseline (each sample's minimum) as the substrate, pixels in
  decreasing signed attribution (``abs=False``), the softmax of the label tracked (PixelFlipping's
  default ``softmax=True``), no random-order reference (Quantus has none). Agreement: each sample's
  label curve against Quantus's (ours has one more point, ``x`` itself, first).

Times include computing the explanations on both sides (Quantus is called with ``a_batch=None``).
NumPy 2.4 removed ``np.trapz``, which Quantus's AUC helper calls; this script aliases it to
``np.trapezoid`` before calling Quantus (only here, only when missing).

Threads: one by default (``--threads 0`` keeps torch's default), as the other benchmarks.

Run: ``python benchmarks/audit.py`` (about a minute on 2 CPU cores; ``--help``). Needs
``quantus==0.6.0`` (``pip install quantus==0.6.0 --constraint <(echo torch==2.13.0)``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
sys.path.insert(1, str(_HERE.parent))  # run from a checkout without installing
from _report import machine, table, write_section  # noqa: E402

import saliency  # noqa: E402
from saliency import audit, models  # noqa: E402

N = 64
SEED = 42  # Quantus's default seed; ours are seeded alike for the timing rows


def quantus_module():
    if not hasattr(np, "trapz"):  # NumPy >= 2.4; Quantus's calculate_auc still calls np.trapz
        np.trapz = np.trapezoid  # noqa: NPY201 (the alias Quantus needs)
    import quantus

    return quantus


class Recorder:
    """Quantus's explain function with the targets it was asked for remembered."""

    def __init__(self, quantus) -> None:
        self.quantus = quantus
        self.targets: list[np.ndarray] = []

    def __call__(self, model, inputs, targets, **kwargs):
        self.targets.append(np.asarray(targets).copy())
        return self.quantus.explain(model, inputs, targets, **kwargs)


def setup():
    model, _ = models.load("digits")
    x, y = models.held_out("digits", N)
    return model, x, y


# -- the comparisons ---------------------------------------------------------------------------
def mprt(quantus, model, x, y):
    metric = quantus.MPRT(layer_order="top_down", seed=SEED, disable_warnings=True)

    def theirs():
        return metric(
            model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None,
            explain_func=quantus.explain, explain_func_kwargs={"method": "Gradient"},
            device="cpu", batch_size=N,
        )  # fmt: skip

    def ours():
        return audit.randomization_test(
            model, x, saliency.gradients, similarity="spearman", seed=SEED
        )

    def quantus_reinit(module):
        torch.manual_seed(SEED + 1)
        module.reset_parameters()

    scores = theirs()
    mine = audit.randomization_test(
        model, x, saliency.gradients, similarity="spearman", reinit=quantus_reinit
    )
    if list(scores) != list(mine.steps):
        raise AssertionError(f"MPRT steps differ: Quantus {list(scores)}, ours {mine.steps}")
    at_label = mine.similarity["spearman"][:, torch.arange(N), y].numpy()
    diff = float(np.abs(at_label - np.array([scores[s] for s in mine.steps])).max())
    steps = len(mine.steps) - 1
    return {
        "name": "MPRT vs `randomization_test`",
        "theirs": theirs,
        "ours": ours,
        "their_rows": N,
        "our_rows": N * 10,
        "agreement": f"{diff:.0e} (Spearman, {steps} layers x {N} labels)",
        "settings": f"cascading top-down, Spearman of absolute maps, {steps} layers + the original",
    }


def random_logit(quantus, model, x, y, similarity: str):
    func = {
        "spearman": quantus.similarity_func.correlation_spearman,
        "ssim": quantus.similarity_func.ssim,
    }[similarity]
    metric = quantus.RandomLogit(
        num_classes=10, seed=SEED, similarity_func=func, abs=False, disable_warnings=True
    )
    recorder = Recorder(quantus)

    def theirs():
        recorder.targets.clear()
        return metric(
            model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None,
            explain_func=recorder, explain_func_kwargs={"method": "Gradient"},
            device="cpu", batch_size=N,
        )  # fmt: skip

    def ours():
        return audit.class_sensitivity(
            saliency.gradients(model, x), similarity=similarity, abs=False
        )

    agreement = "n/a (definitions differ)"
    if similarity == "spearman":
        scores = np.asarray(theirs())
        other = torch.as_tensor(recorder.targets[-1])  # [label maps, random-class maps]
        mine = ours().matrix[torch.arange(N), y, other].numpy()
        agreement = f"{float(np.abs(mine - scores).max()):.0e} (Spearman, {N} pairs)"
    return {
        "name": f"RandomLogit vs `class_sensitivity` ({similarity})",
        "theirs": theirs,
        "ours": ours,
        "their_rows": N,
        "our_rows": N * 10,
        "agreement": agreement,
        "settings": f"signed maps; Quantus: label vs 1 random class; ours: all 45 pairs of {10}",
    }


def pixel_flipping(quantus, model, x, y):
    """PixelFlipping vs deletion, when the deletion metric exists (written by another engineer)."""
    deletion = getattr(audit, "deletion", None)
    if deletion is None:
        return None
    metric = quantus.PixelFlipping(
        features_in_step=1, perturb_baseline="black", disable_warnings=True
    )
    d = x[0].numel()
    # Quantus's curve: softmax of the label (its default softmax=True) after each of the D flips,
    # pixels in decreasing signed attribution, replaced by each sample's minimum ("black").
    settings = dict(
        steps=d, substrate=x.amin(dim=(1, 2, 3), keepdim=True), features="pixels", abs=False,
        output="softmax", random_order=False,
    )  # fmt: skip

    def theirs():
        return metric(
            model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None,
            explain_func=quantus.explain, explain_func_kwargs={"method": "Gradient"},
            device="cpu", batch_size=N,
        )  # fmt: skip

    def ours():
        return deletion(model, x, saliency.gradients(model, x), **settings)

    curves = np.asarray(theirs())  # [B, D]
    mine = ours().curves[torch.arange(N), y, 1:].numpy()  # point 0 is x itself
    diff = float(np.abs(mine - curves).max())
    return {
        "name": "PixelFlipping vs `deletion`",
        "theirs": theirs,
        "ours": ours,
        "their_rows": N,
        "our_rows": N * 10,
        "agreement": f"{diff:.0e} (softmax curves, {N} labels x {d} steps)",
        "settings": f"one pixel per step ({d} steps), signed order, each sample's minimum as "
        "substrate, softmax score; ours: `deletion(..., steps=64, substrate=x.amin((1, 2, 3), "
        "keepdim=True), abs=False, output='softmax', random_order=False)`",
    }


def our_metrics(model, x, y) -> list[tuple[str, Callable[[], object], int]]:
    """Every metric of ours on the same data: (label, call, (sample, class) rows evaluated)."""
    grads = saliency.gradients(model, x)
    rows = [
        (
            "`randomization_test` (Spearman + SSIM, incl. its 6 gradient calls)",
            lambda: audit.randomization_test(model, x, saliency.gradients, seed=SEED),
            N * 10,
        ),
        (
            "`class_sensitivity` (Spearman, given the gradients)",
            lambda: audit.class_sensitivity(grads),
            N * 10,
        ),
        (
            "`class_sensitivity` (SSIM, given the gradients)",
            lambda: audit.class_sensitivity(grads, similarity="ssim"),
            N * 10,
        ),
        (
            "`margins` (given the gradients)",
            lambda: audit.margins(model, x, grads, labels=y),
            N * 10,
        ),
    ]
    # The perturbation metrics come from another module; timed here with their defaults when
    # present.
    given = "(defaults, given the gradients)"
    for name in ("deletion", "insertion", "road", "infidelity"):
        fn = getattr(audit, name, None)
        if fn is not None:
            rows.append((f"`{name}` {given}", _bind(fn, model, x, grads), N * 10))
    if hasattr(audit, "sensitivity_max"):
        rows.append(
            (
                "`sensitivity_max` (defaults: 10 perturbations, each a gradients call)",
                lambda: audit.sensitivity_max(model, x, saliency.gradients, seed=0),
                N * 10,
            )
        )
    if hasattr(audit, "completeness"):
        ig = saliency.integrated_gradients(model, x, steps=20)
        rows.append(("`completeness` (given IG)", lambda: audit.completeness(ig), N * 10))
    return rows


def _bind(fn, model, x, grads) -> Callable[[], object]:
    return lambda: fn(model, x, grads, seed=0)


# -- timing ------------------------------------------------------------------------------------
def timed(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds of each call, rounds in rotating order so that load hits all alike."""
    for fn in calls.values():
        fn()  # warm-up: the engine picks its strategy once per model
    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return {n: statistics.median(t) for n, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="0: torch's default")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per row")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    quantus = quantus_module()
    model, x, y = setup()
    load_before = os.getloadavg()[0]
    start = time.perf_counter()

    comparisons = [
        mprt(quantus, model, x, y),
        random_logit(quantus, model, x, y, "spearman"),
        random_logit(quantus, model, x, y, "ssim"),
    ]
    flipping = pixel_flipping(quantus, model, x, y)
    if flipping is not None:
        comparisons.append(flipping)
    calls = {}
    for i, c in enumerate(comparisons):
        calls[(i, "theirs")] = c["theirs"]
        calls[(i, "ours")] = c["ours"]
    ours_only = our_metrics(model, x, y)
    for label, fn, _ in ours_only:
        calls[label] = fn
    medians = timed(calls, args.rounds)

    rows = []
    for i, c in enumerate(comparisons):
        t_theirs, t_ours = medians[(i, "theirs")], medians[(i, "ours")]
        per_theirs = t_theirs / c["their_rows"]
        per_ours = t_ours / c["our_rows"]
        rows.append(
            [
                c["name"],
                f"{t_theirs * 1e3:.1f} / {c['their_rows']}",
                f"{per_theirs * 1e3:.3f}",
                f"{t_ours * 1e3:.1f} / {c['our_rows']}",
                f"{per_ours * 1e3:.3f}",
                f"{per_theirs / per_ours:.1f}x",
                c["agreement"],
                c["settings"],
            ]
        )
        print(" | ".join(rows[-1]), flush=True)
    own = [
        [label, f"{medians[label] * 1e3:.2f}", f"{medians[label] / n * 1e3:.4f}"]
        for label, _, n in ours_only
    ]
    for row in own:
        print(" | ".join(row), flush=True)
    elapsed = time.perf_counter() - start
    load_after = os.getloadavg()[0]
    header = [
        "metric", "Quantus ms / (sample, class) rows", "Quantus ms per row",
        "ours ms / rows", "ours ms per row", "speed-up per (sample, class)",
        "max |ours - Quantus|", "settings",
    ]  # fmt: skip
    import quantus as q

    markdown = "\n\n".join(
        [
            "## Audit metrics vs Quantus (`benchmarks/audit.py`)",
            f"Machine: {machine()}; Quantus {q.__version__}, NumPy {np.__version__}; 1-minute "
            f"load average {load_before:.1f} before and {load_after:.1f} after the run; whole "
            f"run {elapsed:.0f} s.",
            f"Bundled digits CNN, {N} held-out digits, vanilla gradients on both sides, Quantus's "
            f"batching (batch_size={N}). Quantus evaluates one class per sample (the label, or "
            "one random other class), ours all 10 classes in one call: times are compared per "
            "(sample, class) row evaluated. Times include computing the explanations (Quantus "
            f"with `a_batch=None`) and are medians of {args.rounds} rounds in rotating order.",
            table(header, rows),
            "Agreement is checked where the definitions match: MPRT with Quantus's own "
            "re-initialisation passed as `reinit=` (its per-layer Spearman of the label row), "
            "RandomLogit at the random class Quantus drew for each sample, PixelFlipping's "
            "curve of each sample's label (ours without its first point, `x` itself). The "
            "pixel-flipping floor is the model's forward passes (one per sample, class and "
            "step on both sides); the speed-up there is Quantus's per-step overhead, and moves "
            "between 5x and 7x from run to run on this shared machine.",
            "### Every metric of ours, same model and data",
            table(
                ["metric", "ms per call (64 samples, 10 classes)", "ms per (sample, class)"], own
            ),
        ]
    )
    print()
    print(markdown)
    if not args.no_write:
        write_section("audit", markdown)


if __name__ == "__main__":
    main()
