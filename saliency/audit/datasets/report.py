"""``report.html``: one self-contained page to share an audit (nothing fetched, pictures inlined).

It opens with what was run, in words; then the confusion matrix; then, per method: one line per
metric (what it measures, which way is better, how it compares with its random reference, its
docs page), the statistics of every column, the mean map of the predicted class in each cell of
the confusion matrix with the mean input under it, the distribution of every metric, the worst
and best samples of every metric spread over classes, and every sample in an explorer that
filters by true class, predicted class and correctness and sorts by any metric (in the page,
without a server). Samples are drawn by :mod:`.report_pictures`, by the kind of data.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from safetensors.torch import load_file

from saliency._atomic import atomic_write
from saliency.viz import html as shell
from saliency.viz.labels import class_label

from . import metrics as metric_specs
from .report_pictures import Painter, kind_of
from .report_rows import Column, MethodRows, read_rows, spread

__all__ = ["DOCS_URL", "MetricInfo", "metric_info", "write_report"]

# Where the documentation is served; pages are linked under it. None: the page is named, not
# linked (the project has no published address yet).
DOCS_URL: str | None = None

_FULL_MATRIX = 12  # up to this many classes, the mean maps are a full label x prediction table
_CELLS = 40  # otherwise: the diagonal's first cells and the most frequent confusions
_SHOWN = 10  # worst and best samples pictured per column
_LISTED = 20000  # samples listed in the explorer at most
_PICTURED = 400  # samples pictured in the explorer at most (fewer for large pictures)
_PAGE_BYTES = 8_000_000  # what the explorer's pictures may take, about
_CHUNK = 64  # samples fetched (and recomputed) at a time


# -- what each metric is ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricInfo:
    """What the report says about a metric: one line each."""

    name: str
    measures: str
    better: dict  # column -> "lower" / "higher"
    baseline: str  # the reference a map has to beat, in words
    reference: tuple[str, str] | None  # (column, its random-order column), compared row by row
    docs: str  # the docs page, relative to the docs root: "audit/deletion-insertion.md"
    title: str  # the docs page's title


_FALLBACK = {
    "norms": MetricInfo(
        "norms", "The size of each map: the L1 and L2 norms of its values.", {},
        "None: a scale, not a quality.", None, "audit/runs.md", "Data-set audits",
    ),
    "deletion": MetricInfo(
        "deletion",
        "How fast the class's score falls when the features the map ranks first are removed "
        "first (area under the score curve).",
        {"auc": "lower", "normalized_auc": "lower"},
        "The same curve in a random order (random_auc): a faithful map falls faster.",
        ("auc", "random_auc"), "audit/deletion-insertion.md", "Deletion and insertion",
    ),
    "insertion": MetricInfo(
        "insertion",
        "How fast the class's score rises when the features the map ranks first are put back "
        "first into a blank input.",
        {"auc": "higher", "normalized_auc": "higher"},
        "The same curve in a random order (random_auc): a faithful map rises faster.",
        ("auc", "random_auc"), "audit/deletion-insertion.md", "Deletion and insertion",
    ),
    "road": MetricInfo(
        "road",
        "Deletion with removed pixels filled in from their neighbours, so that the model cannot "
        "react to the shape of a mask.",
        {"auc": "lower", "normalized_auc": "lower"},
        "The same curve in a random order (random_auc): a faithful map falls faster.",
        ("auc", "random_auc"), "audit/road.md", "ROAD",
    ),
    "class_sensitivity": MetricInfo(
        "class_sensitivity",
        "How alike a sample's maps of different classes are (rank correlation); alike maps do "
        "not explain why one class won.",
        {"mean_other": "lower", "off_diagonal": "lower"},
        "Identical maps give 1; maps of unrelated classes about 0.",
        None, "audit/class-sensitivity.md", "Class sensitivity",
    ),
    "completeness": MetricInfo(
        "completeness",
        "How far the attributions' sum falls short of the score's change from the baseline "
        "(relative gap; Integrated Gradients is complete in exact arithmetic).",
        {"abs_gap": "lower", "relative_gap": "lower"},
        "0 is exact; rows above the tolerance are counted in 'exceeds'.",
        None, "audit/completeness.md", "Completeness",
    ),
    "infidelity": MetricInfo(
        "infidelity",
        "How badly the map predicts the score's change under small random perturbations "
        "(mean squared error).",
        {"infidelity": "lower"}, "0: the map predicts every change exactly.",
        None, "audit/infidelity-sensitivity.md", "Infidelity and max-sensitivity",
    ),
    "sensitivity_max": MetricInfo(
        "sensitivity_max",
        "How much the map changes under small input perturbations (largest relative change).",
        {"sensitivity": "lower"}, "0: the map does not move.",
        None, "audit/infidelity-sensitivity.md", "Infidelity and max-sensitivity",
    ),
    "margins": MetricInfo(
        "margins",
        "First-order distance from the sample to each other class's decision boundary: which "
        "mistake is one small step away.",
        {}, "None: a property of the model near the sample.", None, "audit/margins.md", "Margins",
    ),
}  # fmt: skip


def metric_info(name: str) -> MetricInfo:
    """What the report says about metric ``name``: from the metric's record where it has one,
    else from this module's table, else a bare line."""
    record = getattr(metric_specs, "RECORDS", {}).get(name)
    if record is not None and all(
        hasattr(record, f) for f in ("measures", "better", "baseline", "docs")
    ):
        fallback = _FALLBACK.get(name)
        return MetricInfo(
            name,
            record.measures,
            dict(record.better),
            record.baseline,
            getattr(record, "reference", fallback.reference if fallback else None),
            record.docs,
            getattr(record, "title", fallback.title if fallback else name),
        )
    if name in _FALLBACK:
        return _FALLBACK[name]
    return MetricInfo(name, "A metric of saliency.audit.", {}, "Not stated.", None, "", name)


