"""Draw every picture of the docs site from the bundled models: docs/_scripts/pictures.py.

The docs build runs this (through ``docs/_scripts/hooks.py``) into a cache keyed by its inputs,
and serves the files as ``img/generated/NAME.png``; nothing here is committed except the README's
picture (``--readme`` rewrites ``docs/img/readme.png``; a test checks it is current). Every picture
is deterministic: bundled weights, held-out data, fixed seeds. Nothing is timed here: the
benchmark chart is drawn from the numbers ``benchmarks/engine.py`` saved.

Each function below draws one picture for one page and says which.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # a checkout without installing

import saliency  # noqa: E402
from saliency import audit, models, viz  # noqa: E402
from saliency.viz.class_grid import class_grid  # noqa: E402

README = REPO / "docs" / "img" / "readme.png"
BENCHMARK = REPO / "docs" / "img" / "benchmark-engine.json"
PICTURES: dict[str, Callable[[Path], None]] = {}
# Figures: the site's text colour and a size that reads at the content width (about 760 px).
DPI = 100


def picture(name: str):
    def register(fn):
        PICTURES[name] = fn
        return fn

    return register


def _digits(n: int = 3):
    model, info = models.load("digits")
    x, y = models.held_out("digits", n=n)
    black = (0.0 - info.mean[0]) / info.std[0]  # a black pixel in the model's input space
    return model, info, x, y, black


def _grid(attributions, x, y, info, **options):
    return class_grid(
        attributions,
        x,
        labels=y,
        class_names=info.class_names,
        mean=info.mean,
        std=info.std,
        value_range=(0.0, 1.0),
        **options,
    )


def _save(image, path: Path) -> None:
    image.save(path, format="PNG", optimize=True)


def _savefig(fig, path: Path) -> None:
    fig.savefig(path, dpi=DPI, metadata={"Software": None}, pil_kwargs={"optimize": True})


def _cosine(a, b) -> float:
    flat_a, flat_b = a.values.flatten(2), b.values.flatten(2)
    return float(torch.nn.functional.cosine_similarity(flat_a, flat_b, dim=2).mean())


# -- README, home page and methods -----------------------------------------------------------


def readme_picture():
    """The README's and home page's picture: every class of three digits, two methods."""
    torch.manual_seed(0)
    model, info, x, y, black = _digits(3)
    return _grid(
        {
            "gradients": saliency.gradients(model, x),
            "Integrated Gradients": saliency.integrated_gradients(
                model, x, baseline=black, steps="auto"
            ),
        },
        x,
        y,
        info,
        title="Three held-out digits, all ten classes explained in one call per method",
        notes={"gradients": "d logit / d pixel", "Integrated Gradients": "from a black image"},
    )


@picture("readme")
def _readme(out: Path) -> None:
    _save(readme_picture(), out)


@picture("demo-summary")
def demo_summary(out: Path) -> None:
    """docs/cli.md: what ``saliency demo`` writes as summary.png (three digits)."""
    from saliency.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        with open(os.devnull, "w") as sink:
            stdout, sys.stdout = sys.stdout, sink
            try:
                code = main(["demo", "--out", tmp, "--samples", "3"])
            finally:
                sys.stdout = stdout
        if code != 0:
            raise RuntimeError(f"saliency demo exited with {code}")
        shutil.copy(Path(tmp) / "summary.png", out)


@picture("gradients")
def gradients_page(out: Path) -> None:
    """methods/gradients.md: gradients and gradient x input of every class."""
    model, info, x, y, _ = _digits(3)
    _save(
        _grid(
            {
                "gradients": saliency.gradients(model, x),
                "x input": saliency.gradients(model, x, times_input=True),
            },
            x,
            y,
            info,
            title="saliency.gradients(model, x): all ten classes of three held-out digits",
            notes={"x input": "times_input=True"},
        ),
        out,
    )


@picture("smoothgrad")
def smoothgrad_page(out: Path) -> None:
    """methods/smoothgrad.md: SmoothGrad at two noise levels beside the gradients."""
    model, info, x, y, _ = _digits(3)
    grads = saliency.gradients(model, x)
    rows = {"gradients": grads}
    notes = {"gradients": "no noise"}
    for noise in (0.15, 0.5):
        smooth = saliency.smoothgrad(model, x, n_samples=50, noise=noise, seed=0)
        name = f"noise {noise:.0%}"
        rows[name] = smooth
        notes[name] = f"cosine to gradients {_cosine(grads, smooth):.3f}"
    _save(
        _grid(
            rows,
            x,
            y,
            info,
            title="SmoothGrad (50 samples) beside the gradients it averages",
            notes=notes,
        ),
        out,
    )


@picture("integrated-gradients")
def integrated_gradients_page(out: Path) -> None:
    """methods/integrated-gradients.md: IG from two baselines, every row within 1 %."""
    model, info, x, y, black = _digits(3)
    rows = {
        "black baseline": saliency.integrated_gradients(model, x, baseline=black, steps="auto"),
        "blur baseline": saliency.integrated_gradients(model, x, baseline="blur", steps="auto"),
    }
    notes = {}
    for name, a in rows.items():
        gap = audit.completeness(a).relative_gap.max()
        notes[name] = f"worst gap {float(gap):.2%}"
    _save(
        _grid(
            rows,
            x,
            y,
            info,
            title='integrated_gradients(model, x, baseline=..., steps="auto"): every class',
            notes=notes,
        ),
        out,
    )


@picture("gradcam")
def gradcam_page(out: Path) -> None:
    """methods/gradcam.md: Grad-CAM of every class at the last convolution."""
    from functools import partial

    model, info, x, y, _ = _digits(3)
    cam = saliency.gradcam(model, x, layer="features.3", mode="nearest")
    smooth = saliency.smoothgrad(
        model, x, method=partial(saliency.gradcam, layer="features.3", mode="nearest"),
        n_samples=16, seed=0,
    )  # fmt: skip
    _save(
        _grid(
            {"Grad-CAM": cam, "smoothed": smooth},
            x,
            y,
            info,
            sign="positive",
            title='gradcam(model, x, layer="features.3", mode="nearest"): every class',
            notes={"Grad-CAM": "4x4 maps, nearest", "smoothed": "SmoothGrad, 16 samples"},
        ),
        out,
    )


@picture("captum-methods")
def captum_methods_page(out: Path) -> None:
    """captum-methods.md: Captum's guided backprop through from_captum, beside our gradients."""
    from captum.attr import GuidedBackprop

    model, info, x, y, _ = _digits(3)
    _save(
        _grid(
            {
                "gradients": saliency.gradients(model, x),
                "guided backprop": saliency.from_captum(GuidedBackprop, model, x),
            },
            x,
            y,
            info,
            title="from_captum(GuidedBackprop, model, x) beside saliency.gradients(model, x)",
            notes={"guided backprop": "Captum, per class"},
        ),
        out,
    )


