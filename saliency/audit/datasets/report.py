"""``report.html``: one self-contained page to share an audit (no network: pictures are inlined).

It shows the run's configuration, the confusion matrix, and per method: the mean map of the
predicted class in each cell of the confusion matrix, the distribution of every metric (PNG plots
drawn with matplotlib's Agg backend), and the worst and best samples of every metric whose
direction is known (the lowest and highest of the others) as pictures.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from safetensors.torch import load_file

from saliency import viz
from saliency._atomic import atomic_write
from saliency.viz.labels import class_label

__all__ = ["write_report"]

_FULL_MATRIX = 12  # up to this many classes, every cell of the confusion matrix is drawn
_CELLS = 40  # otherwise: the diagonal's first cells and the most frequent confusions
_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1, h2, h3 { font-weight: 600; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: right; }
th { background: #f4f4f4; } td.diag { background: #e8f3e8; }
img { max-width: 100%; image-rendering: pixelated; }
.row { display: flex; flex-wrap: wrap; gap: 0 1em; } .row p { margin: 0.3em 0; }
.note { color: #666; } code { background: #f4f4f4; padding: 0 3px; }
"""


def write_report(
    out: Path,
    summary: dict,
    fetch: Callable,
    *,
    class_names: Sequence[str] | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
) -> Path:
    """Write ``out / "report.html"`` from the summary, its maps, and ``fetch`` for pictures.

    ``fetch(method, samples)`` returns the inputs of ``samples``, one method's Attribution rows
    for them, and the samples found (see ``finisher.Pictures``).
    """
    manifest = json.loads((out / "manifest.json").read_text())
    maps = load_file(out / "summary.safetensors")
    names = list(class_names) if class_names is not None else None
    parts = [_overview(manifest, summary), _confusion(summary, names)]
    for method, entry in summary["methods"].items():
        parts.append(f"<h2>{_e(method)}</h2>")
        parts.append(_stats_table(entry))
        parts.append(_mean_maps(method, entry, maps, names))
        parts.append(_distributions(method, entry, names))
        parts.append(_extremes(method, entry, fetch, names, mean, std))
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<title>saliency audit</title>"
        f"<style>{_STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    path = out / "report.html"
    with atomic_write(path, "w") as f:
        f.write(page)
    return path


# -- sections -------------------------------------------------------------------------------------


def _overview(manifest: dict, summary: dict) -> str:
    config = manifest["config"]
    rows = [
        ("samples", summary["samples"]),
        ("explained", summary["explained"]),
        ("skipped", len(summary["skipped"])),
        ("accuracy", _fmt(summary.get("accuracy"))),
        ("methods", ", ".join(config["methods"])),
        (
            "metrics",
            "; ".join(f"{m}: {', '.join(n) or 'none'}" for m, n in config["metrics"].items()),
        ),
        ("classes", json.dumps(config["classes"])),
        ("output", json.dumps(config["output"])),
        ("batch size", config["batch_size"]),
        ("seed", config["seed"]),
        ("strategy", manifest.get("strategy")),
        ("model", f"{manifest['model']['type']} {manifest['model']['fingerprint']}"),
        ("versions", ", ".join(f"{k} {v}" for k, v in manifest["versions"].items())),
    ]
    table = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    skipped = ""
    if summary["skipped"]:
        items = "".join(
            f"<li>sample {s['index']}: {_e(s['reason'])}</li>" for s in summary["skipped"][:50]
        )
        skipped = f"<h3>Skipped samples</h3><ul>{items}</ul>"
    return f"<h1>Audit report</h1><table>{table}</table>{skipped}"


