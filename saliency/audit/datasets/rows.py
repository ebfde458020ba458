"""A shard's results as rows: one JSON line per sample, method and class, and mean-map sums.

Examples
--------
>>> import torch, saliency
>>> a = saliency.gradients(torch.nn.Linear(3, 2), torch.randn(2, 3))
>>> score = torch.tensor([[0.5, 1.0], [2.0, float("nan")]])
>>> lines = json_lines(torch.tensor([7, 8]), None, torch.tensor([0, 1]),
...                    [("gradients", a, {"score": score})])
>>> print(lines[0] + lines[3], end="")
{"index":7,"method":"gradients","class":0,"predicted":0,"score":0.5}
{"index":8,"method":"gradients","class":1,"predicted":1,"score":null}
"""

from __future__ import annotations

import json

import torch

from saliency.attribution import Attribution

__all__ = ["cells", "json_lines", "wanted"]


def wanted(index: torch.Tensor, rows: dict[int, list[int]]) -> torch.Tensor:
    """Per-sample class ids ``[n, K]``: each sample's wanted classes, padded with its first."""
    ids = [rows.get(s) or [0] for s in index.tolist()]
    k = max(len(c) for c in ids)
    return torch.tensor([c + [c[0]] * (k - len(c)) for c in ids], dtype=torch.long)


def cells(name: str, a: Attribution, labels, predicted) -> dict[str, torch.Tensor]:
    """Sums of the predicted class's map per (label, predicted) pair, for the mean maps."""
    hits = a.classes.to(predicted.device) == predicted[:, None]
    has = hits.any(1)
    if not bool(has.any()):
        return {}
    k = hits.to(torch.uint8).argmax(1)
    rows = has.nonzero().flatten()
    maps = a.values.detach()[rows, k[rows].to(a.values.device)].to(torch.float64)
    truth = labels[rows] if labels is not None else torch.full_like(rows, -1)
    pairs = torch.stack([truth.to(rows.device), predicted[rows]], 1)
    cells, inverse = pairs.unique(dim=0, return_inverse=True)
    sums = torch.zeros(len(cells), *maps.shape[1:], dtype=torch.float64, device=maps.device)
    sums.index_add_(0, inverse.to(maps.device), maps)
    counts = torch.bincount(inverse, minlength=len(cells))
    return {f"{name}/cells": cells, f"{name}/cell_counts": counts, f"{name}/cell_sums": sums}


def json_lines(index, labels, predicted, results) -> list[str]:
    """One JSON line per sample, method and class, in that order."""
    index, pred = index.tolist(), predicted.tolist()
    truth = labels.tolist() if labels is not None else None
    lines = []
    for name, a, columns in results:
        ids = a.classes.tolist()
        cols = {c: _plain(v) for c, v in columns.items()}
        for b, sample in enumerate(index):
            for k, class_id in enumerate(ids[b]):
                row = {"index": sample, "method": name, "class": class_id}
                if truth is not None:
                    row["label"] = truth[b]
                row["predicted"] = pred[b]
                for c, values in cols.items():
                    v = values[b]
                    row[c] = v[k] if isinstance(v, list) else v
                # Keys in a fixed order (not sorted): index, method, class first, for readers.
                lines.append(json.dumps(row, separators=(",", ":"), allow_nan=False) + "\n")
    return lines


def _plain(value: torch.Tensor) -> list:
    """A column as Python values: floats to 9 significant digits (float32 round-trips), non-finite
    values as None."""
    value = value.detach().cpu()
    if value.dtype == torch.bool or not value.is_floating_point():
        return value.tolist()
    values = value.double().tolist()
    return _round(values)


def _round(values):
    if isinstance(values, list):
        return [_round(v) for v in values]
    if values != values or values in (float("inf"), float("-inf")):
        return None
    return float(f"{values:.9g}")
