"""Data-set audits: throughput at 1 and 2 ranks, and what shards, manifests and atomic writes cost.

The work is the issue's: all 360 held-out digits, every class (C = 10), explained with
``saliency.gradients`` and measured with ``saliency.audit.deletion`` (20 steps, random order
included) and ``saliency.audit.class_sensitivity``, in batches of 32.

- *In memory*: the same calls, batch by batch, nothing written (the floor).
- *audit.run, 1 process*: ``saliency.audit.run`` into a fresh folder without the HTML report:
  screening, per-shard rows (JSON lines and safetensors), completion records, the manifest after
  every shard, every file written atomically, and the summary at the end.
- *audit.run, 2 ranks*: the same launched by ``torchrun --nproc-per-node=2`` (gloo); the time is
  rank 0's, from just before ``run`` to its return (after both ranks' shards and the summary),
  so interpreter start-up is left out.

The engine strategy is fixed to the one ``auto`` picks for a batch, so every row runs the same
arithmetic. Threads: one per process, as torchrun gives each rank, and as in
``benchmarks/engine.py`` (on a shared 2-core machine two intra-op threads stall whenever another
process holds a core); ``--threads 0`` keeps torch's default in the one-process rows. Rows run in
rotating order; times are medians of ``--rounds`` rounds.

Run: ``python benchmarks/audit_run.py`` (about two minutes on 2 CPU cores; ``--help``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
sys.path.insert(1, str(_HERE.parent))  # run from a checkout without installing
from _report import Target, machine, save_results, table, write_section  # noqa: E402

import saliency  # noqa: E402
import saliency.audit  # noqa: E402
from saliency import models  # noqa: E402
from saliency.audit.datasets import shards  # noqa: E402

BATCH = 32
METRICS = ["deletion", "class_sensitivity"]


def data() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model, _ = models.load("digits")
    x, y = models.held_out("digits")
    return model, x, y


def in_memory(model, x, y, strategy: str) -> float:
    """The run's computation without files: seconds."""
    start = time.perf_counter()
    for first in range(0, len(x), BATCH):
        xs = x[first : first + BATCH]
        a = saliency.gradients(model, xs, strategy=strategy)
        seed = shards.shard_seed(0, first, "metric:deletion")
        saliency.audit.deletion(model, xs, a, seed=seed, output="logits")
        saliency.audit.class_sensitivity(a)
    return time.perf_counter() - start


def audit(model, x, y, strategy: str, out: Path) -> float:
    start = time.perf_counter()
    saliency.audit.run(
        model, (x, y), out_dir=out, metrics=METRICS, batch_size=BATCH, strategy=strategy,
        report=False,
    )  # fmt: skip
    return time.perf_counter() - start


def two_ranks(strategy: str, out: Path) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--nnodes=1",
        "--master-addr=127.0.0.1", f"--master-port={port}", __file__, "--worker", str(out),
        "--strategy", strategy,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun failed:\n{done.stderr[-3000:]}")
    times = [json.loads(line)["seconds"] for line in done.stdout.splitlines() if "seconds" in line]
    return max(times)


def worker(out: Path, strategy: str) -> None:
    model, x, y = data()
    seconds = audit(model, x, y, strategy, out)
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps({"seconds": seconds}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="0: torch's default")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker), args.strategy)
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    model, x, y = data()
    strategy = saliency.gradients(model, x[:BATCH]).params["strategy"]
    in_memory(model, x[:BATCH], y[:BATCH], strategy)  # warm-up
    load_before = os.getloadavg()[0]
    rows = {"memory": [], "one": [], "two": []}
    order = list(rows)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name in order[r % 3 :] + order[: r % 3]:
                out = Path(tmp) / f"{name}-{r}"
                if name == "memory":
                    rows[name].append(in_memory(model, x, y, strategy))
                elif name == "one":
                    rows[name].append(audit(model, x, y, strategy, out))
                else:
                    rows[name].append(two_ranks(strategy, out))
                print(f"round {r}: {name} {rows[name][-1]:.2f} s", flush=True)
    load_after = os.getloadavg()[0]
    t = {name: statistics.median(times) for name, times in rows.items()}
    n = len(x)
    lines = [
        ["in memory, 1 process", f"{t['memory']:.2f}", f"{n / t['memory']:.0f}", "1.00"],
        ["audit.run, 1 process", f"{t['one']:.2f}", f"{n / t['one']:.0f}",
         f"{t['one'] / t['memory']:.2f}"],
        ["audit.run, 2 ranks (torchrun, gloo)", f"{t['two']:.2f}", f"{n / t['two']:.0f}",
         f"{t['two'] / t['memory']:.2f}"],
    ]  # fmt: skip
    overhead = t["one"] / t["memory"] - 1
    markdown = "\n\n".join(
        [
            "## Data-set audits: throughput and the cost of resumability "
            "(`benchmarks/audit_run.py`) {#audit-run}",
            f"Machine: {machine()}; 1-minute load average {load_before:.1f} before and "
            f"{load_after:.1f} after the run.",
            table(["configuration", "time (s)", "samples/s", "time vs in memory"], lines),
            f"{n} held-out digits, all 10 classes, `gradients` (strategy `{strategy}`) + "
            f"`deletion` + `class_sensitivity`, batches of {BATCH} ({-(-n // BATCH)} shards). "
            f"Shards, manifest, completion records, atomic writes and the summary cost "
            f"{overhead:+.1%} over the same computation in memory (target: at most +10%). "
            f"Medians of {args.rounds} rounds in rotating order. The 2-rank time is rank 0's "
            "inside `run` (start-up excluded), one thread per rank.",
        ]
    )
    print(markdown)
    if not args.no_write:
        target = Target(
            "audit-run",
            f"{n} digits, 1 process",
            "audit.run / the same computation in memory",
            "at most 1.10",
            t["one"] / t["memory"],
            overhead <= 0.10,
            f"{min(rows['one']) / min(rows['memory']):.2f}",
        )
        save_results("audit-run", {"machine": machine(), "seconds": t, "targets": [target]})
        write_section("audit-run", markdown)


if __name__ == "__main__":
    main()
