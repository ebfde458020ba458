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

Run: ``python benchmarks/engine.py`` (a few minutes on 2 CPU cores; ``--help`` for options).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
sys.path.insert(1, str(_HERE.parent))  # run from a checkout without installing
from _models import MODELS, SPECS  # noqa: E402
from _report import fmt_mb, fmt_ms, machine, median_time, peak_memory, table, write_section  # noqa: E402

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
        Row("user loop (1 forward + K autograd.grad)", user_loop),
        Row("Captum Saliency, looped over classes", captum_loop),
        Row("torch.func vmap(jacrev) per sample", vmap_jacrev),
        Row("autograd.grad(is_grads_batched=True)", batched_grad),
    ]
    for name in _named(model, x, k):
        rows.append(
            Row(
                f'engine strategy="{name}"',
                lambda name=name: saliency.class_jacobian(model, x, strategy=name, max_memory=mm),
            )
        )
    rows.append(
        Row(
            LOOP_FIRST,
            lambda: _first(
                lambda: saliency.class_jacobian(model, x, strategy="loop", max_memory=mm)
            ),
        )
    )
    rows.append(
        Row(FIRST, lambda: _first(lambda: saliency.class_jacobian(model, x, max_memory=mm)))
    )
    rows.append(
        Row('engine strategy="auto"', lambda: saliency.class_jacobian(model, x, max_memory=mm))
    )
    return rows


FIRST = "auto, first call (forget_strategy_choices(), then the call)"
LOOP_FIRST = 'engine strategy="loop", first call (after forget_strategy_choices())'


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

    rows = [Row("user loop (1 forward + K autograd.grad), streamed", user_loop)]
    for name in ("loop", "head"):
        if name == "head" and not _ends_in_narrow_linear(model, x, k):
            continue
        rows.append(Row(f'engine strategy="{name}", max_memory="1GB"', engine(name)))
    rows.append(Row(FIRST, lambda sink: _first(lambda: engine("auto")(sink))))
    rows.append(Row('engine strategy="auto", max_memory="1GB"', engine("auto")))
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
    auto_row, first_row = rows[-1], rows[-2]

    # auto's very first call in this process for this model (the first_row repeats it).
    if case.stream:
        _, first, _ = _timed_peak(lambda: first_row.fn(Sink(x, k, keep=False)), device)
    else:
        _, first, _ = _timed_peak(first_row.fn, device)
    decisions = list(getattr(_auto, "_DECISIONS", {}).get(model, {}).values())
    picked = decisions[0] if len(decisions) == 1 else "?"
    auto_row.label += f" (picked {picked})"
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

    return _report(case, rows, auto_row, first_row, floor, t_fwd, t_bwd, k)


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