@picture("text-tokens")
def text_page(out: Path) -> None:
    """text.md: token attributions of both classes of the sentiment model."""
    model, info = models.load("sentiment")
    ids, _ = models.held_out("sentiment", n=4)
    ig = saliency.integrated_gradients(model, ids, layer=model.embedding, baseline=0, steps=32)
    picture = viz.tokens(
        saliency.token_scores(ig),
        models.tokens("sentiment", ids),
        class_names=info.class_names,
        skip="<pad>",
    )
    picture.save(out)


# -- audits ------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _mean_curve(result, rows):
    curves = result.curves[rows].double()
    random = result.random_curves[rows].double()
    return curves.mean(0).numpy(), random.mean(0).numpy()


@picture("completeness")
def completeness_page(out: Path) -> None:
    """audit/completeness.md: IG's worst relative gap against the number of steps, per rule."""
    model, _info, x, _, black = _digits(8)
    fig = _figure(6.4, 3.4)
    ax = fig.subplots()
    steps = [4, 8, 16, 32, 64, 128]
    for rule in ("gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left"):
        worst, median = [], []
        for n in steps:
            a = saliency.integrated_gradients(model, x, baseline=black, steps=n, rule=rule)
            gap = audit.completeness(a).relative_gap.flatten()
            worst.append(float(gap.max()))
            median.append(float(gap.median()))
        (line,) = ax.plot(steps, median, marker="o", ms=3, label=f"{rule}, median row")
        ax.plot(steps, worst, ls="--", color=line.get_color(), lw=1, label=f"{rule}, worst row")
    ax.axhline(0.01, color="black", lw=0.8)
    ax.text(steps[0], 0.0105, "tol = 1%", fontsize=8, va="bottom")
    ax.set(xscale="log", yscale="log", xlabel="steps (points on the path)")
    ax.set_ylabel("relative completeness gap")
    ax.set_xticks(steps, [str(s) for s in steps])
    ax.set_title("Integrated Gradients on 8 digits x 10 classes, black baseline", fontsize=10)
    ax.legend(fontsize=7, ncols=2)
    _savefig(fig, out)