def _confusion(summary: dict, names) -> str:
    matrix = summary.get("confusion")
    if matrix is None:
        counts = summary["predicted_counts"]
        cells = "".join(
            f"<tr><th>{_e(_label(c, names))}</th><td>{n}</td></tr>" for c, n in enumerate(counts)
        )
        return f"<h2>Predictions</h2><table><tr><th>class</th><th>samples</th></tr>{cells}</table>"
    if len(matrix) > 50:
        return "<h2>Confusion matrix</h2><p class='note'>Over 50 classes: see summary.json.</p>"
    head = "".join(f"<th>{_e(_label(c, names))}</th>" for c in range(len(matrix)))
    body = ""
    for label, row in enumerate(matrix):
        cells = "".join(
            f"<td class='diag'>{n}</td>" if label == p else f"<td>{n or ''}</td>"
            for p, n in enumerate(row)
        )
        body += f"<tr><th>{_e(_label(label, names))}</th>{cells}</tr>"
    return (
        "<h2>Confusion matrix</h2><p class='note'>Rows: label; columns: predicted.</p>"
        f"<table><tr><th></th>{head}</tr>{body}</table>"
    )


def _stats_table(entry: dict) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in ("column", "per", "better", "rows", "mean", "q05", "median", "q95", "non-finite")
    )
    body = ""
    for column, info in entry["columns"].items():
        s = info["all"]
        cells = [
            column,
            info["per"],
            info.get("better", ""),
            s["count"],
            _fmt(s.get("mean")),
            _fmt(s.get("q05")),
            _fmt(s.get("median")),
            _fmt(s.get("q95")),
            s["nonfinite"],
        ]
        body += "<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>"
    return f"<h3>Metrics</h3><table><tr>{head}</tr>{body}</table>"


def _mean_maps(method: str, entry: dict, maps: dict, names) -> str:
    cells = entry["maps"]["cells"]
    if not cells:
        return "<p class='note'>No mean maps: no sample's predicted class was explained.</p>"
    means = maps[f"{method}/cell_means"]
    found = {(c[0], c[1]): (i, c[2]) for i, c in enumerate(cells)}
    labelled = any(c[0] >= 0 for c in cells)
    classes = sorted({c[1] for c in cells} | {c[0] for c in cells if c[0] >= 0})
    image_like = means.ndim in (3, 4)
    title = "<h3>Mean maps of the predicted class</h3>"
    if labelled:
        title += (
            "<p class='note'>Row: label, column: predicted class; each picture is the mean map "
            "of the predicted class over the samples in that cell of the confusion matrix "
            "(count in brackets).</p>"
        )
    if not image_like:
        return title + _img(_feature_maps(means, cells, names))
    if labelled and len(classes) <= _FULL_MATRIX:
        n = max(classes) + 1
        tiles, labels = [], []
        blank = Image.new("RGB", tuple(means.shape[-2:][::-1]), "white")
        for label in range(n):
            for pred in range(n):
                hit = found.get((label, pred))
                tiles.append(viz.heatmap(means[hit[0]], sign="all") if hit else blank)
                labels.append(
                    f"{_label(label, names)}>{_label(pred, names)} ({hit[1]})" if hit else ""
                )
        picture = viz.grid(tiles, rows=n, labels=labels, min_size=64)
        return title + _img(picture)
    ordered = sorted(
        range(len(cells)), key=lambda i: (cells[i][0] != cells[i][1], -cells[i][2], i)
    )[:_CELLS]
    tiles = [viz.heatmap(means[i], sign="all") for i in ordered]
    labels = [_cell_label(cells[i], names) for i in ordered]
    return title + _img(viz.grid(tiles, labels=labels, min_size=64))


def _distributions(method: str, entry: dict, names) -> str:
    """One figure for the method: per column, the percentiles over all rows and per class."""
    shown = [
        (column, info)
        for column, info in entry["columns"].items()
        if "median" in info["all"] and info.get("kind") != "flag"  # a flag's share is tabled
    ]
    if not shown:
        return ""
    # One figure, laid out by hand: a figure per column, or tight_layout, costs ten times more.
    fig = Figure(figsize=(9, 2.2 * len(shown)), dpi=72)
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
        right.set_xticks(range(len(classes)), [_label(c, names) for c in classes], fontsize=8)
        right.set_xlabel(
            ("class" if info["per"] == "sample and class" else "sample's class")
            + ": 5, 25, 50, 75, 95th percentiles"
        )
    return "<h3>Metric distributions</h3>" + _img(fig)


