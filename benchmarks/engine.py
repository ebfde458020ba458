"""All-class input Jacobians: ``saliency.class_jacobian`` against what users write today.

For each model, every row computes the same ``[B, K, *input]`` Jacobian (checked against the user
loop to 1e-5 before anything is timed, so no row can win by computing something else):

- user loop: one forward, then ``torch.autograd.grad(out[:, i], x, torch.ones(B),
  retain_graph=True)`` for each class ``i``;
- Captum: ``Saliency(model).attribute(x, target=i, abs=False)`` for each class (a forward and a
  backward per class);
- ``torch.func.vmap(torch.func.jacrev(f))`` with ``f`` a single-sample function;
- ``torch.autograd.grad(out, x, eye, is_grads_batched=True)`` after one forward;
- each named engine strategy that applies (``forward`` only when the input has fewer features than
  classes, ``head`` only when the model ends in a linear layer narrower than the classes), and
  ``auto`` (its later calls reuse what the first one measured and decided), and ``auto``'s first
  call and ``loop``'s, timed in every round after ``forget_strategy_choices()`` (both measure the
  model and check it: the probe; ``auto`` also decides);
- the floor ``t_forward(B) + K x t_backward(B)``: one forward building the graph, plus ``K`` times
  the median of one backward of one class's scores from a retained graph, measured in the same run.

Rows are timed in interleaved rounds (the order rotates every round) and the median is reported,
so that load on a shared machine hits every row alike; compare the ratios, not the absolute times.
Peak extra memory is one call's resident-set growth on CPU (allocator memory on CUDA), measured on
the first (checked) call of each row after ``gc.collect()`` and ``malloc_trim``.

The 3x224x224, 1000-class model runs under ``max_memory="1GB"``: its Jacobian alone is 1.2 GB at
``B = 2``, so it is streamed with ``saliency.iter_class_jacobian`` and every row (the user loop
included) hands each chunk to the same consumer (a projection and a norm per class) instead of
holding the whole result; the check compares those summaries for all 1000 classes and the full
gradients of a few classes.

Threads: one by default. On a shared 2-core machine, two intra-op threads stall every parallel
region whenever another process holds a core (one backward of the 3x32x32 CNN measured 10-18x
slower with 2 threads than with 1 under a load average of 7), which drowns every ratio; pass
``--threads 0`` on an idle machine or a GPU host to keep torch's default.

The sweep (``--models sweep``) repeats Captum's loop, the plain loop and ``auto`` on an MLP and
a small ResNet with 1 to 200 classes, for the chart of the speed-up against the number of classes.

Results go to ``docs/img/benchmark-engine.json`` (the docs build draws its chart from it; cases
not run keep their saved numbers) and the ``engine`` section of ``docs/benchmarks.md`` is
rendered from that file.

Run: ``python benchmarks/engine.py`` (about ten minutes on 2 CPU cores; ``--help`` for options).
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
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
sys.path.insert(1, str(_HERE.parent))  # run from a checkout without installing
from _models import MODELS, SPECS  # noqa: E402
from _report import (  # noqa: E402
    Target,
    load_results,
    machine,
    median_time,
    peak_memory,
    save_results,
    table,
    write_section,
)

import saliency  # noqa: E402
from saliency.engine import auto as _auto  # noqa: E402
from saliency.engine import forget_strategy_choices, parse_memory  # noqa: E402

ATOL = 1e-5
NAMED = ("loop", "vmap", "replicate", "forward", "head")


@dataclass(frozen=True)
class Case:
    key: str  # name in benchmarks/_models.py
    title: str
    batch: int
    repeat: int  # timed rounds
    max_memory: str | None = None
    stream: bool = False  # consume chunks from iter_class_jacobian instead of holding [B, K, ...]
    slow_s: float = 20.0  # a row is timed in fewer rounds when its rounds would exceed this


CASES = [
    Case("mlp", "MLP 30-64-64-10, B=256, K=10", 256, repeat=31),
    Case("cnn8", "CNN 1x8x8 (BatchNorm, max-pool), B=64, K=10", 64, repeat=21),
    Case("cnn32", "CNN 3x32x32, B=32, K=10", 32, repeat=15),
    Case("resnet64", "ResNet 3x64x64, B=8, K=100", 8, repeat=7),
    Case(
        "imagenet224",
        'ResNet-like 3x224x224, B=2, K=1000, max_memory="1GB" (streamed)',
        2,
        repeat=4,
        max_memory="1GB",
        stream=True,
        slow_s=60.0,
    ),
]


@dataclass
class Row:
    label: str
    fn: Callable[[], object]
    id: str = ""  # what the report and the targets look rows up by
    exact: bool = True
    times: list[float] = field(default_factory=list)
    memory: int | None = None
    rounds: int = 0
    note: str = ""

    @property
    def time(self) -> float:
        return statistics.median(self.times)


# -- helpers -----------------------------------------------------------------------------------


def _trim() -> None:
    """Collect garbage and hand free heap pages back to the OS, so that RSS growth is honest."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _timed_peak(fn: Callable[[], object], device: str) -> tuple[object, float, int]:
    """One call of ``fn``: its result, wall time and peak extra memory."""
    _trim()
    box = {}

    def call():
        start = time.perf_counter()
        box["out"] = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        box["t"] = time.perf_counter() - start

    mem = peak_memory(call, device)
    return box["out"], box["t"], mem


