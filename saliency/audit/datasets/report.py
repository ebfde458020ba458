"""``report.html``: one self-contained page to share an audit (nothing fetched, pictures inlined).

It opens with what was run, in words; then the confusion matrix; then, per method: one line per
metric (what it measures, which way is better, how it compares with its random reference, its
docs page), the statistics of every column, the mean map of the predicted class in each cell of
the confusion matrix with the mean input under it, the distribution of every metric, the worst
and best samples of every metric spread over classes, and every sample in an explorer that
filters by true class, predicted class and correctness and sorts by any metric (in the page,
without a server).

The parts live beside it: :mod:`.report_header` (the run in words, the confusion matrix),
:mod:`.report_metrics` (what each metric is), :mod:`.report_rows` (one pass over the shards),
:mod:`.report_samples` (worst and best, the explorer) and :mod:`.report_pictures` (a sample's
picture, drawn by one function chosen by the kind of data).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from safetensors.torch import load_file

from saliency._atomic import atomic_write
from saliency.viz import html as shell

from . import report_samples as samples
from .report_header import anchor, confusion, contents, fmt, header, label
from .report_metrics import MetricInfo, docs_link, metric_info
from .report_pictures import Painter, kind_of
from .report_rows import Column, MethodRows, read_rows

__all__ = ["MetricInfo", "metric_info", "write_report"]

_FULL_MATRIX = 12  # up to this many classes, the mean maps are a full label x prediction table
_CELLS = 40  # otherwise: the diagonal's first cells and the most frequent confusions
_PICTURED = 400  # samples pictured in the explorer at most (fewer for large pictures)
_PAGE_BYTES = 8_000_000  # what the explorer's pictures may take, about
_CHUNK = 64  # samples fetched (and recomputed) at a time


@dataclass
class _Run:
    out: Path
    manifest: dict
    summary: dict
    fetch: Callable
    names: list[str] | None
    painter: Painter
    inputs: Callable[[Sequence[int]], torch.Tensor] | None


def write_report(
    out: Path,
    summary: dict,
    fetch: Callable,
    *,
    class_names: Sequence[str] | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    inputs: Callable[[Sequence[int]], torch.Tensor] | None = None,
    tokens: Callable[[torch.Tensor], list[list[str]]] | None = None,
) -> Path:
    """Write ``out / "report.html"`` from the summary, its maps, and ``fetch`` for pictures.

    ``fetch(method, wanted)`` returns the inputs of the samples in ``wanted`` (sample -> class
    ids), one dict class -> map per sample found, and the samples found (see ``finisher.Pictures``).
    ``inputs(samples)``, when given, returns the inputs of ``samples`` (for the mean inputs under
    the mean maps); ``tokens(ids)`` the strings of token ids ``[n, T]``.
    """
    manifest = json.loads((out / "manifest.json").read_text())
    maps = load_file(out / "summary.safetensors")
    data = manifest["data"]
    run = _Run(
        out,
        manifest,
        summary,
        fetch,
        list(class_names) if class_names is not None else None,
        Painter(kind_of(data["shape"], data["dtype"]), mean=mean, std=std, tokens=tokens),
        inputs,
    )
    methods = list(summary["methods"])
    rows = {m: _rows(run, m) for m in methods}
    mean_inputs = _mean_inputs(run, rows)
    parts = [header(manifest, summary, run.names), contents(methods), confusion(summary, run.names)]
    for method in methods:
        parts.append(_method(run, method, rows[method], maps, mean_inputs))
    title = f"Audit report: {manifest['model']['type']}"
    page = shell.page(
        title,
        "<main>\n" + "\n".join(parts) + "\n</main>",
        style=shell.asset("report.css", __package__),
        script=shell.asset("report.js", __package__),
    )
    path = out / "report.html"
    with atomic_write(path, "w") as f:
        f.write(page)
    return path


# -- one method ------------------------------------------------------------------------------------


def _rows(run: _Run, method: str) -> MethodRows:
    entry = run.summary["methods"][method]
    columns = [
        Column(key, info["per"] != "sample", info.get("better"), info.get("kind") == "flag")
        for key, info in entry["columns"].items()
    ]
    references = {}
    for metric in {c.metric for c in columns}:
        info = metric_info(metric)
        if info.reference is not None:
            references[metric] = info.reference
    return read_rows(run.out, run.manifest, method, columns, references)


def _method(run: _Run, method: str, rows: MethodRows, maps: dict, mean_inputs: dict) -> str:
    entry = run.summary["methods"][method]
    picked, wanted = samples.extremes(rows)
    cap = min(_PICTURED, _picture_budget(run))
    listed, pictured = samples.explorer_samples(rows, picked, cap)
    where = samples.position(rows)
    for s in pictured:
        wanted.setdefault(s, set()).add(int(rows.predicted[where[s]]))
    pictures = _pictures(run, method, wanted)
    parts = [
        f"<section id='{anchor(method)}'><h2>{shell.escape(method)}</h2>",
        _metrics_table(rows, entry),
        _columns_table(entry),
        _mean_maps(run, method, entry, maps, mean_inputs),
        samples.cards_of_extremes(rows, picked, pictures, run.names),
        samples.explorer(method, rows, listed, pictures, run.names, run.painter.kind),
        _distributions(entry, run.names),
        "</section>",
    ]
    return "\n".join(parts)


def _metrics_table(rows: MethodRows, entry: dict) -> str:
    metrics = list(dict.fromkeys(c.metric for c in rows.columns if "." in c.key))
    if not metrics:
        return ""
    body = ""
    for metric in metrics:
        info = metric_info(metric)
        columns = {k: v for k, v in entry["columns"].items() if k.startswith(metric + ".")}
        result = []
        for key, column in columns.items():
            field = key.partition(".")[2]
            stats = column["all"]
            if column.get("kind") == "flag":
                if "mean" in stats:
                    result.append(f"{field}: {stats['mean']:.1%} of {_per(column)}")
            elif "better" in column and "median" in stats:
                result.append(
                    f"{field}: median {fmt(stats['median'])} "
                    f"(5\u201395%: {fmt(stats['q05'])} to {fmt(stats['q95'])}), "
                    f"{column['better']} is better"
                )
        baseline = shell.escape(info.baseline)
        tally = rows.against_random.get(metric)
        if tally is not None:
            baseline += _against(info.reference[0], tally)
        better = ", ".join(f"{k}: {v}" for k, v in info.better.items()) or "no direction"
        body += (
            f"<tr><th>{docs_link(info)}</th><td>{shell.escape(info.measures)}"
            f"<div class='rp-note'>Better: {shell.escape(better)}.</div></td>"
            f"<td>{'<br>'.join(shell.escape(r) for r in result) or '&mdash;'}</td>"
            f"<td>{baseline}</td></tr>"
        )
    return (
        "<h3>Metrics</h3><table class='rp-metrics'><tr><th>metric</th><th>what it measures</th>"
        f"<th>result</th><th>random baseline</th></tr>{body}</table>"
    )


def _against(column: str, tally: list) -> str:
    """How often the map beats its random order: over the predicted classes' rows, and all."""
    parts = []
    for at, rows in ((4, "rows of the predicted class"), (0, "rows of every class")):
        beaten, total, mine, other = tally[at : at + 4]
        if total:
            parts.append(
                f"{rows}: <b>{beaten / total:.0%}</b> ({int(beaten)} of {int(total)}; mean "
                f"{shell.escape(column)} {fmt(mine)}, random {fmt(other)})"
            )
    return "<div class='rp-against'>The map beats random order in " + "; ".join(parts) + ".</div>"


