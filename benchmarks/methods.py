"""All-class SmoothGrad and Integrated Gradients against Captum looped over the classes.

For each model, ``saliency.smoothgrad`` (``n_samples=50``) and ``saliency.integrated_gradients``
(``steps=50``, Gauss-Legendre, zero baseline) explain all ``C = 10`` classes in one call each.
Captum explains one target per call, so its rows loop over the classes:
``NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=50,
nt_samples_batch_size=50, stdevs=0.1, target=c, abs=False)`` and
``IntegratedGradients(model).attribute(x, target=c, n_steps=50, internal_batch_size=50 * B)``,
its batching set so that every noisy sample or path point goes through in one pass, as ours do.
Both SmoothGrads use an absolute noise standard deviation of 0.1.

Round 1 checks that both compute the same thing, on classes 0 and ``C - 1``: Integrated Gradients
must agree to 1e-3 of the largest value; Captum's NoiseTunnel is handed our noise (its
``torch.normal`` draw is swapped for the copies ``saliency.smoothgrad`` draws with the same seed)
and must agree likewise. That round also measures peak extra memory (resident-set growth of one
call on CPU, allocator peak on CUDA; Captum's over the two-class loop, which frees each class
before the next). The later rounds are timed, rows in rotating order, and the median is reported
(five timed rounds; one for the 3x32x32 CNN, where Captum's loop alone takes half a minute).

Threads: one by default, as in ``benchmarks/engine.py``: on a shared 2-core machine two intra-op
threads stall whenever another process holds a core. ``--threads 0`` keeps torch's default.

A second table times the layer methods the same way, for every class: ``saliency.gradcam`` against
Captum's ``LayerGradCam`` (+ ``LayerAttribution.interpolate``) and
``saliency.integrated_gradients(..., layer=...)`` against ``LayerIntegratedGradients``, looped over
the classes, on the bundled digits CNN, a HuggingFace ResNet with 100 classes and a HuggingFace BERT
explained at its word embeddings (token ids in, 20 path points), all built from small configs
(random weights, no downloads). pytorch-grad-cam is not in the table: it imports torchvision (and
OpenCV and ttach) at import time, and torchvision does not import beside the CPU torch used here.

Run: ``python benchmarks/methods.py`` (a few minutes on 2 CPU cores; ``--help``).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
sys.path.insert(1, str(_HERE.parent))  # run from a checkout without installing
from _models import MODELS, SPECS  # noqa: E402
from _report import fmt_mb, fmt_ms, machine, peak_memory, table, write_section  # noqa: E402

import saliency  # noqa: E402
from saliency import models as bundled  # noqa: E402

N = 50  # noisy samples and path points
STD = 0.1
SEED = 0
# name: (batch, rounds); the 3x32x32 CNN gets one timed round, as Captum takes ~35 s a round
CASES = {"mlp": (256, 6), "cnn8": (64, 6), "cnn32": (32, 2)}


def ours(method: str, model, x) -> Callable[[], saliency.Attribution]:
    if method == "smoothgrad":
        return lambda: saliency.smoothgrad(model, x, n_samples=N, noise_std=STD, seed=SEED)
    return lambda: saliency.integrated_gradients(model, x, steps=N)


def captum(method: str, model, x, classes) -> Callable[[], torch.Tensor]:
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    b = x.shape[0]
    if method == "smoothgrad":
        nt = NoiseTunnel(Saliency(model))

        def run():
            return torch.stack(
                [
                    nt.attribute(
                        x,
                        nt_type="smoothgrad",
                        nt_samples=N,
                        nt_samples_batch_size=N,
                        stdevs=STD,
                        target=c,
                        abs=False,
                    )
                    for c in classes
                ],
                1,
            )

        return run
    ig = IntegratedGradients(model)
    return lambda: torch.stack(
        [ig.attribute(x, target=c, n_steps=N, internal_batch_size=N * b) for c in classes], 1
    )


def our_noise_for_captum(x: torch.Tensor) -> torch.Tensor:
    """The copies saliency.smoothgrad draws with SEED, laid out sample-major as Captum adds them."""
    g = torch.Generator(device=x.device).manual_seed(SEED)
    draws = [
        torch.randn(x.shape, generator=g, dtype=x.dtype, device=x.device) * STD for _ in range(N)
    ]
    return torch.stack(draws, 1).reshape(-1, *x.shape[1:])


def check(name: str, method: str, model, x, device: str) -> tuple[int, int, str, str]:
    """Peak memory of both, after checking they agree on the first and last class; the largest
    difference and the engine strategy ours used."""
    c = SPECS[name][1]
    _trim()
    mine_peak, mine = _peak(ours(method, model, x), device)
    classes = [0, c - 1]
    theirs_fn = captum(method, model, x, classes)
    original = torch.normal
    if method == "smoothgrad":
        noise = our_noise_for_captum(x)
        torch.normal = lambda mean, std: noise  # Captum draws all copies in one call
    try:
        _trim()
        theirs_peak, theirs = _peak(theirs_fn, device)
    finally:
        torch.normal = original
    scale = float(theirs.abs().max())
    err = float((mine.values[:, classes] - theirs).abs().max()) / scale
    if err > 1e-3:
        raise AssertionError(f"{name} {method}: ours and Captum differ by {err:.2e} of the max")
    return mine_peak, theirs_peak, f"{err:.0e}", mine.params["strategy"]


def run_case(name: str, batch: int, rounds: int, device: str) -> list[list[str]]:
    model = MODELS[name]().to(device)
    shape, c = SPECS[name]
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1)).to(device)
    warm = torch.randn(2, *shape, device=device)
    for method in ("smoothgrad", "integrated_gradients"):
        ours(method, model, x)()  # the engine probes the model and times its strategies once
        captum(method, model, warm, [0])()  # Captum's kernels warmed up on a tiny batch
    checked = {m: check(name, m, model, x, device) for m in ("smoothgrad", "integrated_gradients")}
    rows = {
        (m, who): fn
        for m in ("smoothgrad", "integrated_gradients")
        for who, fn in (("ours", ours(m, model, x)), ("captum", captum(m, model, x, range(c))))
    }
    times: dict[tuple[str, str], list[float]] = {key: [] for key in rows}
    keys = list(rows)
    for r in range(rounds - 1):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            times[key].append(_time(rows[key], device))
    out = []
    for m, label in (
        ("smoothgrad", f"SmoothGrad n={N}"),
        ("integrated_gradients", f"IG {N} steps"),
    ):
        t_ours = statistics.median(times[(m, "ours")])
        t_captum = statistics.median(times[(m, "captum")])
        peak_ours, peak_captum, err, strategy = checked[m]
        out.append(
            [
                f"{name} ({'x'.join(map(str, shape))}, B={batch}, C={c})",
                label,
                fmt_ms(t_ours),
                fmt_ms(t_captum),
                f"{t_captum / t_ours:.1f}x",
                fmt_mb(peak_ours),
                fmt_mb(peak_captum),
                err,
                strategy,
            ]
        )
        print(" | ".join(out[-1]), flush=True)
    return out


# -- layer methods ---------------------------------------------------------------------------------

LAYER_STEPS = 20


def layer_cases(device: str) -> list[tuple[str, Callable, torch.Tensor, object, object, int]]:
    """``(title, model, x, gradcam layer or None, IG layer, rounds)`` for each model."""
    import transformers

    digits, _ = bundled.load("digits")
    x_digits, _ = bundled.held_out("digits", n=64)
    torch.manual_seed(0)
    resnet = transformers.ResNetForImageClassification(
        transformers.ResNetConfig(
            num_channels=3, embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1],
            num_labels=100,
        )
    ).eval()  # fmt: skip
    x_resnet = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    bert = transformers.BertForSequenceClassification(
        transformers.BertConfig(
            vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, max_position_embeddings=64, num_labels=10,
        )
    ).eval()  # fmt: skip
    ids = torch.randint(1, 1000, (16, 32), generator=torch.Generator().manual_seed(2))
    return [
        ("digits CNN (1x8x8, B=64, C=10)", digits, x_digits, "features.3", "features.1", 4),
        (
            "HF ResNet (3x64x64, B=8, C=100)",
            resnet,
            x_resnet,
            "resnet.encoder.stages.2",
            "resnet.embedder",
            2,
        ),
        ("HF BERT (32 tokens, B=16, C=10)", bert, ids, None, "bert.embeddings.word_embeddings", 2),
    ]


def layer_rows(device: str) -> list[list[str]]:
    from captum.attr import LayerAttribution, LayerGradCam, LayerIntegratedGradients

    out = []
    for title, model, x, cam_layer, ig_layer, rounds in layer_cases(device):
        model, x = model.to(device), x.to(device)

        def scores(*args, model=model):
            o = model(*args)
            return getattr(o, "logits", o)

        c = scores(x[:1]).shape[1]
        modules = dict(model.named_modules())
        base = torch.zeros_like(x)
        size = tuple(x.shape[2:]) if x.ndim == 4 else None
        jobs = {}
        if cam_layer is not None:
            gc = LayerGradCam(scores, modules[cam_layer])
            jobs["Grad-CAM"] = (
                lambda model=model, x=x, cam_layer=cam_layer: (
                    saliency.gradcam(model, x, layer=cam_layer, mode="nearest").values
                ),
                lambda classes, gc=gc, x=x, size=size: torch.stack(
                    [
                        LayerAttribution.interpolate(
                            gc.attribute(x, target=k, relu_attributions=True), size, "nearest"
                        )[:, 0].detach()
                        for k in classes
                    ],
                    1,
                ),
            )
        lig = LayerIntegratedGradients(scores, modules[ig_layer])
        jobs[f"layer IG {LAYER_STEPS} steps"] = (
            lambda model=model, x=x, ig_layer=ig_layer, base=base: (
                saliency.integrated_gradients(
                    model, x, layer=ig_layer, baseline=base, steps=LAYER_STEPS
                ).values
            ),
            lambda classes, lig=lig, x=x, base=base: torch.stack(
                [
                    lig.attribute(
                        x,
                        baselines=base,
                        target=k,
                        n_steps=LAYER_STEPS,
                        internal_batch_size=LAYER_STEPS * x.shape[0],
                    ).detach()
                    for k in classes
                ],
                1,
            ),
        )
        for label, (mine, theirs) in jobs.items():
            got = mine()  # also the engine's first call: probe and decision
            ref = theirs([0, c - 1])
            err = float((got[:, [0, c - 1]] - ref).abs().max()) / float(ref.abs().max())
            if err > 1e-3:
                raise AssertionError(f"{title} {label}: ours and Captum differ by {err:.2e}")
            t_ours, t_captum = [], []
            for r in range(rounds):
                pair = [(t_ours, mine), (t_captum, lambda theirs=theirs, c=c: theirs(range(c)))]
                for times, fn in pair if r % 2 == 0 else pair[::-1]:
                    times.append(_time(fn, device))
            row = [
                title,
                label,
                fmt_ms(statistics.median(t_ours)),
                fmt_ms(statistics.median(t_captum)),
                f"{statistics.median(t_captum) / statistics.median(t_ours):.1f}x",
                f"{err:.0e}",
            ]
            print(" | ".join(row), flush=True)
            out.append(row)
    return out


# -- adaptive Integrated Gradients ---------------------------------------------------------------


def adaptive_rows(device: str, n: int = 32) -> list[list[str]]:
    """``steps="auto"`` against fixed Gauss-Legendre steps on the digits model: the time and the
    rows whose relative completeness gap exceeds 1% (as ``saliency.audit.completeness`` counts),
    doubling the fixed steps until none does."""
    from saliency.audit import completeness

    model, info = bundled.load("digits")
    x, _ = bundled.held_out("digits", n=n)
    model, x = model.to(device), x.to(device)
    black = (0.0 - info.mean[0]) / info.std[0]
    rows = []

    def measure(label: str, **kw) -> int:
        start = time.perf_counter()
        a = saliency.integrated_gradients(model, x, baseline=black, **kw)
        _sync(device)
        seconds = time.perf_counter() - start
        over = int(completeness(a, tol=0.01).exceeds.sum())
        points = a.params.get("steps_used")
        mean_points = (
            f"{sum(map(sum, points)) / (len(points) * len(points[0])):.0f}"
            if points
            else str(kw["steps"])
        )
        rows.append([label, fmt_ms(seconds), str(over), mean_points])
        print(" | ".join(rows[-1]), flush=True)
        return over

    measure('steps="auto", tol=0.01', steps="auto", tol=0.01)
    steps = 50
    while measure(f"steps={steps} (Gauss-Legendre)", steps=steps) and steps < 6400:
        steps *= 2
    return rows


def adaptive_table(args: argparse.Namespace) -> None:
    n = 32
    rows = adaptive_rows(args.device, n)
    header = ["Integrated Gradients", "time (ms)", "rows over 1%", "points per row (mean)"]
    markdown = "\n\n".join(
        [
            "## Adaptive Integrated Gradients on the digits model (`benchmarks/methods.py`)",
            f"Machine: {machine()}.",
            table(header, rows),
            f"{n} held-out digits, all 10 classes ({n * 10} rows), black baseline. `steps='auto'` "
            "starts at 33 trapezoid points and halves the spacing only for rows whose relative "
            "gap exceeds 1%, reusing every point; the fixed rows double the Gauss-Legendre steps "
            "until no row exceeds 1%. Rows over 1% as `saliency.audit.completeness` counts them.",
        ]
    )
    print(markdown)
    if not args.no_write:
        write_section("methods-adaptive", markdown)


def _time(fn: Callable[[], object], device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _peak(fn: Callable[[], object], device: str) -> tuple[int, object]:
    box = {}
    peak = peak_memory(lambda: box.setdefault("out", fn()), device)
    return peak, box["out"]


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(CASES), help="comma-separated subset")
    parser.add_argument("--threads", type=int, default=1, help="0: torch's default")
    parser.add_argument("--rounds", type=int, default=0, help="1 + timed rounds (0: per model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--only", choices=["inputs", "layers", "adaptive"], default=None, help="run one table"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
    if args.only in (None, "adaptive"):
        adaptive_table(args)
    if args.only in (None, "layers"):
        layers_table(args)
    if args.only in ("layers", "adaptive"):
        return
    load_before = os.getloadavg()[0]
    rows = []
    for name in args.models.split(","):
        batch, rounds = CASES[name]
        rows += run_case(name, batch, args.rounds or rounds, args.device)
    load_after = os.getloadavg()[0]
    rounds_text = ", ".join(
        f"{name}: {(args.rounds or CASES[name][1]) - 1}" for name in args.models.split(",")
    )
    header = [
        "model", "method", "ours (ms)", "Captum loop (ms)", "speed-up",
        "ours peak (MB)", "Captum peak (MB)", "max diff", "engine strategy",
    ]  # fmt: skip
    markdown = "\n\n".join(
        [
            "## All-class SmoothGrad and Integrated Gradients vs Captum (`benchmarks/methods.py`)",
            f"Machine: {machine()}; 1-minute load average {load_before:.1f} before and "
            f"{load_after:.1f} after the run.",
            table(header, rows),
            f"Ours: one call for all 10 classes (`saliency.smoothgrad(..., n_samples={N}, "
            f"noise_std={STD})`, `saliency.integrated_gradients(..., steps={N})`, default "
            "`strategy='auto'` and chunking). Captum: one call per class, all samples or path "
            "points in one internal batch. Times are medians of the timed rounds (rows in "
            f"rotating order; {rounds_text}); peak memory is "
            "one call's extra resident set (Captum's: a two-class loop, which frees each class "
            "before the next). Max diff: largest difference on classes 0 and 9 over the largest "
            "value, with Captum's NoiseTunnel handed our noise for the check.",
        ]
    )
    print()
    print(markdown)
    if not args.no_write:
        write_section("methods", markdown)


def layers_table(args: argparse.Namespace) -> None:
    load_before = os.getloadavg()[0]
    rows = layer_rows(args.device)
    load_after = os.getloadavg()[0]
    header = ["model", "method", "ours (ms)", "Captum loop (ms)", "speed-up", "max diff"]
    markdown = "\n\n".join(
        [
            "## Layer methods for every class vs Captum (`benchmarks/methods.py`)",
            f"Machine: {machine()}; 1-minute load average {load_before:.1f} before and "
            f"{load_after:.1f} after the run.",
            table(header, rows),
            "Ours: one call for all classes (`saliency.gradcam(model, x, layer=..., "
            "mode='nearest')`, `saliency.integrated_gradients(model, x, layer=..., "
            f"steps={LAYER_STEPS})`). Captum: `LayerGradCam` + `LayerAttribution.interpolate`, and "
            "`LayerIntegratedGradients` with every path point in one internal batch, one call per "
            "class. Times are medians of interleaved rounds (the engine's first call, which "
            "measures and decides, is the checked call before them). Max diff: on the first and "
            "last class, over the largest value. Grad-CAM at `features.3` / the last ResNet "
            "stage; layer IG at `features.1` / the ResNet stem / BERT's word embeddings (token "
            "ids in, zero = pad baseline).",
        ]
    )
    print(markdown)
    if not args.no_write:
        write_section("methods-layers", markdown)


if __name__ == "__main__":
    main()
