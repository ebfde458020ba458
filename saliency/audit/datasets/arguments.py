"""The arguments of a run, checked at the door: metrics per method, batch size, classes, and
whether each metric can measure what each method gives.

Examples
--------
>>> import saliency
>>> check_ids(saliency.top_k(3), 10), rows_per_sample(saliency.top_k(3), 10)
(None, 3)
>>> rows_per_sample(None, 10), rows_per_sample("label", 10)
(10, 1)
>>> default_metrics("label"), default_metrics(None)
(['deletion'], ['deletion', 'class_sensitivity'])
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from saliency.targets import Contrast, TopK

from . import methods as method_specs
from . import metrics as metric_specs
from .sources import Source

__all__ = [
    "DEFAULT_METRICS",
    "check_batch_size",
    "check_classes",
    "check_fit",
    "check_ids",
    "check_labels",
    "check_metrics",
    "check_out_dir",
    "default_metrics",
    "misfit",
    "rows_per_sample",
]

DEFAULT_METRICS = ("deletion", "class_sensitivity")


# Metrics that perturb or differentiate the inputs themselves: they need floating inputs.
PERTURB_INPUTS = ("deletion", "insertion", "road", "infidelity", "sensitivity_max", "margins")


def default_metrics(
    classes: object, n_outputs: int | None = None, *, token_ids: bool = False
) -> list[str]:
    """The metrics of a run that names none: :data:`DEFAULT_METRICS`, without
    ``class_sensitivity`` when each sample gets one row (nothing to compare it with), and
    without those that perturb the inputs when these are token ids."""
    k = rows_per_sample(classes, n_outputs) if n_outputs is not None or classes is not None else 2
    return [
        m
        for m in DEFAULT_METRICS
        if (m != "class_sensitivity" or k >= 2) and not (token_ids and m in PERTURB_INPUTS)
    ]


def check_metrics(metrics, options, methods: list[str]) -> dict[str, list[metric_specs.MetricSpec]]:
    """Each method's metrics: one list for all methods, or a dict method name -> list."""
    if not isinstance(metrics, Mapping):
        found = metric_specs.resolve(metrics, options)
        return {name: found for name in methods}
    unknown = sorted(set(metrics) - set(methods))
    if unknown:
        raise ValueError(f"metrics: {unknown} are not among methods {methods}")
    options = dict(options or {})
    every = {
        m for names in metrics.values() for m in ([names] if isinstance(names, str) else names)
    }
    extra = sorted(set(options) - every)
    if extra:
        raise ValueError(f"metric_options: {extra} are not among metrics {sorted(every)}")
    out = {}
    for name in methods:
        chosen = metrics.get(name, [])
        chosen = [chosen] if isinstance(chosen, str) else list(chosen)
        out[name] = metric_specs.resolve(chosen, {m: options[m] for m in chosen if m in options})
    return out


def check_out_dir(out_dir: object) -> Path:
    """``out_dir`` as a path a run can create or open: not empty, not a file, not under a file,
    not a symbolic link to nowhere (checked without writing anything)."""
    if not isinstance(out_dir, str | os.PathLike):
        raise TypeError(f"out_dir: expected a folder path, got {type(out_dir).__name__}")
    if os.fspath(out_dir) == "":
        raise ValueError(
            "out_dir: '' is no folder; name one ('.' for the current folder, if it is empty)"
        )
    out = Path(out_dir)
    for path in (out, *out.parents):
        if path.is_symlink() and not path.exists():
            raise FileNotFoundError(
                f"out_dir: {str(path)!r} is a symbolic link to {os.readlink(path)!r}, which does "
                "not exist; create that folder or choose another out_dir"
            )
        if path.exists():
            if not path.is_dir():
                where = "is a file" if path == out else f"is inside {str(path)!r}, a file"
                raise NotADirectoryError(f"out_dir: {str(out)!r} {where}, not a folder")
            break
    return out


def check_batch_size(batch_size: int | None, source: Source) -> int:
    if batch_size is None:
        return source.batch_size or 32
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    if source.batch_size is not None and source.batch_size != batch_size:
        raise ValueError(
            f"batch_size: {batch_size} differs from the DataLoader's batch_size "
            f"{source.batch_size}; leave batch_size out to use the DataLoader's"
        )
    return batch_size


def check_classes(classes: object, source: Source) -> object:
    if isinstance(classes, str):
        if classes != "label":
            raise ValueError(
                f"classes: expected None, ids, saliency.top_k(k), a contrast or 'label', got "
                f"{classes!r}"
            )
        if not source.labelled:
            raise ValueError("classes: 'label' explains each sample's label, but data has none")
        return classes
    if isinstance(classes, torch.Tensor):
        if classes.ndim > 1:
            raise ValueError(
                f"classes: per-sample ids {list(classes.shape)} cannot follow a data set's "
                "shards; use 'label', saliency.top_k(k) or a list of ids"
            )
        classes = classes.tolist()
    if isinstance(classes, tuple):
        classes = list(classes)
    if isinstance(classes, list):
        if not classes or not all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
            raise ValueError(f"classes: expected a non-empty list of int ids, got {classes!r}")
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes: each class once, got {classes!r}")
    elif not (classes is None or isinstance(classes, TopK | Contrast) or _is_int(classes)):
        raise TypeError(
            f"classes: expected None, an id, a list of ids, saliency.top_k(k), a contrast or "
            f"'label', got {type(classes).__name__}"
        )
    return int(classes) if _is_int(classes) else classes


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_ids(classes: object, n_outputs: int) -> None:
    """Class ids and ``top_k`` against the model's number of outputs."""
    ids = []
    if isinstance(classes, TopK) and classes.k > n_outputs:
        raise ValueError(
            f"classes: top_k({classes.k}) asks for more classes than the model's {n_outputs} "
            "outputs"
        )
    if isinstance(classes, int):
        ids = [classes]
    elif isinstance(classes, list):
        ids = classes
    elif isinstance(classes, Contrast):
        ids = [*classes.a, *classes.b]
    bad = [i for i in ids if not 0 <= i < n_outputs]
    if bad:
        raise ValueError(
            f"classes: ids {bad} are out of range for a model with {n_outputs} outputs"
        )