def _ends_in_narrow_linear(model: nn.Module, x: torch.Tensor, k: int) -> bool:
    """Whether the model output is the output of a final ``nn.Linear`` with fewer inputs than K."""
    calls = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, o: calls.append((mod, o)))
        for m in model.modules()
        if isinstance(m, nn.Linear)
    ]
    try:
        with torch.no_grad():
            out = model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return bool(calls) and calls[-1][1] is out and calls[-1][0].in_features < k


class Sink:
    """What a user does with streamed chunks: reduce each class's gradient to a few numbers.

    Every streamed row (the user loop included) pays for the same reduction. With ``keep``, the
    sink also records the summaries of all classes and the full gradients of ``KEEP`` classes,
    for the correctness check.
    """

    KEEP = (0, 1, 499, 999)

    def __init__(self, x: torch.Tensor, k: int, keep: bool):
        gen = torch.Generator().manual_seed(1)
        self.v = torch.randn(x[0].numel(), generator=gen).to(x)
        self.keep = keep
        if keep:
            self.proj = x.new_zeros(x.shape[0], k)
            self.norm = x.new_zeros(x.shape[0], k)
            self.full: dict[int, torch.Tensor] = {}

    def __call__(self, ids: torch.Tensor, values: torch.Tensor) -> None:
        flat = values.reshape(values.shape[0], values.shape[1], -1)
        proj = flat @ self.v
        norm = flat.norm(dim=2)
        if self.keep:
            self.proj.scatter_(1, ids, proj)
            self.norm.scatter_(1, ids, norm)
            for j, c in enumerate(ids[0].tolist()):
                if c in self.KEEP:
                    self.full[c] = values[:, j].clone()


# -- rows ---------------------------------------------------------------------------------------