# -- the page ----------------------------------------------------------------------------------


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
    ids), one dict class -> map per sample found, and the samples found (see ``_Job.fetch``).
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
    parts = [_header(run), _contents(methods), _confusion(summary, run.names)]
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


# -- the header --------------------------------------------------------------------------------


def _header(run: _Run) -> str:
    manifest, summary = run.manifest, run.summary
    config, data = manifest["config"], manifest["data"]
    n, explained, skipped = summary["samples"], summary["explained"], len(summary["skipped"])
    counts = summary.get("predicted_counts") or []
    shape = "\u00d7".join(str(s) for s in data["shape"])
    dtype = str(data["dtype"]).removeprefix("torch.")
    strategies = manifest.get("strategy") or {}
    facts = [
        ("Model", f"{manifest['model']['type']} (fingerprint {_short(manifest['model'])})"),
        (
            "Data",
            f"{n} samples of shape {shape} ({dtype}), "
            + ("with labels" if data.get("labelled") else "without labels"),
        ),
        (
            "Explained",
            f"{explained} of {n} samples"
            + (f"; {skipped} skipped (listed below)" if skipped else " (none skipped)"),
        ),
    ]
    if summary.get("accuracy") is not None:
        right = sum(row[i] for i, row in enumerate(summary.get("confusion", [])) if i < len(row))
        facts.append(("Accuracy", f"{summary['accuracy']:.1%} ({right} of {explained} correct)"))
    facts += [
        (
            "Methods",
            ", ".join(
                m + (f" (engine strategy: {strategies[m]})" if strategies.get(m) else "")
                for m in config["methods"]
            ),
        ),
        ("Classes explained", _classes_text(config["classes"], len(counts), run.names)),
        ("Scores explained", _output_text(config["output"])),
        ("Metrics", _metrics_text(config)),
        (
            "Settings",
            f"batch size {config['batch_size']}, seed {config['seed']}, memory budget "
            + (_bytes(config["max_memory"]) if config.get("max_memory") else "none"),
        ),
        ("Software", ", ".join(f"{k} {v}" for k, v in manifest["versions"].items())),
    ]
    rows = "".join(
        f"<tr><th>{shell.escape(k)}</th><td>{shell.escape(v)}</td></tr>" for k, v in facts
    )
    skipped_list = ""
    if summary["skipped"]:
        items = "".join(
            f"<li>sample {s['index']}: {shell.escape(s['reason'])}</li>"
            for s in summary["skipped"][:50]
        )
        more = len(summary["skipped"]) - 50
        extra = f"<li>and {more} more (summary.json)</li>" if more > 0 else ""
        skipped_list = (
            f"<details><summary>Skipped samples ({len(summary['skipped'])})</summary>"
            f"<ul>{items}{extra}</ul></details>"
        )
    return (
        f"<header><h1>Audit report</h1><table class='rp-facts'>{rows}</table>"
        f"{skipped_list}</header>"
    )