@picture("deletion-insertion")
def deletion_page(out: Path) -> None:
    """audit/deletion-insertion.md: mean curves of each digit's label, map order vs random."""
    model, _info, x, y, black = _digits(64)
    methods = {
        "Integrated Gradients": saliency.integrated_gradients(model, x, baseline=black, steps=32),
        "gradients": saliency.gradients(model, x),
    }
    fig = _figure(7.6, 3.2)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (kind, metric) in zip(axes, (("deletion", audit.deletion),
                                         ("insertion", audit.insertion)), strict=True):  # fmt: skip
        for i, (name, a) in enumerate(methods.items()):
            r = metric(model, x, a, substrate=black, output="softmax", seed=0)
            rows = a.classes == y[:, None]  # each digit's own label
            curve, random = _mean_curve(r, rows)
            fractions = r.fractions.numpy()
            ax.plot(fractions, curve, color=f"C{i}", label=f"{name} (area {curve.mean():.2f})")
            if i == 0:
                ax.plot(fractions, random, color="0.4", ls="--",
                        label=f"random order (area {random.mean():.2f})")  # fmt: skip
        ax.set_title(f"{kind}: pixels {'removed' if kind == 'deletion' else 'put back'}, "
                     "most important first", fontsize=9)  # fmt: skip
        ax.set_xlabel(f"fraction of pixels {'set to black' if kind == 'deletion' else 'restored'}")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("probability of the label (mean of 64 digits)")
    _savefig(fig, out)


@picture("road")
def road_page(out: Path) -> None:
    """audit/road.md: ROAD's MoRF and LeRF curves beside the random order."""
    model, _info, x, y, _ = _digits(64)
    a = saliency.gradients(model, x, y[:, None], times_input=True)
    fig = _figure(6.4, 3.2)
    ax = fig.subplots()
    rows = torch.ones_like(a.classes, dtype=torch.bool)
    for i, order in enumerate(("morf", "lerf")):
        r = audit.road(model, x, a, order=order, output="softmax", seed=0)
        curve, random = _mean_curve(r, rows)
        label = "most relevant first (MoRF)" if order == "morf" else "least relevant first (LeRF)"
        ax.plot(
            r.fractions.numpy(), curve, color=f"C{i}", label=f"{label}, area {curve.mean():.2f}"
        )
        if i == 0:
            ax.plot(r.fractions.numpy(), random, color="0.4", ls="--",
                    label=f"random order, area {random.mean():.2f}")  # fmt: skip
    ax.set(xlabel="fraction of pixels imputed from their neighbours",
           ylabel="probability of the label (mean of 64)")  # fmt: skip
    ax.set_title("ROAD on gradient x input of 64 digits", fontsize=10)
    ax.legend(fontsize=8)
    _savefig(fig, out)


@picture("infidelity-sensitivity")
def infidelity_page(out: Path) -> None:
    """audit/infidelity-sensitivity.md: both metrics for three methods (lower is better)."""
    from functools import partial

    model, _info, x, _y, _black = _digits(32)
    methods = {
        "gradients": saliency.gradients,
        "SmoothGrad": partial(saliency.smoothgrad, n_samples=20, seed=0),
        "gradient x input": partial(saliency.gradients, times_input=True),
    }
    infid, sens = [], []
    for method in methods.values():
        a = method(model, x)
        infid.append(float(audit.infidelity(model, x, a, seed=0).infidelity.median()))
        sens.append(float(audit.sensitivity_max(model, x, method, attribution=a, seed=0)
                          .sensitivity.median()))  # fmt: skip
    fig = _figure(7.2, 2.8)
    axes = fig.subplots(1, 2)
    names = list(methods)
    for ax, values, title in zip(axes, (infid, sens), ("infidelity", "max-sensitivity"),
                                 strict=True):  # fmt: skip
        ax.barh(names, values, color=["C0", "C1", "C2"])
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.3g}", va="center", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.margins(x=0.3)
    axes[1].set_yticks([])
    fig.suptitle("median over 32 digits x 10 classes (log scale; lower is better)", fontsize=9)
    _savefig(fig, out)