def held_rows(model: nn.Module, x: torch.Tensor, k: int, case: Case) -> list[Row]:
    """Rows that return the whole ``[B, K, *input]`` Jacobian."""
    from captum.attr import Saliency

    b = x.shape[0]
    mm = case.max_memory

    def user_loop():
        xr = x.detach().requires_grad_()
        out = model(xr)
        ones = torch.ones(b, dtype=x.dtype, device=x.device)
        grads = [torch.autograd.grad(out[:, i], xr, ones, retain_graph=True)[0] for i in range(k)]
        return torch.stack(grads, 1)

    sal = Saliency(model)

    def captum_loop():
        return torch.stack([sal.attribute(x, target=i, abs=False) for i in range(k)], 1)

    def single(xi):
        return model(xi.unsqueeze(0)).squeeze(0)

    jac = torch.func.vmap(torch.func.jacrev(single))

    def vmap_jacrev():
        return jac(x)

    eye = torch.eye(k, dtype=x.dtype, device=x.device).unsqueeze(1).expand(k, b, k).contiguous()

    def batched_grad():
        xr = x.detach().requires_grad_()
        out = model(xr)
        (g,) = torch.autograd.grad(out, xr, eye, is_grads_batched=True)
        return g.transpose(0, 1)

    rows = [
        Row(LABELS["user_loop"], user_loop, "user_loop"),
        Row(LABELS["captum"], captum_loop, "captum"),
        Row(LABELS["vmap_jacrev"], vmap_jacrev, "vmap_jacrev"),
        Row(LABELS["batched_grad"], batched_grad, "batched_grad"),
    ]
    for name in _named(model, x, k):
        rows.append(
            Row(
                f'strategy="{name}"',
                lambda name=name: saliency.class_jacobian(model, x, strategy=name, max_memory=mm),
                f"strategy:{name}",
            )
        )
    rows.append(
        Row(
            LABELS["loop_first"],
            lambda: _first(
                lambda: saliency.class_jacobian(model, x, strategy="loop", max_memory=mm)
            ),
            "loop_first",
        )
    )
    rows.append(
        Row(
            LABELS["auto_first"],
            lambda: _first(lambda: saliency.class_jacobian(model, x, max_memory=mm)),
            "auto_first",
        )
    )
    rows.append(
        Row(LABELS["auto"], lambda: saliency.class_jacobian(model, x, max_memory=mm), "auto")
    )
    return rows


# What each row is, for a reader who has not seen the code.
LABELS = {
    "user_loop": "plain loop: 1 forward, then K autograd.grad",
    "captum": "Captum Saliency, one call per class",
    "vmap_jacrev": "torch.func: vmap(jacrev) per sample",
    "batched_grad": "autograd.grad(is_grads_batched=True)",
    "loop_first": 'strategy="loop", first call on a new model',
    "auto_first": "saliency, first call on a new model (measures, then decides)",
    "auto": 'saliency, default strategy="auto"',
}


def _first(call: Callable[[], object]) -> object:
    """A first call: nothing measured or decided about the model yet."""
    forget_strategy_choices()
    return call()


def stream_rows(model: nn.Module, x: torch.Tensor, k: int, case: Case) -> list[Row]:
    """Rows that hand each chunk of the Jacobian to a :class:`Sink` (one ``[B, k, *input]`` at a
    time) instead of holding it whole."""
    b = x.shape[0]
    mm = case.max_memory

    def user_loop(sink):
        xr = x.detach().requires_grad_()
        out = model(xr)
        ones = torch.ones(b, dtype=x.dtype, device=x.device)
        for i in range(k):
            (g,) = torch.autograd.grad(out[:, i], xr, ones, retain_graph=True)
            sink(torch.full((b, 1), i, device=x.device), g.unsqueeze(1))

    def engine(name):
        def run(sink):
            for ids, values in saliency.iter_class_jacobian(model, x, strategy=name, max_memory=mm):
                sink(ids, values)

        return run

    rows = [Row(LABELS["user_loop"] + ", streamed", user_loop, "user_loop")]
    for name in ("loop", "head"):
        if name == "head" and not _ends_in_narrow_linear(model, x, k):
            continue
        rows.append(Row(f'strategy="{name}"', engine(name), f"strategy:{name}"))
    rows.append(
        Row(LABELS["auto_first"], lambda sink: _first(lambda: engine("auto")(sink)), "auto_first")
    )
    rows.append(Row(LABELS["auto"], engine("auto"), "auto"))
    return rows