def _columns_table(entry: dict) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in ("column", "one value per", "better", "rows", "mean", "q05", "median", "q95",
                  "non-finite")
    )  # fmt: skip
    body = ""
    for column, info in entry["columns"].items():
        s = info["all"]
        cells = [
            column,
            info["per"],
            info.get("better", ""),
            s["count"],
            fmt(s.get("mean")),
            fmt(s.get("q05")),
            fmt(s.get("median")),
            fmt(s.get("q95")),
            s["nonfinite"],
        ]
        body += "<tr>" + "".join(f"<td>{shell.escape(c)}</td>" for c in cells) + "</tr>"
    return (
        "<details><summary>Every column's statistics</summary>"
        f"<table class='rp-columns'><tr>{head}</tr>{body}</table></details>"
    )


def _mean_maps(run: _Run, method: str, entry: dict, maps: dict, mean_inputs: dict) -> str:
    cells = entry["maps"]["cells"]
    title = "<h3>Mean maps of the predicted class</h3>"
    if not cells:
        return title + (
            "<p class='rp-note'>No mean maps: no sample's predicted class was explained.</p>"
        )
    means = maps[f"{method}/cell_means"]
    found = {(c[0], c[1]): (i, c[2]) for i, c in enumerate(cells)}
    labelled = any(c[0] >= 0 for c in cells)
    if "int" in str(run.manifest["data"]["dtype"]):
        return title + (
            "<p class='rp-note'>None for token ids: a position holds another token in every "
            "sample, so a mean over samples would mix them.</p>"
        )
    if run.painter.kind != "image":
        return title + _img(_feature_maps(means, cells, run.names))
    note = (
        "Each cell: the mean map of the predicted class over the samples with that true class "
        "(row) and prediction (column), the mean of their inputs under it, and how many they "
        "are."
        if labelled
        else "Each cell: the mean map of the predicted class over the samples predicted so, "
        "the mean of their inputs under it, and how many they are."
    )
    title += f"<p class='rp-note'>{note} Zero is white; red raises the class's score, blue "
    title += "lowers it; each map has its own scale.</p>"

    def cell(key) -> str:
        hit = found.get(key)
        if hit is None:
            return "<td></td>"
        i, count = hit
        under = mean_inputs.get(key)
        picture = f"<img class='rp-map' alt='mean map' src='{run.painter.map_uri(means[i])}'>"
        if under is not None:
            picture += f"<img class='rp-in' alt='mean input' src='{run.painter.input_uri(under)}'>"
        tip = shell.escape(_cell_label([key[0], key[1], count], run.names))
        return f"<td class='rp-cell' title='{tip}'>{picture}<span>{count}</span></td>"

    classes = sorted({c[1] for c in cells} | {c[0] for c in cells if c[0] >= 0})
    if labelled and len(classes) <= _FULL_MATRIX:
        n = max(classes) + 1
        head = "".join(f"<th>{shell.escape(label(p, run.names))}</th>" for p in range(n))
        body = ""
        for truth in range(n):
            row = "".join(cell((truth, pred)) for pred in range(n))
            body += f"<tr><th>{shell.escape(label(truth, run.names))}</th>{row}</tr>"
        return (
            f"{title}<table class='rp-means'><tr><th>true \\ predicted</th>{head}</tr>{body}"
            "</table>"
        )
    ordered = sorted(
        range(len(cells)), key=lambda i: (cells[i][0] != cells[i][1], -cells[i][2], i)
    )[:_CELLS]
    cards = "".join(
        "<div class='rp-card'>"
        + cell((cells[i][0], cells[i][1])).replace("<td", "<div").replace("</td>", "</div>")
        + f"<div class='rp-cap'>{shell.escape(_cell_label(cells[i], run.names))}</div></div>"
        for i in ordered
    )
    return f"{title}<div class='rp-cards'>{cards}</div>"


