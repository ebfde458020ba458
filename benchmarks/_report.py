"""Shared plumbing for the benchmark scripts: timing, peak memory, and the markdown report.

Each script owns one section of ``docs/benchmarks.md`` (between ``<!-- NAME:start -->`` and
``<!-- NAME:end -->``) and rewrites only that section, atomically. A script with goals also saves
its numbers as ``docs/img/benchmark-NAME.json`` (:func:`save_results`), with a list of
:class:`Target` records; :func:`write_targets` gathers the targets of every script into the one
table at the top of the page (section ``targets``), so a re-run of any script keeps it current.
The docs build draws its charts from these files; it never times anything itself.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPORT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
RESULTS = REPORT.parent / "img"
_HEADER = "# Benchmarks\n\nRatios are measured side by side in one run; absolute times vary.\n"


@dataclass(frozen=True)
class Target:
    """One goal of a benchmark and whether this run met it.

    ``value`` is the measured ratio (on median times), ``goal`` says which way and how far, in
    words a reader can check (``"at most 1.05x"``); ``also`` is the same ratio on another
    statistic (fastest rounds), for context.
    """

    benchmark: str  # the script's section name, e.g. "engine"
    case: str  # which model or configuration
    what: str  # the ratio, in plain words
    goal: str
    value: float
    met: bool
    also: str = ""


def median_time(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory(fn: Callable[[], object], device: str = "cpu") -> int:
    """Extra peak memory of one call of ``fn`` in bytes (CUDA allocator, or resident set on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    before = _rss()[0]
    _reset_peak()
    fn()
    return max(_rss()[1] - before, 0)


def machine() -> str:
    """One line describing where the numbers came from."""
    if torch.cuda.is_available():
        where = torch.cuda.get_device_name()
    else:
        where = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    threads = torch.get_num_threads()
    py = platform.python_version()
    return f"{where}; torch {torch.__version__}, {threads} threads; Python {py}"


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def fmt_mb(nbytes: float | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 1e6:.1f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, markdown: str, path: Path = REPORT) -> None:
    """Replace section ``name`` of the report with ``markdown`` (atomic write)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else _HEADER
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".benchmarks-", suffix=".md")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_results(name: str, results: dict, directory: Path = RESULTS) -> Path:
    """Write ``results`` (JSON-safe; ``results["targets"]``: a list of :class:`Target`) to
    ``benchmark-NAME.json`` atomically, then refresh the page's table of targets."""
    data = dict(results)
    data["targets"] = [asdict(t) if isinstance(t, Target) else t for t in data.get("targets", [])]
    path = directory / f"benchmark-{name}.json"
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".benchmark-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    if directory == RESULTS:
        write_targets()
    return path


def load_results(name: str, directory: Path = RESULTS) -> dict | None:
    """What :func:`save_results` last wrote for ``name``, or None."""
    path = directory / f"benchmark-{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_targets(path: Path = REPORT, directory: Path = RESULTS) -> None:
    """Rewrite section ``targets`` of the report: every saved script's goals in one table, one
    row per goal with its result on every case."""
    goals: dict[tuple[str, str, str], list[dict]] = {}
    for file in sorted(directory.glob("benchmark-*.json")):
        for t in json.loads(file.read_text()).get("targets", []):
            goals.setdefault((t["benchmark"], t["what"], t["goal"]), []).append(t)
    if not goals:
        return
    rows, met, total = [], 0, 0
    for (benchmark, what, goal), results in goals.items():
        total += len(results)
        met += sum(bool(t["met"]) for t in results)
        cells = []
        for t in results:
            value = f"{t['value']:.2f}"
            cells.append(f"{t['case']}: " + (value if t["met"] else f"**{value}** (missed)"))
        rows.append(
            [
                f"[{benchmark}](#{benchmark})",
                f"{what}: {goal}",
                f"{sum(bool(t['met']) for t in results)} of {len(results)}",
                "; ".join(cells),
            ]
        )
    markdown = (
        f"## Targets: {met} of {total} met\n\n"
        "Each row is a goal set in an issue, checked on every case of the last run of its "
        "script, on median times (the sections below also give the fastest rounds, which "
        "other jobs on the machine disturb less).\n\n"
        + table(["benchmark", "goal", "met", "measured"], rows)
    )
    write_section("targets", markdown, path)


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _rss() -> tuple[int, int]:
    """Current and peak resident set size in bytes (Linux)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets the peak resident set size to the current one (Linux >= 4.0).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