def _named(model: nn.Module, x: torch.Tensor, k: int) -> list[str]:
    names = ["loop", "vmap", "replicate"]
    if x[0].numel() < k:
        names.append("forward")
    if _ends_in_narrow_linear(model, x, k):
        names.append("head")
    return names


# -- the run ------------------------------------------------------------------------------------


def run_case(case: Case, device: str, log) -> str:
    model = MODELS[case.key]().to(device)
    shape, k = SPECS[case.key]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(case.batch, *shape, generator=gen).to(device)
    b = x.shape[0]
    _auto.forget(model)

    rows = (stream_rows if case.stream else held_rows)(model, x, k, case)
    first_row = rows[-2]

    # auto's very first call in this process for this model (the first_row repeats it).
    if case.stream:
        _, first, _ = _timed_peak(lambda: first_row.fn(Sink(x, k, keep=False)), device)
    else:
        _, first, _ = _timed_peak(first_row.fn, device)
    decisions = list(getattr(_auto, "_DECISIONS", {}).get(model, {}).values())
    picked = decisions[0] if len(decisions) == 1 else "?"
    log(f"  auto's first call {first:.3f}s, picked {picked}")

    # First call of every row: correctness against the user loop, peak memory, warm-up.
    ref = None
    for row in rows:
        try:
            if case.stream:
                sink = Sink(x, k, keep=True)
                _, t, row.memory = _timed_peak(lambda row=row, sink=sink: row.fn(sink), device)
                got = sink
            else:
                got, t, row.memory = _timed_peak(row.fn, device)
        except Exception as e:  # a strategy that cannot run this model is reported, not timed
            row.note = f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
            log(f"  {row.label}: {row.note}")
            continue
        if ref is None:
            ref = got
        else:
            _check(row.label, got, ref, case.stream)
        row.rounds = max(1, min(case.repeat, int(case.slow_s / max(t, 1e-9))))
        log(f"  {row.label}: first call {t:.3f}s, checked, {row.rounds} timed rounds")
    rows = [r for r in rows if not r.note]

    # The floor's pieces, from a graph retained once: per round, one forward building the graph
    # and a block of consecutive single-class backward passes (per pass), so that the floor is
    # exposed to load like the rows are (a median of 0.1 ms pieces would dodge every preemption).
    def forward():
        xr = x.detach().requires_grad_()
        return xr, model(xr)

    xr, out = forward()
    ones = torch.ones(b, dtype=x.dtype, device=x.device)
    t_fwd: list[float] = []
    t_bwd: list[float] = []
    n_bwd = min(k, 50)

    def backwards(c0: int) -> None:
        for j in range(n_bwd):
            torch.autograd.grad(out[:, (c0 + j) % k], xr, ones, retain_graph=True)

    # Interleaved rounds, rotating the order.
    sink = Sink(x, k, keep=False) if case.stream else None
    for r in range(case.repeat):
        order = rows[r % len(rows) :] + rows[: r % len(rows)]
        for row in order:
            if r < row.rounds:
                fn = (lambda row=row: row.fn(sink)) if case.stream else row.fn
                row.times.append(median_time(fn, repeat=1, warmup=0))
        t_fwd.append(median_time(forward, repeat=1, warmup=0))
        t_bwd.append(median_time(lambda r=r: backwards(r * n_bwd), repeat=1, warmup=0) / n_bwd)
    floor = statistics.median(t_fwd) + k * statistics.median(t_bwd)

    return _result(case, rows, picked, floor, t_fwd, t_bwd, k, b)