def _contents(methods: list[str]) -> str:
    links = "".join(f"<a href='#{_anchor(m)}'>{shell.escape(m)}</a>" for m in methods)
    return f"<nav class='rp-nav'>Jump to: <a href='#confusion'>confusion matrix</a>{links}</nav>"


def _classes_text(classes: object, n_outputs: int, names) -> str:
    if classes is None:
        return f"every class of the model ({n_outputs})" if n_outputs else "every class"
    if classes == "label":
        return "each sample's label"
    if isinstance(classes, int):
        return f"class {_label(classes, names)}"
    if isinstance(classes, list):
        return "classes " + ", ".join(_label(c, names) for c in classes)
    if isinstance(classes, dict) and "top_k" in classes:
        k = classes["top_k"]
        return f"the {k} highest-scoring classes of each sample" if k > 1 else "the predicted class"
    if isinstance(classes, dict) and "contrast" in classes:
        a, b = classes["contrast"]
        pairs = ", ".join(
            f"{_label(i, names)} \u2212 {_label(j, names)}" for i, j in zip(a, b, strict=True)
        )
        return f"contrasts {pairs}"
    return json.dumps(classes)


def _output_text(output: object) -> str:
    known = {
        "logits": "logits (the model's raw outputs)",
        "softmax": "softmax probabilities",
        "log_softmax": "log-softmax (log-probabilities)",
    }
    if isinstance(output, str):
        return known.get(output, output)
    if isinstance(output, dict) and "callable" in output:
        return f"the outputs through {output['callable']}"
    return json.dumps(output)


def _metrics_text(config: dict) -> str:
    options = config.get("metric_options") or {}
    parts = []
    for method, names in config["metrics"].items():
        shown = []
        for name in names:
            extra = options.get(name)
            if extra:
                name += " (" + ", ".join(f"{k}={v}" for k, v in extra.items()) + ")"
            shown.append(name)
        parts.append(f"{method}: {', '.join(shown) or 'none'}")
    return "; ".join(parts)