def _distributions(entry: dict, names) -> str:
    """One figure for the method: per column, the percentiles over all rows and per class."""
    shown = [
        (column, info)
        for column, info in entry["columns"].items()
        if "median" in info["all"] and info.get("kind") != "flag"  # a flag's share is tabled
    ]
    if not shown:
        return ""
    # One figure, laid out by hand: a figure per column, or tight_layout, costs ten times more.
    fig = Figure(figsize=(10, 2.2 * len(shown)), dpi=72)
    fig.subplots_adjust(
        left=0.08,
        right=0.98,
        top=1 - 0.35 / len(shown),
        bottom=0.25 / len(shown),
        hspace=0.75,
        wspace=0.25,
    )
    axes = fig.subplots(len(shown), 2, width_ratios=[1, 2], squeeze=False)
    for (column, info), (left, right) in zip(shown, axes, strict=True):
        stats = info["all"]
        qs = [stats[q] for q in ("min", "q05", "q25", "median", "q75", "q95", "max")]
        left.plot(qs, [0, 5, 25, 50, 75, 95, 100], marker="o")
        left.set_xlabel(column + (f" ({info['better']} is better)" if "better" in info else ""))
        left.set_ylabel("percentile")
        by_class = {int(c): s for c, s in info["by_class"].items() if "median" in s}
        classes = sorted(by_class)[:30]
        for x, c in enumerate(classes):
            s = by_class[c]
            right.plot([x, x], [s["q05"], s["q95"]], color="#999")
            right.plot([x, x], [s["q25"], s["q75"]], color="#2e6db4", linewidth=6)
            right.plot([x], [s["median"]], marker="_", color="black", markersize=12)
        right.set_xticks(range(len(classes)), [label(c, names) for c in classes], fontsize=8)
        right.set_xlabel(
            ("class explained" if info["per"] == "sample and class" else "sample's class")
            + ": 5, 25, 50, 75, 95th percentiles"
        )
    return (
        "<details><summary>Distributions of every metric, over all rows and per class</summary>"
        + _img(fig)
        + "</details>"
    )