def _check(label: str, got, ref, stream: bool) -> None:
    if stream:
        pairs = [("projection", got.proj, ref.proj), ("norm", got.norm, ref.norm)]
        pairs += [(f"class {c}", got.full[c], ref.full[c]) for c in Sink.KEEP]
        for what, a, b in pairs:
            # Summaries of 150k entries: compare relative to their size.
            tol = ATOL if what.startswith("class") else 1e-4 * float(b.abs().max())
            err = float((a - b).abs().max())
            if not err <= tol:
                raise AssertionError(f"{label}: {what} differs from the user loop by {err:.3g}")
        return
    if got.shape != ref.shape:
        raise AssertionError(f"{label}: shape {tuple(got.shape)} != {tuple(ref.shape)}")
    err = float((got - ref).abs().max())
    if not err <= ATOL:
        raise AssertionError(f"{label}: differs from the user loop by {err:.3g} (> {ATOL})")


def _result(case, rows, picked, floor, t_fwd, t_bwd, k, b) -> dict:
    """What one case measured, as the JSON the report and the docs' chart are drawn from."""
    return {
        "key": case.key,
        "title": case.title,
        "classes": k,
        "batch": b,
        "max_memory": case.max_memory,
        "picked": picked,
        "load": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "rows": [
            {
                "id": r.id,
                "label": r.label,
                "median_ms": r.time * 1e3,
                "min_ms": min(r.times) * 1e3,
                "peak_mb": None if r.memory is None else r.memory / 1e6,
                "runs": len(r.times),
            }
            for r in rows
        ],
        "floor": {
            "median_ms": floor * 1e3,
            "min_ms": (min(t_fwd) + k * min(t_bwd)) * 1e3,
            "forward_ms": statistics.median(t_fwd) * 1e3,
            "backward_ms": statistics.median(t_bwd) * 1e3,
            "runs": len(t_fwd),
        },
    }


def _short_title(result: dict) -> str:
    return result["title"].split(", B=")[0]


def _row(result: dict, row_id: str) -> dict | None:
    return next((r for r in result["rows"] if r["id"] == row_id), None)


def targets(result: dict) -> list[Target]:
    """The issue's goals for one case: auto against the best fixed strategy, the reverse-mode
    floor and (where set) raw batched autograd and Captum; first calls against later ones."""
    auto, first = _row(result, "auto"), _row(result, "auto_first")
    named = [r for r in result["rows"] if r["id"].startswith("strategy:")]
    best = min(named, key=lambda r: r["median_ms"])
    best_min = min(named, key=lambda r: r["min_ms"])
    floor = result["floor"]
    case = f"{_short_title(result)}, K={result['classes']}"

    def target(what, goal, value, value_min, ok, where=case) -> Target:
        return Target("engine", where, what, goal, value, ok(value), f"{value_min:.2f}")

    out = [
        target(
            "auto / best fixed strategy",
            "at most 1.05",
            auto["median_ms"] / best["median_ms"],
            auto["min_ms"] / best_min["min_ms"],
            lambda v: v <= 1.05,
            f"{case} ({best['id'].split(':')[1]})",
        ),
        target(
            "auto / reverse-mode floor (1 forward + K backward)",
            "at most 1.05",
            auto["median_ms"] / floor["median_ms"],
            auto["min_ms"] / floor["min_ms"],
            lambda v: v <= 1.05,
        ),
        target(
            "first call / best fixed strategy",
            "at most 1.3",
            first["median_ms"] / best["median_ms"],
            first["min_ms"] / best_min["min_ms"],
            lambda v: v <= 1.3,
        ),
    ]
    batched = _row(result, "batched_grad")
    if batched is not None and result["key"] == "mlp":
        out.append(
            target(
                "auto / autograd.grad(is_grads_batched=True)",
                "at most 1.1",
                auto["median_ms"] / batched["median_ms"],
                auto["min_ms"] / batched["min_ms"],
                lambda v: v <= 1.1,
            )
        )
    captum = _row(result, "captum")
    need = {"mlp": 10.0, "cnn32": 2.0}.get(result["key"])
    if captum is not None and need is not None:
        out.append(
            target(
                "speed-up over Captum",
                f"at least {need:g}",
                captum["median_ms"] / auto["median_ms"],
                captum["min_ms"] / auto["min_ms"],
                lambda v, need=need: v >= need,
            )
        )
    if result["max_memory"] is not None:
        budget = parse_memory(result["max_memory"]) / 1e6
        for r in [*named, first, auto]:
            peak = r["peak_mb"]
            out.append(
                Target(
                    "engine",
                    f"{case}, {_short(r)}",
                    f"peak extra memory / max_memory={result['max_memory']}",
                    "at most 1",
                    (peak if peak is not None else float("nan")) / budget,
                    peak is not None and peak <= budget,
                    f"{fmt_mb(peak)} MB",
                )
            )
    return out


