"""Merge a run's shards into ``summary.json`` and ``summary.safetensors``.

The summary holds, per method: the distribution of every metric column (over all rows and per
class: count, mean, std, quantiles), the samples with the lowest and highest values, and the mean
maps of the predicted class per (label, predicted) pair, the cells of the confusion matrix (mean
maps in ``summary.safetensors``). It depends only on the shards, so a resumed run and an
uninterrupted one write the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from saliency._atomic import atomic_write

from . import shards

__all__ = ["EXTREMES", "column_stats", "grouped_stats", "write_summary"]

EXTREMES = 5  # samples listed at each end of every column
_QUANTILES = {"q05": 0.05, "q25": 0.25, "median": 0.5, "q75": 0.75, "q95": 0.95}


def write_summary(
    out: Path,
    manifest: Mapping,
    methods: Sequence[str],
    better: Mapping[str, Mapping[str, str]],
) -> dict:
    """Read every shard of the run in ``out``, write the summary files, return the summary."""
    folder = out / shards.SHARDS
    count = manifest["shards"]["count"]
    labelled = manifest["data"]["labelled"]
    parts: list[dict[str, torch.Tensor]] = []
    skipped: list[dict] = []
    cells = {method: _Cells() for method in methods}
    for i in range(count):
        record = shards.read_record(folder, i)
        skipped += record.get("skipped", [])
        part = load_file(folder / f"{shards.stem(i)}.safetensors")
        for method in methods:  # map sums are added up as they come, not all held at once
            cells[method].add(part, method)
        parts.append({k: v for k, v in part.items() if "/cell" not in k})
    index = _cat(parts, "index", torch.long)
    summary: dict = {
        "format": "saliency.audit.run/summary",
        "version": 1,
        "samples": manifest["data"]["samples"],
        "explained": int(index.numel()),
        "skipped": skipped,
        "labelled": labelled,
        "methods": {},
    }
    outputs = [p["outputs"] for p in parts if "outputs" in p]
    n_outputs = outputs[0].shape[1] if outputs else 0
    predicted = _cat(parts, "predicted", torch.long)
    labels = _cat(parts, "label", torch.long) if labelled else None
    summary["predicted_counts"] = torch.bincount(predicted, minlength=n_outputs).tolist()
    if labels is not None and labels.numel():
        size = max(n_outputs, int(labels.max()) + 1, int(predicted.max()) + 1)
        confusion = torch.zeros(size, size, dtype=torch.long)
        confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
        summary["confusion"] = confusion.tolist()
        summary["accuracy"] = _number((labels == predicted).double().mean())
    maps: dict[str, torch.Tensor] = {}
    for method in methods:
        summary["methods"][method] = _method(method, parts, index, labels, better)
        summary["methods"][method]["maps"], method_maps = cells[method].means(method)
        maps.update(method_maps)
    with atomic_write(out / "summary.safetensors") as f:
        f.write(save({k: v.contiguous() for k, v in maps.items()}))
    text = json.dumps(summary, indent=1, sort_keys=True, allow_nan=False) + "\n"
    with atomic_write(out / "summary.json", "w") as f:
        f.write(text)
    return json.loads(text)


def column_stats(values: torch.Tensor) -> dict:
    """Count, non-finite count, mean, std and quantiles of a column, JSON-safe.

    Examples
    --------
    >>> s = column_stats(torch.tensor([1.0, 2.0, 3.0, float("nan")]))
    >>> s["count"], s["nonfinite"], s["mean"], s["median"]
    (4, 1, 2.0, 2.0)
    """
    v = values.detach().reshape(-1).double()
    return _stats(torch.sort(v[torch.isfinite(v)]).values, int(v.numel()))


def grouped_stats(values: torch.Tensor, keys: torch.Tensor) -> dict[str, dict]:
    """:func:`column_stats` of ``values`` for each value of ``keys`` (same shape), by key.

    One sort of all rows, not one pass per key: a column of a thousand classes costs about what
    one class does.

    Examples
    --------
    >>> by = grouped_stats(torch.tensor([1.0, 5.0, 3.0, float("inf")]), torch.tensor([0, 1, 0, 1]))
    >>> by["0"]["median"], by["1"]["count"], by["1"]["nonfinite"]
    (2.0, 2, 1)
    """
    v = values.detach().reshape(-1).double()
    k = keys.detach().reshape(-1).to(torch.long, copy=False).to(v.device)
    if not k.numel():
        return {}
    every, totals = torch.unique(k, return_counts=True)
    finite = torch.isfinite(v)
    by_value = torch.sort(v[finite])
    # then by key, stably: each key's finite values end up together, in ascending order
    by_key = torch.sort(k[finite][by_value.indices], stable=True)
    ordered = by_value.values[by_key.indices]
    found, counts = torch.unique_consecutive(by_key.values, return_counts=True)
    where = dict(zip(found.tolist(), torch.cumsum(counts, 0).sub(counts).tolist(), strict=True))
    sizes = dict(zip(found.tolist(), counts.tolist(), strict=True))
    out = {}
    for key, total in zip(every.tolist(), totals.tolist(), strict=True):
        start = where.get(key, 0)
        out[str(key)] = _stats(ordered[start : start + sizes.get(key, 0)], int(total))
    return out


def _stats(ordered: torch.Tensor, count: int) -> dict:
    """The statistics of a column whose finite values, ascending, are ``ordered``, of ``count``
    values in all."""
    stats: dict = {"count": count, "nonfinite": count - int(ordered.numel())}
    if ordered.numel():
        stats.update(
            mean=_number(ordered.mean()),
            std=_number(ordered.std(unbiased=False)),
            min=_number(ordered[0]),
            max=_number(ordered[-1]),
        )
        # torch.quantile's linear interpolation, on values already sorted
        q = torch.tensor(list(_QUANTILES.values()), dtype=torch.float64, device=ordered.device)
        position = q * (ordered.numel() - 1)
        below = position.floor()
        values = torch.lerp(
            ordered[below.long()], ordered[position.ceil().long()], position - below
        )
        stats.update({name: _number(x) for name, x in zip(_QUANTILES, values, strict=True)})
    return stats


def _method(method, parts, index, labels, better):
    prefix = f"{method}/"
    present = [p for p in parts if f"{prefix}classes" in p]
    classes = _cat(present, f"{prefix}classes", torch.long)
    names = sorted({k[len(prefix) :] for p in present for k in p if k.startswith(prefix)})
    names = [n for n in names if n != "classes" and not n.startswith("cell")]
    entry: dict = {"columns": {}}
    predicted = _cat(present, "predicted", torch.long)
    # Per-sample columns are grouped by the sample's label (or prediction when unlabelled), and
    # their extremes name the predicted class.
    group = labels if labels is not None else predicted
    for name in names:
        values = _cat(present, prefix + name, None)
        flag = values.dtype == torch.bool
        if flag:
            values = values.to(torch.float64)
        elif not values.is_floating_point():
            continue  # class ids and counts: no distribution to speak of
        per_row = values.ndim == 2
        keys = classes if per_row else group
        metric, _, field = name.partition(".")
        column = {
            "all": column_stats(values),
            "by_class": grouped_stats(values, keys),
            "lowest": _extremes(values, index, classes if per_row else predicted[:, None], False),
            "highest": _extremes(values, index, classes if per_row else predicted[:, None], True),
            "per": "sample and class" if per_row else "sample",
        }
        if flag:
            column["kind"] = "flag"  # yes (1) or no (0): its mean is the share of yes
        direction = better.get(metric, {}).get(field)
        if direction is not None:
            column["better"] = direction
        entry["columns"][name] = column
    return entry


def _extremes(values, index, classes, descending: bool) -> list[dict]:
    flat = values.reshape(-1).double()
    rows = torch.isfinite(flat).nonzero().flatten()
    if not rows.numel():
        return []
    # stable: ties keep sample order, so the list never depends on sort internals
    order = torch.sort(flat[rows], descending=descending, stable=True).indices[:EXTREMES]
    picked = rows[order]
    k = values.shape[1] if values.ndim == 2 else 1
    out = []
    for row in picked.tolist():
        b, j = divmod(row, k)
        out.append(
            {"index": int(index[b]), "class": int(classes[b, j]), "value": _number(flat[row])}
        )
    return out


class _Cells:
    """Running sums of the predicted class's maps per (label, predicted) cell, over shards."""

    def __init__(self) -> None:
        self.sums: dict[tuple[int, int], torch.Tensor] = {}
        self.counts: dict[tuple[int, int], int] = {}

    def add(self, part: dict[str, torch.Tensor], method: str) -> None:
        cells = part.get(f"{method}/cells")
        if cells is None:
            return
        counts, sums = part[f"{method}/cell_counts"].tolist(), part[f"{method}/cell_sums"]
        for cell, n, total in zip(cells.tolist(), counts, sums, strict=True):
            key = (cell[0], cell[1])
            self.sums[key] = self.sums[key] + total if key in self.sums else total.clone()
            self.counts[key] = self.counts.get(key, 0) + n

    def means(self, method: str) -> tuple[dict, dict[str, torch.Tensor]]:
        keys = sorted(self.sums)
        info = {"cells": [[label, pred, self.counts[(label, pred)]] for label, pred in keys]}
        if not keys:
            return info, {}
        means = torch.stack([self.sums[k] / self.counts[k] for k in keys]).to(torch.float32)
        return info, {
            f"{method}/cells": torch.tensor(keys, dtype=torch.long),
            f"{method}/cell_counts": torch.tensor([self.counts[k] for k in keys]),
            f"{method}/cell_means": means,
        }


def _cat(parts: list[dict], key: str, dtype) -> torch.Tensor:
    found = [p[key] for p in parts if key in p]
    if not found:
        return torch.empty(0, dtype=dtype or torch.float32)
    return torch.cat(found)


def _number(value: torch.Tensor | float) -> float | None:
    v = float(value)
    if v != v or v in (float("inf"), float("-inf")):
        return None
    return float(f"{v:.9g}")