def _confusion(summary: dict, names) -> str:
    head = "<section id='confusion'>"
    matrix = summary.get("confusion")
    if matrix is None:
        counts = summary["predicted_counts"]
        cells = "".join(
            f"<tr><th>{shell.escape(_label(c, names))}</th><td>{n}</td></tr>"
            for c, n in enumerate(counts)
        )
        return (
            f"{head}<h2>Predictions</h2><p class='rp-note'>No labels: samples per predicted "
            f"class.</p><table><tr><th>class</th><th>samples</th></tr>{cells}</table></section>"
        )
    if len(matrix) > 50:
        return (
            f"{head}<h2>Confusion matrix</h2><p class='rp-note'>Over 50 classes: see "
            "summary.json.</p></section>"
        )
    top = max(1, max(max(r) for r in matrix))
    cols = "".join(f"<th>{shell.escape(_label(c, names))}</th>" for c in range(len(matrix)))
    body = ""
    for label, row in enumerate(matrix):
        cells = ""
        for pred, n in enumerate(row):
            kind = "rp-diag" if label == pred else ("rp-off" if n else "")
            shade = f" style='--share:{n / top:.3f}'" if n else ""
            cells += f"<td class='{kind}'{shade}>{n or ''}</td>"
        body += f"<tr><th>{shell.escape(_label(label, names))}</th>{cells}</tr>"
    return (
        f"{head}<h2>Confusion matrix</h2><p class='rp-note'>Rows: true class; columns: predicted "
        "class. Off-diagonal cells are mistakes.</p>"
        f"<table class='rp-confusion'><tr><th>true \\ predicted</th>{cols}</tr>{body}</table>"
        "</section>"
    )


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
    extremes, wanted = _picked_extremes(rows)
    listed, pictured = _explorer_samples(run, rows, extremes)
    for s in pictured:
        wanted.setdefault(s, set()).add(int(rows.predicted[_position(rows)[s]]))
    pictures = _pictures(run, method, wanted)
    parts = [
        f"<section id='{_anchor(method)}'><h2>{shell.escape(method)}</h2>",
        _metrics_table(rows, entry),
        _columns_table(entry),
        _mean_maps(run, method, entry, maps, mean_inputs),
        _extremes(run, rows, extremes, pictures),
        _explorer(run, method, rows, listed, pictures),
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
                    f"{field}: median {_fmt(stats['median'])} "
                    f"(5\u201395%: {_fmt(stats['q05'])} to {_fmt(stats['q95'])}), "
                    f"{column['better']} is better"
                )
        baseline = shell.escape(info.baseline)
        tally = rows.against_random.get(metric)
        if tally is not None:
            baseline += _against(info.reference[0], tally)
        better = ", ".join(f"{k}: {v}" for k, v in info.better.items()) or "no direction"
        body += (
            f"<tr><th>{_docs_link(info)}</th><td>{shell.escape(info.measures)}"
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
                f"{shell.escape(column)} {_fmt(mine)}, random {_fmt(other)})"
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
            _fmt(s.get("mean")),
            _fmt(s.get("q05")),
            _fmt(s.get("median")),
            _fmt(s.get("q95")),
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
        head = "".join(f"<th>{shell.escape(_label(p, run.names))}</th>" for p in range(n))
        body = ""
        for label in range(n):
            row = "".join(cell((label, pred)) for pred in range(n))
            body += f"<tr><th>{shell.escape(_label(label, run.names))}</th>{row}</tr>"
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
        right.set_xticks(range(len(classes)), [_label(c, names) for c in classes], fontsize=8)
        right.set_xlabel(
            ("class explained" if info["per"] == "sample and class" else "sample's class")
            + ": 5, 25, 50, 75, 95th percentiles"
        )
    return (
        "<details><summary>Distributions of every metric, over all rows and per class</summary>"
        + _img(fig)
        + "</details>"
    )


def _picked_extremes(rows: MethodRows) -> tuple[list[tuple], dict[int, set[int]]]:
    """Per oriented column, the worst and best samples spread over classes; and the (sample,
    class) pictures they need."""
    picked, wanted = [], {}
    for column in rows.columns:
        ends = rows.candidates.get(column.key)
        if not ends or column.flag:
            continue
        for end in ("worst", "best"):
            items = spread(ends[end], _SHOWN)
            picked.append((column, end, items))
            for _, sample, _, shown in items:
                wanted.setdefault(sample, set()).add(shown)
    return picked, wanted


def _extremes(run: _Run, rows: MethodRows, picked: list, pictures: dict) -> str:
    if not picked:
        return ""
    position = _position(rows)
    parts = [
        "<h3>Worst and best samples</h3><p class='rp-note'>For each metric column with a "
        f"direction, its {_SHOWN} worst and best rows, spread over the classes they explain "
        "(and each sample once) so that one class does not fill the list. Each picture is the "
        "map of the row's class, with the input under it.</p>"
    ]
    headline = _headlines([c for c, _, _ in picked])
    by_column: dict[str, list] = {}
    for column, end, items in picked:
        by_column.setdefault(column.key, [column]).append((end, items))
    for key, (column, *ends) in by_column.items():
        inner = ""
        for end, items in ends:
            words = end
            if _faithful(column.metric):
                words = "least faithful" if end == "worst" else "most faithful"
            cards = "".join(
                _card(
                    pictures.get((sample, shown), ""),
                    sample,
                    rows,
                    position.get(sample),
                    run.names,
                    f"class {_label(shown, run.names)}: {_fmt(value)}",
                )
                for value, sample, _, shown in items
            )
            inner += f"<h4>{shell.escape(words)}</h4><div class='rp-cards'>{cards}</div>"
        opened = " open" if key in headline else ""
        parts.append(
            f"<details class='rp-extremes'{opened}><summary>{shell.escape(key)} "
            f"<small>({column.better} is better)</small></summary>{inner}</details>"
        )
    return "\n".join(parts)


def _default_sort(columns: list[Column]) -> int:
    """The explorer's first sort: the headline column of the first faithfulness metric, else of
    any metric with a direction, else the sample number (-1)."""
    oriented = [c for c in columns if c.better and not c.flag]
    heads = _headlines(oriented)
    ranked = sorted((c for c in oriented if c.key in heads), key=lambda c: not _faithful(c.metric))
    return columns.index(ranked[0]) if ranked else -1


def _headlines(columns: list[Column]) -> set[str]:
    """The column shown first of each metric: its normalised or relative form where it has one."""
    chosen: dict[str, str] = {}
    for c in columns:
        field = c.key.partition(".")[2]
        if c.metric not in chosen or field in ("normalized_auc", "relative_gap"):
            chosen[c.metric] = c.key
    return set(chosen.values())


def _card(picture: str, sample: int, rows: MethodRows, p: int | None, names, value: str) -> str:
    """One sample's card: picture, number and verdict, a value (as the page's script draws)."""
    verdict, state, mark = "", "", ""
    if p is not None:
        predicted = int(rows.predicted[p])
        verdict = f"pred {_label(predicted, names)}"
        if rows.label is not None:
            label = int(rows.label[p])
            verdict = f"true {_label(label, names)} \u00b7 {verdict}"
            state, mark = ("rp-ok", "\u2713") if label == predicted else ("rp-bad", "\u2717")
    picture = picture or "<div class='rp-nopic'>no picture</div>"
    return (
        f"<div class='rp-card' data-sample='{sample}'>{picture}<div class='rp-cap'>"
        f"<b>#{sample}</b> <b class='{state}'>{mark}</b>"
        f"<span class='{state}'>{shell.escape(verdict)}</span>"
        f"<span class='rp-value'>{shell.escape(value)}</span></div></div>"
    )


def _explorer_samples(run: _Run, rows: MethodRows, picked: list) -> tuple[np.ndarray, list[int]]:
    """The samples listed in the explorer (all, up to a limit) and those it pictures."""
    n = len(rows.index)
    listed = np.arange(n) if n <= _LISTED else np.unique(np.linspace(0, n - 1, _LISTED).astype(int))
    cap = min(_PICTURED, _picture_budget(run))
    if n <= cap:
        return listed, [int(s) for s in rows.index]
    chosen = list(dict.fromkeys(s for _, _, items in picked for _, s, _, _ in items))
    wrong = []
    if rows.label is not None:
        wrong = [int(s) for s in rows.index[rows.label != rows.predicted]]
    chosen += wrong[: cap // 3]
    # then round-robin over the predicted classes, in data order
    by_class: dict[int, list[int]] = {}
    for s, c in zip(rows.index.tolist(), rows.predicted.tolist(), strict=True):
        by_class.setdefault(c, []).append(s)
    queues = [iter(v) for _, v in sorted(by_class.items())]
    seen = set(chosen)
    while len(seen) < cap and queues:
        for q in list(queues):
            s = next(q, None)
            if s is None:
                queues.remove(q)
            elif s not in seen:
                seen.add(s)
                chosen.append(s)
    chosen = list(dict.fromkeys(chosen))[:cap]
    keep = set(chosen)
    listed = np.union1d(listed, np.flatnonzero(np.isin(rows.index, list(keep))))
    return listed, chosen


def _explorer(run: _Run, method: str, rows: MethodRows, listed: np.ndarray, pictures: dict) -> str:
    columns = [c for c in rows.columns]
    table = []
    for p in listed.tolist():
        s = int(rows.index[p])
        label = None if rows.label is None else int(rows.label[p])
        predicted = int(rows.predicted[p])
        values = [_number(rows.at_predicted[c.key][p]) for c in columns]
        table.append([s, label, predicted, *values])
    shown = {}
    for (s, c), picture in pictures.items():
        p = _position(rows).get(s)
        if p is not None and int(rows.predicted[p]) == c:
            shown[str(s)] = picture
    classes = {int(c) for c in rows.predicted}
    if rows.label is not None:
        classes |= {int(c) for c in rows.label}
    data = {
        "method": method,
        "columns": [{"key": c.key, "better": c.better, "flag": c.flag} for c in columns],
        "sort": _default_sort(columns),
        "rows": table,
        "names": {str(c): _label(c, run.names) for c in sorted(classes)},
        "labelled": rows.label is not None,
        "pictures": shown,
        "total": len(rows.index),
    }
    note = ""
    if len(listed) < len(rows.index):
        note = (
            f" The explorer lists {len(listed)} of the {len(rows.index)} samples (evenly spaced, "
            "and every pictured one); shards/*.jsonl hold every row."
        )
    what = (
        "the map of the predicted class, the input under it."
        if run.painter.kind == "image"
        else "the predicted class's score of every position, coloured."
    )
    return (
        f"<h3>Samples</h3><p class='rp-note'>Filter by true class, predicted class and "
        "correctness, sort by any column; values are those of the predicted class's row (a "
        "sample's own values for per-sample columns). "
        f"{len(shown)} samples have pictures: {what}{note}</p>"
        f"<div class='rp-explorer' id='explore-{_anchor(method)}'>"
        "<p class='rp-noscript'>The sample explorer needs JavaScript.</p>"
        f"<script type='application/json' class='rp-data'>{shell.script_data(data)}</script>"
        "</div>"
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
    label = first.label if first.label is not None else np.full(len(first.index), -1)
    sums: dict[tuple[int, int], torch.Tensor] = {}
    counts: dict[tuple[int, int], int] = {}
    samples = first.index.tolist()
    keys = list(zip(label.tolist(), first.predicted.tolist(), strict=True))
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


def _position(rows: MethodRows) -> dict[int, int]:
    cached = getattr(rows, "_position", None)
    if cached is None:
        cached = {int(s): p for p, s in enumerate(rows.index.tolist())}
        rows._position = cached  # type: ignore[attr-defined]
    return cached


def _docs_link(info: MetricInfo) -> str:
    name = shell.escape(info.name)
    if not info.docs:
        return name
    page = info.docs.removesuffix(".md") + "/"
    where = f"docs: {info.title}"
    if DOCS_URL:
        href = shell.escape(DOCS_URL + page)
        return f"{name}<div class='rp-doc'><a href='{href}'>{shell.escape(where)}</a></div>"
    return (
        f"{name}<div class='rp-doc' title='docs/{shell.escape(info.docs)}'>"
        f"{shell.escape(where)} (docs/{shell.escape(info.docs)})</div>"
    )


def _faithful(metric: str) -> bool:
    return metric in {"deletion", "insertion", "infidelity", "road", "completeness"}


def _per(column: dict) -> str:
    return "rows" if column["per"] == "sample and class" else "samples"


def _short(model: dict) -> str:
    fingerprint = str(model.get("fingerprint", ""))
    return fingerprint.split(":")[-1][:12] if fingerprint else "none"


def _anchor(method: str) -> str:
    return "m-" + "".join(ch if ch.isalnum() else "-" for ch in method)


def _cell_label(cell: list, names) -> str:
    label, pred, count = cell
    if label < 0:
        return f"predicted {_label(pred, names)} ({count})"
    return f"true {_label(label, names)}, predicted {_label(pred, names)} ({count})"


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


def _number(value: float) -> float | None:
    v = float(value)
    return float(f"{v:.6g}") if math.isfinite(v) else None


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


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