def _short(row: dict) -> str:
    return {"auto": "auto", "auto_first": "the first call"}.get(row["id"], row["label"])


def fmt_mb(mb: float | None) -> str:
    return "n/a" if mb is None else f"{mb:.1f}"


def render(results: dict) -> str:
    """The engine's section of docs/benchmarks.md, from the saved results."""
    cases = [results["cases"][c.key] for c in CASES if c.key in results.get("cases", {})]
    md = [
        "## Engine: every class at once, against Captum and a plain loop {#engine}",
        f"Machine: {results['machine']}. Produced by `python benchmarks/engine.py`; "
        "the numbers are also in `docs/img/benchmark-engine.json`.",
    ]
    head = []
    for r in cases:
        auto, captum, loop = _row(r, "auto"), _row(r, "captum"), _row(r, "user_loop")
        head.append(
            [
                _short_title(r),
                str(r["classes"]),
                _ms(captum),
                _ms(loop),
                _ms(auto),
                _ratio(captum, auto),
                _ratio(loop, auto),
            ]
        )
    md.append(
        table(
            [
                "model",
                "classes",
                "Captum, one call per class (ms)",
                "plain loop (ms)",
                "saliency (ms)",
                "faster than Captum",
                "faster than the loop",
            ],
            head,
        )
    )
    md.append(
        "Median times of one call that returns the Jacobian of every class for the whole "
        "batch (the batch sizes are in the titles below). The plain loop is what most code "
        "writes: one forward pass, then one `torch.autograd.grad` per class. Captum's "
        "`Saliency` runs a forward *and* a backward pass per class. `saliency` is "
        '`saliency.class_jacobian(model, x)` with its default `strategy="auto"`, after its '
        "first call on the model ([first calls](#engine-details) are measured too). Every row "
        "computes the same numbers, checked against the loop to 1e-5 before timing."
    )
    sweep = results.get("sweep")
    if sweep:
        md.append(
            "![Speed-up of saliency over Captum and over a plain loop, against the number of "
            "classes](img/generated/benchmark-engine.png)"
        )
        md.append(_sweep_text(sweep))
    return "\n\n".join(md) + "\n"


def render_details(results: dict) -> str:
    """The per-model tables: every way to get the same Jacobian, timed side by side."""
    cases = [results["cases"][c.key] for c in CASES if c.key in results.get("cases", {})]
    md = []
    md.append(
        "## Engine: every way, per model {#engine-details}\n\n"
        "Each table times every way to get the same Jacobian: the fixed strategies of the "
        "engine (`loop`: one backward per class after a shared forward; `vmap`: the backward "
        "passes batched with `torch.func`; `replicate`: the batch copied once per class; "
        "`head`: through a final linear layer narrower than the classes), what `auto` picked, "
        "and the reverse-mode floor, one forward pass plus K single-class backward passes, "
        "timed in the same run. Rounds are interleaved in rotating order so that other jobs "
        "slow every row alike; `x fastest` compares medians; `fastest ms` is the quickest "
        "round. Peak extra memory is one call's resident-set growth, its result included. "
        f"Machine: {results['machine']}."
    )
    for r in cases:
        md.append(_case_table(r))
    return "\n\n".join(md) + "\n"