@picture("randomization")
def randomization_page(out: Path) -> None:
    """audit/randomization.md: the cascade, two digits' own classes."""
    from saliency.audit.randomization_figures import plot_randomization

    model, info, x, y, _ = _digits(2)
    r = audit.randomization_test(model, x, saliency.gradients, seed=0, keep_maps=True)
    fig = plot_randomization(r, samples=[0, 1], classes=[int(y[0])], class_names=info.class_names)
    _savefig(fig, out)


@picture("class-sensitivity")
def class_sensitivity_page(out: Path) -> None:
    """audit/class-sensitivity.md: one digit's 10 x 10 similarity of its class maps."""
    from saliency.audit.randomization_figures import plot_class_similarity

    model, info, x, _, _ = _digits(8)
    r = audit.class_sensitivity(saliency.gradients(model, x))
    fig = plot_class_similarity(r, sample=0, class_names=info.class_names)
    _savefig(fig, out)


@picture("margins")
def margins_page(out: Path) -> None:
    """audit/margins.md: which class each held-out digit is nearest to, and how far."""
    model, _info = models.load("digits")
    x, y = models.held_out("digits")
    m = audit.margins(model, x, saliency.gradients(model, x), labels=y)
    counts = np.zeros((10, 10), dtype=int)
    for ref, near in zip(m.reference.tolist(), m.nearest.tolist(), strict=True):
        counts[ref, near] += 1
    fig = _figure(7.6, 3.3)
    left, right = fig.subplots(1, 2, width_ratios=[1.1, 1])
    image = left.imshow(counts, cmap="Blues")
    for i, j in zip(*np.nonzero(counts), strict=True):
        left.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                  color="white" if counts[i, j] > counts.max() / 2 else "black")  # fmt: skip
    left.set(xticks=range(10), yticks=range(10), xlabel="nearest other class",
             ylabel="label")  # fmt: skip
    left.set_title(f"{len(x)} held-out digits: nearest class", fontsize=9)
    fig.colorbar(image, ax=left, shrink=0.8)
    d = m.nearest_distance.numpy()
    right.hist(d[np.isfinite(d)], bins=30, color="C0")
    right.axvline(0, color="black", lw=0.8)
    right.set(xlabel="distance to the nearest class (input units)", ylabel="digits")
    right.set_title(f"median {np.median(d):.2f}; {int((d < 0).sum())} already across", fontsize=9)
    _savefig(fig, out)


@picture("runs-report")
def runs_page(out: Path) -> None:
    """audit/runs.md: a screenshot of the report.html of a real run (64 digits)."""
    model, info = models.load("digits")
    x, y = models.held_out("digits", n=64)
    with tempfile.TemporaryDirectory() as tmp:
        result = audit.run(
            model, (x, y), out_dir=Path(tmp) / "run", methods="gradients",
            metrics=["deletion", "class_sensitivity"], batch_size=32,
            class_names=info.class_names, mean=info.mean, std=info.std,
        )  # fmt: skip
        screenshot(Path(result.report), out, height=1400)


def screenshot(
    page: Path, out: Path, *, width: int = 1280, height: int | None = None, before: str = ""
) -> None:
    """A PNG of ``page`` as headless Chromium shows it at ``width`` pixels (offline), after the
    JavaScript ``before`` (e.g. a hover) has run in it."""
    chromium = os.environ.get("SALIENCY_CHROMIUM") or shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        chromium = None
    if chromium is None:
        raise RuntimeError(
            "the docs need headless Chromium for the report's screenshot: apt-get install -y "
            "chromium and pip install playwright (the dev extra), or set SALIENCY_CHROMIUM"
        )
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            context = browser.new_context(viewport={"width": width, "height": height or 900})
            # The page must be self-contained: refuse anything that is not a local file.
            context.route(
                "**/*",
                lambda r: r.continue_() if r.request.url.startswith(("file:", "data:", "blob:"))
                else r.abort(),
            )  # fmt: skip
            view = context.new_page()
            view.goto(page.resolve().as_uri(), wait_until="load")
            if before:
                view.evaluate(before)
            view.screenshot(path=str(out), full_page=height is None)
        finally:
            browser.close()


