"""What the report needs from the shards beyond the summary: one pass over every shard's rows.

The summary holds distributions and the five most extreme rows of each column overall; an
auditor also wants the worst samples of *every* class (a column's overall extremes often all
come from the class with the largest scores), each sample's values for its predicted class (to
filter and sort samples in the page), and how often a map beats its random-order reference. All
of it is gathered here shard by shard, holding a few candidates per class rather than all rows.

Examples
--------
>>> import numpy as np
>>> rows = [(9.0, 1, 3, 3), (8.0, 2, 3, 3), (7.5, 1, 5, 5), (7.0, 3, 5, 5), (1.0, 4, 0, 0)]
>>> [sample for _, sample, _, _ in spread(rows, 3)]   # classes 3, 5, 0; sample 1 once
[1, 3, 4]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import safe_open

from . import shards

__all__ = ["Column", "MethodRows", "read_rows", "spread"]

PER_CLASS = 3  # candidates kept per class and column end; a page shows at most a few per class


@dataclass(frozen=True)
class Column:
    """One metric column of a method: ``"deletion.auc"``, one value per row or per sample."""

    key: str
    per_row: bool
    better: str | None  # "lower", "higher", or None when no direction is known
    flag: bool

    @property
    def metric(self) -> str:
        return self.key.partition(".")[0]


@dataclass
class MethodRows:
    """A method's samples: labels, predictions, values at the predicted class, extremes."""

    index: np.ndarray  # [n] sample ids, in data order
    label: np.ndarray | None  # [n]
    predicted: np.ndarray  # [n]
    columns: list[Column]
    at_predicted: dict[str, np.ndarray] = field(default_factory=dict)  # key -> [n], NaN if absent
    # key -> "worst"/"best" -> [(value, sample, class key, class pictured)], <= PER_CLASS a class
    candidates: dict[str, dict[str, list[tuple]]] = field(default_factory=dict)
    # metric -> [rows where the map beats its random order, rows compared, map mean, random
    # mean] over all rows, then the same over the rows of the predicted classes
    against_random: dict[str, list[float]] = field(default_factory=dict)


def read_rows(
    out: Path, manifest: Mapping, method: str, columns: Sequence[Column], references: Mapping
) -> MethodRows:
    """Read every shard of the run in ``out`` for ``method``'s ``columns``.

    ``references`` maps a metric to ``(column, reference column)`` pairs, e.g. ``deletion`` to
    ``("auc", "random_auc")``, compared row by row in the direction of the column.
    """
    folder = out / shards.SHARDS
    index, labels, predicted, parts = [], [], [], {c.key: [] for c in columns}
    ends: dict[str, dict[str, _Candidates]] = {
        c.key: {"worst": _Candidates(), "best": _Candidates()} for c in columns if c.better
    }
    against = {m: [0.0] * 8 for m in references}
    for i in range(manifest["shards"]["count"]):
        path = folder / f"{shards.stem(i)}.safetensors"
        with safe_open(str(path), framework="numpy") as f:
            keys = set(f.keys())
            if f"{method}/classes" not in keys:
                continue  # a shard whose samples were all skipped
            ids = f.get_tensor("index")
            pred = f.get_tensor("predicted")
            truth = f.get_tensor("label") if "label" in keys else None
            classes = f.get_tensor(f"{method}/classes")
            hit = classes == pred[:, None]
            row = np.where(hit.any(1), hit.argmax(1), -1)
            group = truth if truth is not None else pred
            index.append(ids)
            predicted.append(pred)
            if truth is not None:
                labels.append(truth)
            for c in columns:
                name = f"{method}/{c.key}"
                if name not in keys:
                    parts[c.key].append(np.full(len(ids), np.nan))
                    continue
                values = f.get_tensor(name).astype(np.float64)
                if c.per_row:
                    picked = values[np.arange(len(ids)), np.maximum(row, 0)]
                    parts[c.key].append(np.where(row >= 0, picked, np.nan))
                    keys_, shown = classes, classes
                else:
                    parts[c.key].append(values)
                    values = values[:, None]
                    keys_, shown = group[:, None], pred[:, None]
                if c.key in ends:
                    samples = np.broadcast_to(ids[:, None], values.shape)
                    flat = (values.ravel(), samples.ravel(), keys_.ravel(), shown.ravel())
                    worse_high = c.better == "lower"
                    ends[c.key]["worst"].add(*flat, high=worse_high)
                    ends[c.key]["best"].add(*flat, high=not worse_high)
            for metric, (column, reference) in references.items():
                a, r = f"{method}/{metric}.{column}", f"{method}/{metric}.{reference}"
                if a in keys and r in keys:
                    mine, other = f.get_tensor(a).astype(np.float64), f.get_tensor(r)
                    lower = _better(metric, column, columns) == "lower"
                    _tally(against[metric], mine, other, lower)
                    if mine.ndim == 2:  # and the rows of the predicted classes alone
                        at = (np.arange(len(ids)), np.maximum(row, 0))
                        keep = row >= 0
                        _tally(against[metric], mine[at][keep], other[at][keep], lower, 4)
    rows = MethodRows(
        index=_cat(index, np.int64),
        label=_cat(labels, np.int64) if labels else None,
        predicted=_cat(predicted, np.int64),
        columns=list(columns),
    )
    rows.at_predicted = {key: _cat(p, np.float64) for key, p in parts.items()}
    rows.candidates = {k: {end: c.items() for end, c in pair.items()} for k, pair in ends.items()}
    for metric, tally in against.items():
        if tally[1]:
            rows.against_random[metric] = _means(tally[:4]) + _means(tally[4:])
    return rows