def headline(results: dict, link: str) -> str | None:
    """One sentence with the measured speed-up, for the README and the docs' home page."""
    cases = results.get("cases", {})
    mlp, resnet = cases.get("mlp"), cases.get("resnet64")
    if mlp is None or resnet is None:
        return None
    fast = _row(mlp, "captum")["median_ms"] / _row(mlp, "auto")["median_ms"]
    conv = _row(resnet, "captum")["median_ms"] / _row(resnet, "auto")["median_ms"]
    loop = _row(resnet, "user_loop")["median_ms"] / _row(resnet, "auto")["median_ms"]
    return (
        f"Measured on 2 CPU cores: **{fast:.0f}x faster than Captum** for all "
        f"{mlp['classes']} classes of a small MLP, {conv:.1f}x faster than Captum and "
        f"{loop:.1f}x faster than a plain `autograd.grad` loop for the {resnet['classes']} "
        f"classes of a small ResNet ([benchmarks]({link}))."
    )


def _ms(row: dict | None) -> str:
    return "" if row is None else f"{row['median_ms']:.2f}"


def _ratio(slow: dict | None, fast: dict | None) -> str:
    if slow is None or fast is None:
        return ""
    return f"{slow['median_ms'] / fast['median_ms']:.1f}x"


def _case_table(r: dict) -> str:
    fastest = min(row["median_ms"] for row in r["rows"])
    body = []
    for row in r["rows"]:
        label = row["label"]
        if row["id"] == "auto":
            label += f" (picked {r['picked']})"
        body.append(
            [
                label,
                f"{row['median_ms']:.2f}",
                f"{row['median_ms'] / fastest:.2f}",
                f"{row['min_ms']:.2f}",
                fmt_mb(row["peak_mb"]),
                str(row["runs"]),
            ]
        )
    floor, k = r["floor"], r["classes"]
    body.append(
        [
            f"floor: 1 forward + {k} backward passes "
            f"({floor['forward_ms']:.2f} + {k} x {floor['backward_ms']:.2f})",
            f"{floor['median_ms']:.2f}",
            f"{floor['median_ms'] / fastest:.2f}",
            f"{floor['min_ms']:.2f}",
            "",
            str(floor["runs"]),
        ]
    )
    header = ["way", "median ms", "x fastest", "fastest ms", "peak extra MB", "rounds"]
    load = r.get("load")
    note = f" 1-minute load average at the end: {load[0]:.1f}." if load else ""
    return f"### {r['title']}\n\n" + table(header, body) + (f"\n\n{note.strip()}" if note else "")


# -- speed-up against the number of classes -------------------------------------------------


@dataclass(frozen=True)
class Sweep:
    key: str
    title: str
    batch: int
    classes: tuple[int, ...]
    rounds: int


SWEEPS = [
    Sweep("mlp", "MLP 30-64-64-K, B=256", 256, (1, 2, 5, 10, 20, 50, 100, 200), rounds=15),
    Sweep("resnet64", "ResNet 3x64x64, B=8", 8, (2, 5, 10, 20, 50, 100), rounds=5),
]