# -- generation.md ----------------------------------------------------------------------------


def _generation(n: int, method: str, **options):
    lm, info = models.load("reverse")
    prompts, _ = models.held_out("reverse", n=n)
    return saliency.explain_generation(
        lm, prompts, attention_mask=(prompts != 0).long(), max_new_tokens=9, method=method,
        tokenizer=info.vocabulary, **options,
    )  # fmt: skip


GENERATION_PAGE = REPO / "docs" / "generation.md"
GENERATION_N = 200
GENERATION_METHODS = {  # the rows of the table: label, method, options
    "gradients": ("gradients", {}),
    "gradient x input": ("x_input", {}),
    "Integrated Gradients (adaptive steps, zero baseline)": (
        "integrated_gradients",
        {"steps": "auto"},
    ),
    "SmoothGrad (8 copies, noise 0.15, seed 0)": ("smoothgrad", {"n_samples": 8, "seed": 0}),
}


def hit_rates(n: int = GENERATION_N, methods: dict = GENERATION_METHODS) -> list[list[str]]:
    """Rows ``[method, hits (norm), hits (sum), chance]`` in percent: the share of generated
    letters whose top-scored context token is the prompt letter it copies."""
    prompts, _ = models.held_out("reverse", n=n)
    sources = models.sources("reverse", prompts)
    known = sources >= 0
    rows = []
    for label, (method, options) in methods.items():
        a = _generation(n, method, keep_values=True, **options)
        seen = a.visible  # what each step sees: the real columns before its own token
        cells = []
        for scores in (a.values.norm(dim=-1), a.values.sum(-1)):  # reduce="norm", "sum"
            if method in ("gradients", "smoothgrad") and len(cells) == 1:
                cells.append("(no meaning)")  # the sum of a gradient's components
                continue
            top = torch.where(seen, scores, -torch.inf).argmax(-1)
            cells.append(f"{100 * float((top == sources)[known].float().mean()):.1f} %")
        chance = 100 * float((1 / seen.sum(-1).float())[known].mean())
        rows.append([label, *cells, f"{chance:.1f} %"])
    return rows