# -- pictures --------------------------------------------------------------------------------------


def _pictures(run: _Run, method: str, wanted: dict[int, set[int]]) -> dict[tuple[int, int], str]:
    """HTML pictures of (sample, class) pairs, fetched a few samples at a time."""
    out = {}
    samples = sorted(wanted)
    for start in range(0, len(samples), _CHUNK):
        chunk = {s: sorted(wanted[s]) for s in samples[start : start + _CHUNK]}
        x, maps, found = run.fetch(method, chunk)
        for p, s in enumerate(found):
            for c in chunk[s]:
                if c in maps[p]:
                    out[(s, c)] = run.painter.card_picture(x[p], maps[p][c])
    return out


def _mean_inputs(run: _Run, rows: dict[str, MethodRows]) -> dict[tuple[int, int], torch.Tensor]:
    """The mean input of every (true class, predicted class) cell, for image data."""
    if run.inputs is None or run.painter.kind != "image" or not rows:
        return {}
    first = next(iter(rows.values()))
    truth = first.label if first.label is not None else np.full(len(first.index), -1)
    sums: dict[tuple[int, int], torch.Tensor] = {}
    counts: dict[tuple[int, int], int] = {}
    samples = first.index.tolist()
    keys = list(zip(truth.tolist(), first.predicted.tolist(), strict=True))
    for start in range(0, len(samples), 256):
        x = run.inputs(samples[start : start + 256]).detach().double().cpu()
        for j, key in enumerate(keys[start : start + 256]):
            sums[key] = sums[key] + x[j] if key in sums else x[j].clone()
            counts[key] = counts.get(key, 0) + 1
    return {key: (sums[key] / counts[key]).float() for key in sums}


def _picture_budget(run: _Run) -> int:
    """How many samples the explorer can picture within about ``_PAGE_BYTES``."""
    if run.painter.kind != "image":
        return _PICTURED
    h, w = run.manifest["data"]["shape"][-2:]
    factor = -(-max(h, w) // 112)
    pixels = -(-h // factor) * -(-w // factor)
    per_sample = 2 * pixels * 3 * 0.6 * 4 / 3 + 400  # two PNGs of photo-like content, base64
    return max(48, int(_PAGE_BYTES / per_sample))


# -- small helpers -----------------------------------------------------------------------------


def _feature_maps(means: torch.Tensor, cells: list, names) -> Figure:
    flat = means.reshape(means.shape[0], -1).numpy()
    rows = min(len(cells), _CELLS)
    fig = Figure(figsize=(8, 0.3 * rows + 1.2), dpi=80)
    ax = fig.subplots()
    limit = float(np.abs(flat[:rows]).max()) or 1.0
    ax.imshow(
        flat[:rows], aspect="auto", cmap="bwr", vmin=-limit, vmax=limit, interpolation="nearest"
    )
    ax.set_yticks(range(rows), [_cell_label(c, names) for c in cells[:rows]], fontsize=8)
    ax.set_xlabel("feature")
    fig.colorbar(ax.images[0], ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def _per(column: dict) -> str:
    return "rows" if column["per"] == "sample and class" else "samples"


def _cell_label(cell: list, names) -> str:
    truth, pred, count = cell
    if truth < 0:
        return f"predicted {label(pred, names)} ({count})"
    return f"true {label(truth, names)}, predicted {label(pred, names)} ({count})"


def _img(picture: object) -> str:
    """An <img> with the picture inlined as a PNG data: URI."""
    buffer = io.BytesIO()
    if isinstance(picture, Figure):
        # No metadata: the same figure gives the same bytes, run after run.
        picture.savefig(buffer, format="png", metadata={"Software": None})
        from PIL import Image

        buffer.seek(0)
        picture = Image.open(buffer)
    return f"<p><img class='rp-figure' alt='' src='{shell.png_uri(picture)}'></p>"