def run_sweep(sweep: Sweep, device: str, log) -> dict:
    """Captum's loop, the plain loop and ``auto`` at every number of classes of ``sweep``."""
    from captum.attr import Saliency

    shape, _ = SPECS[sweep.key]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(sweep.batch, *shape, generator=gen).to(device)
    points = []
    for k in sweep.classes:
        model = MODELS[sweep.key](classes=k).to(device)
        sal = Saliency(model)

        def captum(model=model, k=k, sal=sal):
            return torch.stack([sal.attribute(x, target=i, abs=False) for i in range(k)], 1)

        def loop(model=model, k=k):
            xr = x.detach().requires_grad_()
            out = model(xr)
            ones = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
            return torch.stack(
                [torch.autograd.grad(out[:, i], xr, ones, retain_graph=True)[0] for i in range(k)],
                1,
            )

        def auto(model=model):
            return saliency.class_jacobian(model, x)

        ref = loop()
        _check("Captum", captum(), ref, False)
        first = time.perf_counter()
        _check("auto", auto(), ref, False)  # the first call: measures and decides
        first = time.perf_counter() - first
        rows = {"captum": [], "loop": [], "auto": []}
        fns = {"captum": captum, "loop": loop, "auto": auto}
        for r in range(sweep.rounds):
            names = list(rows)
            for name in names[r % 3 :] + names[: r % 3]:
                rows[name].append(median_time(fns[name], repeat=1, warmup=0))
        decisions = list(getattr(_auto, "_DECISIONS", {}).get(model, {}).values())
        point = {
            "classes": k,
            "picked": decisions[0] if len(decisions) == 1 else "?",
            "first_call_ms": first * 1e3,
            **{f"{n}_ms": statistics.median(t) * 1e3 for n, t in rows.items()},
            **{f"{n}_min_ms": min(t) * 1e3 for n, t in rows.items()},
        }
        log(
            f"  K={k}: Captum {point['captum_ms']:.2f} ms, loop {point['loop_ms']:.2f} ms, "
            f"auto {point['auto_ms']:.2f} ms (picked {point['picked']})"
        )
        points.append(point)
    return {"key": sweep.key, "title": sweep.title, "rounds": sweep.rounds, "points": points}


def _sweep_text(sweep: dict) -> str:
    lines = []
    for s in sweep.values():
        pts = s["points"]
        lo, hi = pts[0], pts[-1]
        lines.append(
            f"- {s['title']}: {lo['captum_ms'] / lo['auto_ms']:.1f}x faster than Captum at "
            f"K={lo['classes']}, {hi['captum_ms'] / hi['auto_ms']:.1f}x at K={hi['classes']}; "
            f"against the plain loop {lo['loop_ms'] / lo['auto_ms']:.1f}x and "
            f"{hi['loop_ms'] / hi['auto_ms']:.1f}x (`auto` picked "
            + ", ".join(sorted({p["picked"] for p in pts}))
            + ")."
        )
    return (
        "The chart repeats the comparison on two models with more and more classes (medians "
        "of interleaved rounds, after each model's first call):\n\n" + "\n".join(lines)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="*",
        default=[c.key for c in CASES] + ["sweep"],
        choices=[*MODELS, "sweep"],
        help="cases to run ('sweep': speed-up against the number of classes); the others keep "
        "their saved results",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1; 0 keeps torch's default, one per core)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="measure nothing: rewrite the report from docs/img/benchmark-engine.json",
    )
    args = parser.parse_args(argv)
    if args.render_only:
        args.models = []
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # Captum says so on every call for an input that does not require gradients, as ours don't.
    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results = (None if args.no_write else load_results("engine")) or {}
    results.setdefault("cases", {})
    if not args.render_only:
        results["machine"] = f"{machine()}; device {args.device}"
    for case in CASES:
        if case.key not in args.models:
            continue
        log(f"{case.title}")
        results["cases"][case.key] = run_case(case, args.device, log)
    if "sweep" in args.models:  # the chart's numbers
        results["sweep"] = {}
        for sweep in SWEEPS:
            log(f"sweep: {sweep.title}")
            results["sweep"][sweep.key] = run_sweep(sweep, args.device, log)
    results["targets"] = [
        t for c in CASES if c.key in results["cases"] for t in targets(results["cases"][c.key])
    ]
    md = render(results)
    print(md)
    if not args.no_write:
        save_results("engine", results)
        write_section("engine", md)
        write_section("engine-details", render_details(results))
        root = _HERE.parent
        for page, link in ((root / "README.md", "docs/benchmarks.md"),
                           (root / "docs" / "index.md", "benchmarks.md")):  # fmt: skip
            if (line := headline(results, link)) is not None:
                write_section("engine-speedup", line, page)


if __name__ == "__main__":
    main()