def spread(candidates: Sequence[tuple], n: int) -> list[tuple]:
    """The ``n`` first of ``candidates`` ``(value, sample, class key, class shown)``, ordered
    worst first, with classes spread and samples once: at most ``ceil(n / classes)`` per class
    key (``classes``: how many keys have candidates), and one row per sample."""
    if not candidates:
        return []
    cap = math.ceil(n / len({c[2] for c in candidates}))
    taken: dict[int, int] = {}
    seen: set[int] = set()
    picks = []
    for item in candidates:
        if taken.get(item[2], 0) < cap and item[1] not in seen:
            taken[item[2]] = taken.get(item[2], 0) + 1
            seen.add(item[1])
            picks.append(item)
            if len(picks) == n:
                break
    return picks


class _Candidates:
    """The ``PER_CLASS`` most extreme rows of each class key, kept as shards come."""

    def __init__(self) -> None:
        self.kept: list[np.ndarray] = []  # value, sample, class key, class shown

    def add(self, values, samples, keys, shown, *, high: bool) -> None:
        self.high = high
        finite = np.isfinite(values)
        block = np.stack([values[finite], samples[finite], keys[finite], shown[finite]], 1)
        self.kept = [self._trim(np.concatenate([*self.kept, block]))]

    def _trim(self, block: np.ndarray) -> np.ndarray:
        if not len(block):
            return block
        # by class key, then most extreme first (ties: the lower sample id first)
        order = np.lexsort((block[:, 1], -block[:, 0] if self.high else block[:, 0], block[:, 2]))
        block = block[order]
        first = np.r_[0, np.flatnonzero(np.diff(block[:, 2])) + 1]
        rank = np.arange(len(block)) - np.repeat(first, np.diff(np.r_[first, len(block)]))
        return block[rank < PER_CLASS]

    def items(self) -> list[tuple]:
        """Every kept row, most extreme first: (value, sample, class key, class shown)."""
        if not self.kept or not len(self.kept[0]):
            return []
        block = self.kept[0]
        order = np.lexsort((block[:, 1], -block[:, 0] if self.high else block[:, 0]))
        return [(float(v), int(s), int(k), int(c)) for v, s, k, c in block[order]]


def _tally(tally: list, mine, other, lower: bool, at: int = 0) -> None:
    both = np.isfinite(mine) & np.isfinite(other)
    beats = mine[both] < other[both] if lower else mine[both] > other[both]
    tally[at] += int(beats.sum())
    tally[at + 1] += int(both.sum())
    tally[at + 2] += float(mine[both].sum())
    tally[at + 3] += float(other[both].sum())


def _means(tally: list) -> list[float]:
    beaten, total, mine, other = tally
    return [beaten, total, mine / total, other / total] if total else [0, 0, math.nan, math.nan]


def _better(metric: str, column: str, columns: Sequence[Column]) -> str | None:
    for c in columns:
        if c.key == f"{metric}.{column}":
            return c.better
    return None


def _cat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)