def _hits_table(rows: list[list[str]]) -> str:
    header = ["method", "top token is the source (`reduce='norm'`)", "(`reduce='sum'`)", "chance"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|---|---|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def write_generation_table() -> None:
    """Rewrite the table of known answers in docs/generation.md (between its hits markers)."""
    text = GENERATION_PAGE.read_text()
    block = f"<!-- hits:start -->\n{_hits_table(hit_rates())}\n<!-- hits:end -->"
    marked = re.compile(r"<!-- hits:start -->.*?<!-- hits:end -->", re.S)
    GENERATION_PAGE.write_text(marked.sub(block, text))


@picture("generation-reverse")
def generation_page(out: Path) -> None:
    """generation.md: gradients beside Integrated Gradients of the bundled "reverse" language
    model for one held-out prompt, every generated letter by every context token."""
    from PIL import Image

    from saliency.viz.generation import generation_image

    pictures = [
        generation_image(_generation(1, "gradients"), 0, cell=22, font_size=13),
        generation_image(
            _generation(1, "integrated_gradients", steps=16), 0, cell=22, font_size=13
        ),
    ]
    canvas = Image.new(
        "RGB", (sum(p.width for p in pictures) + 20, max(p.height for p in pictures)), "white"
    )
    canvas.paste(pictures[0], (0, 0))
    canvas.paste(pictures[1], (pictures[0].width + 20, 0))
    _save(canvas, out)


@picture("generation-hover")
def generation_hover(out: Path) -> None:
    """generation.md: the hover view in headless Chromium, the third generated letter hovered,
    cropped to what it draws."""
    from PIL import Image

    from saliency.viz.generation import html_page

    third = "span.g[data-r='2']"
    hover = f'document.querySelector("{third}").dispatchEvent(new MouseEvent("mouseenter"))'
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "view.html"
        html_page(_generation(2, "gradients"), page)
        screenshot(page, out, width=760, height=300, before=hover)
    shot = Image.open(out).convert("RGB")
    rows = np.flatnonzero((np.asarray(shot) < 250).any(axis=(1, 2)))
    _save(shot.crop((0, 0, shot.width, int(rows.max()) + 12)), out)


# -- benchmarks and the pictures page -------------------------------------------------------


@picture("benchmark-engine")
def benchmark_chart(out: Path) -> None:
    """benchmarks.md: the speed-up over Captum (and the plain loop) against the classes, from
    the numbers benchmarks/engine.py measured (docs/img/benchmark-engine.json)."""
    results = json.loads(BENCHMARK.read_text())
    sweep = results.get("sweep")
    if not sweep:
        raise RuntimeError(f"{BENCHMARK} has no sweep: run python benchmarks/engine.py")
    fig = _figure(7.0, 3.6)
    ax = fig.subplots()
    for i, s in enumerate(sweep.values()):
        k = [p["classes"] for p in s["points"]]
        captum = [p["captum_ms"] / p["auto_ms"] for p in s["points"]]
        loop = [p["loop_ms"] / p["auto_ms"] for p in s["points"]]
        ax.plot(k, captum, marker="o", color=f"C{i}", label=f"{s['title']}: over Captum")
        ax.plot(k, loop, marker="s", ms=3, ls="--", color=f"C{i}",
                label=f"{s['title']}: over a plain loop")  # fmt: skip
        ax.annotate(f"{captum[-1]:.0f}x", (k[-1], captum[-1]), textcoords="offset points",
                    xytext=(4, 0), va="center", fontsize=8, color=f"C{i}")  # fmt: skip
    ax.axhline(1, color="black", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="number of classes explained (K)",
           ylabel="speed-up (times faster)")  # fmt: skip
    ticks = sorted({p["classes"] for s in sweep.values() for p in s["points"]})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_yticks([1, 2, 5, 10, 20, 50], ["1", "2", "5", "10", "20", "50"])
    ax.set_title("saliency.class_jacobian, every class in one call (CPU, median times)",
                 fontsize=10)  # fmt: skip
    ax.legend(fontsize=7)
    _savefig(fig, out)


@picture("pictures-overlay-grid")
def overlay_grid(out: Path) -> None:
    """pictures.md: one signed synthetic map over a photograph, under each ``sign`` option."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

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
    _save(viz.grid(tiles, rows=1, labels=labels), out)


@picture("pictures-plot-classes")
def plot_classes(out: Path) -> None:
    """pictures.md: viz.plot_classes of four digits and classes 0-4."""
    model, info = models.load("digits")
    x, _ = models.held_out("digits", n=4)
    attribution = saliency.gradients(model, x, classes=[0, 1, 2, 3, 4])
    fig = viz.plot_classes(
        attribution, x, class_names=info.class_names, sign="all", mean=info.mean, std=info.std,
        cell_size=1.5,
    )  # fmt: skip
    fig.savefig(out, dpi=64, metadata={"Software": None}, pil_kwargs={"optimize": True})


def draw(out_dir: Path, names: list[str] | None = None, log=print) -> list[Path]:
    """Draw ``names`` (default: all) into ``out_dir`` as NAME.png; return the files."""
    import matplotlib

    matplotlib.use("Agg")
    torch.set_num_threads(1)  # small models; steadier on a shared machine
    out_dir.mkdir(parents=True, exist_ok=True)
    done = []
    for name in names or list(PICTURES):
        start = time.perf_counter()
        path = out_dir / f"{name}.png"
        torch.manual_seed(0)
        PICTURES[name](path)
        done.append(path)
        log(f"drew {path.name} in {time.perf_counter() - start:.1f} s")
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "site-pictures")
    parser.add_argument("--only", nargs="*", choices=list(PICTURES))
    parser.add_argument("--readme", action="store_true", help=f"rewrite {README}")
    parser.add_argument(
        "--generation-table", action="store_true", help=f"rewrite the table in {GENERATION_PAGE}"
    )
    args = parser.parse_args(argv)
    if args.generation_table:
        write_generation_table()
        print(f"wrote the table of {GENERATION_PAGE}")
        return
    if args.readme:
        _save(readme_picture(), README)
        print(f"wrote {README}")
        return
    draw(args.out, args.only)


if __name__ == "__main__":
    main()
