"""The report's samples: the worst and best of every metric spread over classes, and the
explorer that lists every sample for the page's script to filter and sort.

Examples
--------
>>> from saliency.audit.datasets.report_rows import Column
>>> columns = [Column("norms.l1", True, None, False), Column("deletion.auc", True, "lower", False),
...            Column("deletion.normalized_auc", True, "lower", False)]
>>> default_sort(columns)   # the explorer opens on the normalised faithfulness column
2
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from saliency.viz import html as shell

from .report_header import anchor, fmt, label
from .report_metrics import faithful
from .report_rows import Column, MethodRows, spread

__all__ = [
    "SHOWN",
    "cards_of_extremes",
    "default_sort",
    "explorer",
    "explorer_samples",
    "extremes",
    "position",
]

SHOWN = 10  # worst and best samples pictured per column
_LISTED = 20000  # samples listed in the explorer at most


def extremes(rows: MethodRows) -> tuple[list[tuple], dict[int, set[int]]]:
    """Per oriented column, the worst and best samples spread over classes; and the (sample,
    class) pictures they need."""
    picked, wanted = [], {}
    for column in rows.columns:
        ends = rows.candidates.get(column.key)
        if not ends or column.flag:
            continue
        for end in ("worst", "best"):
            items = spread(ends[end], SHOWN)
            picked.append((column, end, items))
            for _, sample, _, shown in items:
                wanted.setdefault(sample, set()).add(shown)
    return picked, wanted


def cards_of_extremes(rows: MethodRows, picked: list, pictures: dict, names) -> str:
    """The worst and best samples of every oriented column as cards, one fold a column."""
    if not picked:
        return ""
    where = position(rows)
    parts = [
        "<h3>Worst and best samples</h3><p class='rp-note'>For each metric column with a "
        f"direction, its {SHOWN} worst and best rows, spread over the classes they explain "
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
            if faithful(column.metric):
                words = "least faithful" if end == "worst" else "most faithful"
            cards = "".join(
                _card(
                    pictures.get((sample, shown), ""),
                    sample,
                    rows,
                    where.get(sample),
                    names,
                    f"class {label(shown, names)}: {fmt(value)}",
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


def _headlines(columns: list[Column]) -> set[str]:
    """The column shown first of each metric: its normalised or relative form where it has one."""
    chosen: dict[str, str] = {}
    for c in columns:
        field = c.key.partition(".")[2]
        if c.metric not in chosen or field in ("normalized_auc", "relative_gap"):
            chosen[c.metric] = c.key
    return set(chosen.values())


def default_sort(columns: list[Column]) -> int:
    """The explorer's first sort: the headline column of the first faithfulness metric, else of
    any metric with a direction, else the sample number (-1)."""
    oriented = [c for c in columns if c.better and not c.flag]
    heads = _headlines(oriented)
    ranked = sorted((c for c in oriented if c.key in heads), key=lambda c: not faithful(c.metric))
    return columns.index(ranked[0]) if ranked else -1


def _card(picture: str, sample: int, rows: MethodRows, p: int | None, names, value: str) -> str:
    """One sample's card: picture, number and verdict, a value (as the page's script draws)."""
    verdict, state, mark = "", "", ""
    if p is not None:
        predicted = int(rows.predicted[p])
        verdict = f"pred {label(predicted, names)}"
        if rows.label is not None:
            truth = int(rows.label[p])
            verdict = f"true {label(truth, names)} \u00b7 {verdict}"
            state, mark = ("rp-ok", "\u2713") if truth == predicted else ("rp-bad", "\u2717")
    picture = picture or "<div class='rp-nopic'>no picture</div>"
    return (
        f"<div class='rp-card' data-sample='{sample}'>{picture}<div class='rp-cap'>"
        f"<b>#{sample}</b> <b class='{state}'>{mark}</b>"
        f"<span class='{state}'>{shell.escape(verdict)}</span>"
        f"<span class='rp-value'>{shell.escape(value)}</span></div></div>"
    )


def explorer_samples(rows: MethodRows, picked: list, cap: int) -> tuple[np.ndarray, list[int]]:
    """The positions of the samples the explorer lists (all, up to a limit), and the ids of the
    ``cap`` at most it pictures: mistakes (up to a third), the worst and best of every column,
    then each predicted class in turn, in data order."""
    n = len(rows.index)
    listed = np.arange(n) if n <= _LISTED else np.unique(np.linspace(0, n - 1, _LISTED).astype(int))
    if n <= cap:
        return listed, [int(s) for s in rows.index]
    wrong = []
    if rows.label is not None:
        wrong = [int(s) for s in rows.index[rows.label != rows.predicted]][: cap // 3]
    extremes = [s for _, _, items in picked for _, s, _, _ in items]
    by_class: dict[int, list[int]] = {}
    for s, c in zip(rows.index.tolist(), rows.predicted.tolist(), strict=True):
        by_class.setdefault(c, []).append(s)
    turns = [s for group in itertools.zip_longest(*by_class.values()) for s in group]
    turns = [s for s in turns if s is not None]
    chosen = list(dict.fromkeys([*wrong, *extremes, *turns]))[:cap]
    listed = np.union1d(listed, np.flatnonzero(np.isin(rows.index, chosen)))
    return listed, chosen


def explorer(
    method: str, rows: MethodRows, listed: np.ndarray, pictures: dict, names, kind: str
) -> str:
    """The explorer's rows and pictures, inlined for the page's script."""
    columns = [c for c in rows.columns]
    table = []
    for p in listed.tolist():
        s = int(rows.index[p])
        truth = None if rows.label is None else int(rows.label[p])
        predicted = int(rows.predicted[p])
        values = [_number(rows.at_predicted[c.key][p]) for c in columns]
        table.append([s, truth, predicted, *values])
    shown = {}
    for (s, c), picture in pictures.items():
        p = position(rows).get(s)
        if p is not None and int(rows.predicted[p]) == c:
            shown[str(s)] = picture
    classes = {int(c) for c in rows.predicted}
    if rows.label is not None:
        classes |= {int(c) for c in rows.label}
    data = {
        "method": method,
        "columns": [{"key": c.key, "better": c.better, "flag": c.flag} for c in columns],
        "sort": default_sort(columns),
        "rows": table,
        "names": {str(c): label(c, names) for c in sorted(classes)},
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
        if kind == "image"
        else "the predicted class's score of every position, coloured."
    )
    return (
        f"<h3>Samples</h3><p class='rp-note'>Filter by true class, predicted class and "
        "correctness, sort by any column; values are those of the predicted class's row (a "
        "sample's own values for per-sample columns). "
        f"{len(shown)} samples have pictures: {what}{note}</p>"
        f"<div class='rp-explorer' id='explore-{anchor(method)}'>"
        "<p class='rp-noscript'>The sample explorer needs JavaScript.</p>"
        f"<script type='application/json' class='rp-data'>{shell.script_data(data)}</script>"
        "</div>"
    )


def position(rows: MethodRows) -> dict[int, int]:
    cached = getattr(rows, "position", None)
    if cached is None:
        cached = {int(s): p for p, s in enumerate(rows.index.tolist())}
        rows.position = cached  # type: ignore[attr-defined]
    return cached


def _number(value: float) -> float | None:
    v = float(value)
    return float(f"{v:.6g}") if math.isfinite(v) else None