def _extremes(method, entry, fetch, names, mean, std) -> str:
    """Pictures of the worst and best samples of every column whose direction is known; the
    lowest and highest of the other columns as lists."""
    pictured, listed = [], []
    for column, info in entry["columns"].items():
        if info.get("kind") == "flag":
            continue
        if "better" in info:
            worst = "highest" if info["better"] == "lower" else "lowest"
            best = "lowest" if worst == "highest" else "highest"
            faithful = _faithfulness(column)
            pictured.append((column, "least faithful" if faithful else "worst", info[worst]))
            pictured.append((column, "most faithful" if faithful else "best", info[best]))
        else:
            listed += [(column, "lowest", info["lowest"]), (column, "highest", info["highest"])]
    parts = []
    wanted: dict[int, list[int]] = {}
    for _, _, items in pictured:
        for item in items:
            classes = wanted.setdefault(item["index"], [])
            if item["class"] not in classes:
                classes.append(item["class"])
    if wanted:
        x, maps, found = fetch(method, wanted)
        position = {s: p for p, s in enumerate(found)}
        pictures = None
        if x.ndim == 4:
            pictures = viz.enlarge(viz.input_pictures(x, mean=mean, std=std))
        parts.append("<h3>Worst and best samples</h3>")
        for column, kind, items in pictured:
            tiles, labels = [], []
            for item in items:
                p = position.get(item["index"])
                if pictures is None or p is None or item["class"] not in maps[p]:
                    continue
                picture = viz.overlay(
                    pictures[p], maps[p][item["class"]], sign="all", value_range=(0.0, 1.0)
                )
                tiles.append(picture)
                labels.append(_item(item, names))
            parts.append(f"<h4>{_e(column)}: {_e(kind)}</h4>")
            if tiles:
                parts.append(_img(viz.grid(tiles, labels=labels, rows=1)))
            else:
                parts.append(_list(items, names))
    if listed:
        inner = "".join(f"<h4>{_e(c)}: {_e(k)}</h4>{_list(items, names)}" for c, k, items in listed)
        parts.append(
            f"<details><summary>Lowest and highest of the other columns</summary>{inner}</details>"
        )
    return "".join(parts)


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
    fig.tight_layout()
    return fig


def _item(item: dict, names) -> str:
    return f"#{item['index']} class {_label(item['class'], names)}: {_fmt(item['value'])}"


def _list(items: list, names) -> str:
    return "<ul>" + "".join(f"<li>{_e(_item(i, names))}</li>" for i in items) + "</ul>"


def _faithfulness(column: str) -> bool:
    return column.split(".")[0] in {"deletion", "insertion", "infidelity", "road", "completeness"}


def _cell_label(cell: list, names) -> str:
    label, pred, count = cell
    if label < 0:
        return f"predicted {_label(pred, names)} ({count})"
    return f"{_label(label, names)}>{_label(pred, names)} ({count})"


def _label(c: int, names) -> str:
    try:
        return class_label(c, names)
    except ValueError:
        return str(c)


def _fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def _img(picture: object) -> str:
    """An <img> with the picture inlined as a PNG data: URI."""
    buffer = io.BytesIO()
    if isinstance(picture, Figure):
        # No metadata: the same figure gives the same bytes, run after run.
        picture.savefig(buffer, format="png", metadata={"Software": None})
    else:
        picture.save(buffer, format="PNG", compress_level=6)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"<p><img alt='' src='data:image/png;base64,{data}'></p>"


def _e(value: object) -> str:
    return html.escape(str(value))