def check_labels(labels: torch.Tensor | None, n_outputs: int, first: int = 0) -> None:
    """Labels against the model's classes: each must be a class id ``0 .. n_outputs - 1``
    (``-1`` would count in the last class's row, ``40`` would size the confusion matrix).
    ``first`` is the data-set index of ``labels[0]``, for the message."""
    if labels is None or not labels.numel():
        return
    bad = ((labels < 0) | (labels >= n_outputs)).nonzero().flatten()
    if not bad.numel():
        return
    shown = bad[:8].tolist()
    samples = ", ".join(str(first + i) for i in shown) + (", ..." if bad.numel() > 8 else "")
    values = ", ".join(str(int(labels[i])) for i in shown)
    raise ValueError(
        f"data: the labels of samples {samples} are {values}, not class ids of a model with "
        f"{n_outputs} outputs (0-{n_outputs - 1}); fix the labels, or pass the data without "
        "labels to audit unlabelled samples"
    )


def rows_per_sample(classes: object, n_outputs: int) -> int:
    """``K``, the rows each sample gets."""
    if classes is None:
        return n_outputs
    if isinstance(classes, TopK):
        return classes.k
    if isinstance(classes, Contrast):
        return len(classes.a)
    if isinstance(classes, list):
        return len(classes)
    return 1


def misfit(metric: str, spec: method_specs.MethodSpec) -> str | None:
    """Why ``metric`` cannot measure what method ``spec`` gives, or None when it can (or when
    ``spec`` is a callable of unknown kind, whose result only the run can tell)."""
    kind = method_specs.kind(spec)
    if kind is None:
        return None
    if metric == "completeness" and kind != "integrated_gradients":
        return (
            "it needs the completeness gap (Attribution.delta) that only integrated gradients "
            "record"
        )
    if metric == "margins":
        options = [o for o in ("times_input", "abs", "layer") if method_specs.bound(spec, o)]
        if kind != "gradients" or options:
            return (
                "it needs plain input gradients (saliency.gradients without times_input, abs "
                "or layer)"
            )
    return None


def check_fit(
    metrics: Mapping[str, list[metric_specs.MetricSpec]],
    methods: list[method_specs.MethodSpec],
    classes: object,
    n_outputs: int,
    x: torch.Tensor,
) -> None:
    """Refuse, before anything runs, a metric that cannot measure a method's rows: too few
    classes per sample, the wrong method, samples that are not images, or token ids where a
    metric perturbs the inputs (``x``: the first samples)."""
    shape = x.shape[1:]
    k = rows_per_sample(classes, n_outputs)
    asked = f"classes={_described(classes)} gives {k} per sample"
    for spec in methods:
        for metric in (m.name for m in metrics[spec.name]):
            reason = misfit(metric, spec)
            if reason is not None:
                raise ValueError(
                    f"metrics: {metric!r} cannot measure method {spec.name!r} "
                    f"({method_specs.kind(spec)}): {reason}; give each method its own metrics, "
                    f"e.g. metrics={{{spec.name!r}: [...], ...}}"
                )
            if metric == "class_sensitivity" and k < 2:
                raise ValueError(
                    "metrics: 'class_sensitivity' compares each sample's classes and needs 2 or "
                    f"more per sample, but {asked}; ask for more classes or leave "
                    "class_sensitivity out"
                )
            if metric == "margins" and not _every_class(classes, n_outputs):
                raise ValueError(
                    "metrics: 'margins' compares every class with each sample's own and needs "
                    f"all {n_outputs} classes of the model (classes=None), but {asked}"
                )
            if metric in PERTURB_INPUTS and not x.is_floating_point():
                raise ValueError(
                    f"metrics: {metric!r} perturbs or differentiates the inputs themselves, but "
                    f"the data's samples are {x.dtype} (token ids?), which have no values in "
                    "between; measure attributions of token ids with class_sensitivity, "
                    "completeness or norms"
                )
            if metric == "road" and len(shape) != 3:
                raise ValueError(
                    "metrics: 'road' imputes removed pixels from their neighbours and needs "
                    f"images [C, H, W], but the data's samples have shape {list(shape)}; use "
                    "deletion or insertion"
                )


def _every_class(classes: object, n_outputs: int) -> bool:
    if classes is None:
        return True
    if isinstance(classes, TopK):
        return classes.k == n_outputs
    return isinstance(classes, list) and sorted(classes) == list(range(n_outputs))


def _described(classes: object) -> str:
    if isinstance(classes, TopK):
        return f"top_k({classes.k})"
    if isinstance(classes, Contrast):
        return "a contrast"
    return repr(classes)