def _report(case, rows, auto_row, first_row, floor, t_fwd, t_bwd, k) -> str:
    fastest = min(r.time for r in rows if r.exact)
    body = [
        [
            r.label,
            fmt_ms(r.time),
            f"{r.time / fastest:.2f}",
            fmt_ms(min(r.times)),
            fmt_mb(r.memory),
            str(len(r.times)),
        ]
        for r in rows
    ]
    body.append(
        [
            f"floor: t_forward + {k} x t_backward ({fmt_ms(statistics.median(t_fwd))} + "
            f"{k} x {fmt_ms(statistics.median(t_bwd))})",
            fmt_ms(floor),
            f"{floor / fastest:.2f}",
            fmt_ms(min(t_fwd) + k * min(t_bwd)),
            "",
            str(len(t_fwd)),
        ]
    )
    header = ["row", "median ms", "x fastest", "min ms", "peak extra MB", "runs"]
    md = f"### {case.title}\n\n" + table(header, body) + "\n\n"

    named = [
        r
        for r in rows
        if r.label.startswith('engine strategy="') and r is not auto_row and r.label != LOOP_FIRST
    ]
    loop_first = next((r for r in rows if r.label == LOOP_FIRST), None)
    batched = next((r for r in rows if r.label.startswith("autograd.grad(is_grads")), None)
    captum = next((r for r in rows if r.label.startswith("Captum")), None)
    floor_min = min(t_fwd) + k * min(t_bwd)
    lines = []
    for stat, pick, fl in (
        ("median", lambda r: r.time, floor),
        ("min", lambda r: min(r.times), floor_min),
    ):
        t_auto = pick(auto_row)
        best = min(named, key=pick)
        top = min(pick(r) for r in rows if r.exact)
        t_first = pick(first_row)
        parts = [
            f"auto / best named ({best.label.split('=')[1].split(',')[0]}) = "
            f"{t_auto / pick(best):.2f} {_mark(t_auto / pick(best) <= 1.05)}",
            f"auto's first call / best named = {t_first / pick(best):.2f} "
            f"{_mark(t_first / pick(best) <= 1.3)} (target <= 1.3)",
            *(
                [f"auto's first call / loop's first call = {t_first / pick(loop_first):.2f}"]
                if loop_first is not None
                else []
            ),
            f"auto / fastest row = {t_auto / top:.2f} {_mark(t_auto / top <= 1.05)}",
            f"auto / floor = {t_auto / fl:.2f} {_mark(t_auto / fl <= 1.05)}",
        ]
        if batched is not None and case.key == "mlp":
            ratio = t_auto / pick(batched)
            parts.append(
                f"auto / raw autograd.grad(is_grads_batched=True) = {ratio:.2f} "
                f"{_mark(ratio <= 1.1)} (target <= 1.1)"
            )
        if captum is not None:
            need = {"mlp": 10.0, "cnn32": 2.0}.get(case.key)
            ratio = pick(captum) / t_auto
            parts.append(
                f"Captum loop / auto = {ratio:.1f}"
                + (f" {_mark(ratio >= need)} (target >= {need:g})" if need else "")
            )
        lines.append(f"- on {stat} times: " + "; ".join(parts))
    if case.max_memory is not None:
        budget = parse_memory(case.max_memory)
        checks = [
            f"{_short(r)} {fmt_mb(r.memory)} MB "
            f"{_mark(r.memory is not None and r.memory <= budget)}"
            for r in [*named, first_row, auto_row]
        ]
        lines.append(
            f"- peak extra memory within max_memory={case.max_memory}: " + "; ".join(checks)
        )
    md += "Summary (targets: auto within 1.05x of the best and of the floor):\n\n"
    md += "\n".join(lines) + "\n"
    return md


def _short(row: Row) -> str:
    return "first call" if row.label == FIRST else row.label.split("=")[1].split(",")[0]


def _mark(ok: bool) -> str:
    return "(met)" if ok else "(MISSED)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=[c.key for c in CASES], choices=MODELS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1; 0 keeps torch's default, one per core)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    start = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    sections = []
    for case in CASES:
        if case.key not in args.models:
            continue
        log(f"{case.title}")
        sections.append(run_case(case, args.device, log))
        log(sections[-1])
    elapsed = time.perf_counter() - start
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    md = (
        "## Engine: all-class input Jacobians\n\n"
        f"Machine: {machine()}; device {args.device}; 1-minute load average {load:.1f} at the "
        f"start, {load_end:.1f} at the end; whole run {elapsed:.0f} s.\n\n"
        "Every row computes the same Jacobian, checked against the user loop to 1e-5 first. "
        "Times are medians of interleaved rounds (`runs` of them); `x fastest` is relative to "
        "the fastest row; `min ms` is the fastest round, less exposed to load (the summary gives "
        "ratios on both); peak extra memory is one call's resident-set growth (result "
        "included). Produced by `python benchmarks/engine.py`.\n\n" + "\n".join(sections)
    )
    print(md)
    if not args.no_write:
        write_section("engine", md)


if __name__ == "__main__":
    main()
