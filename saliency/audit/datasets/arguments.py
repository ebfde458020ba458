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

from saliency.methods import records as method_records
from saliency.targets import Contrast, TopK

from .. import records as metric_records
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
    "perturbs_inputs",
    "rows_per_sample",
]

DEFAULT_METRICS = ("deletion", "class_sensitivity")


def default_metrics(
    classes: object, n_outputs: int | None = None, *, token_ids: bool = False
) -> list[str]:
    """The metrics of a run that names none: :data:`DEFAULT_METRICS`, without those that compare
    each sample's classes when each sample gets one row (nothing to compare it with), and
    without those that perturb the inputs when these are token ids."""
    k = rows_per_sample(classes, n_outputs) if n_outputs is not None or classes is not None else 2
    return [
        m
        for m in DEFAULT_METRICS
        if (_metric(m).rows != "several" or k >= 2)
        and not (token_ids and perturbs_inputs(_metric(m)))
    ]


def perturbs_inputs(record: metric_records.MetricRecord) -> bool:
    """Whether a metric perturbs or differentiates the inputs themselves (as its record says:
    it needs maps of the inputs, or inputs of a kind), which token ids, with no values in
    between, cannot take."""
    return record.inputs != "any" or bool({"input_maps", "gradients"} & set(record.needs))


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


def misfit(metric: str | metric_specs.MetricSpec, spec: method_specs.MethodSpec) -> str | None:
    """Why ``metric`` cannot measure what method ``spec`` gives, or None when it can (or when
    ``spec`` is a callable of unknown kind, whose result only the run can tell): the metric
    record's ``needs`` against what the method's record gives, with the options its partials
    set."""
    record = metric.record if isinstance(metric, metric_specs.MetricSpec) else _metric(metric)
    given = method_specs.gives(spec)
    if given is None:
        return None
    missing = [need for need in record.needs if need not in given]
    if not missing:
        return None
    need = missing[0]
    able = [r.name for r in method_records.methods() if need in r.provides]
    return (
        f"it needs {method_records.PROVIDES[need]}, which {_what(spec)} does not give "
        f"(methods that do: {', '.join(able) or 'none'})"
    )


def check_fit(
    metrics: Mapping[str, list[metric_specs.MetricSpec]],
    methods: list[method_specs.MethodSpec],
    classes: object,
    n_outputs: int,
    x: torch.Tensor,
) -> None:
    """Refuse, before anything runs, a metric that cannot measure a method's rows: what the
    method gives, the classes per sample and the kind of samples (``x``: the first ones), as
    each metric's record says."""
    shape = x.shape[1:]
    k = rows_per_sample(classes, n_outputs)
    asked = f"classes={_described(classes)} gives {k} per sample"
    for spec in methods:
        for metric in metrics[spec.name]:
            record = metric.record
            if not x.is_floating_point() and perturbs_inputs(record):
                raise ValueError(
                    f"metrics: {metric.name!r} perturbs or differentiates the inputs themselves, "
                    f"but the data's samples are {x.dtype} (token ids?), which have no values in "
                    "between; measure attributions of token ids with metrics for any inputs, "
                    "such as class_sensitivity, completeness or norms"
                )
            reason = misfit(metric, spec)
            if reason is not None:
                raise ValueError(
                    f"metrics: {metric.name!r} cannot measure method {spec.name!r} "
                    f"({method_specs.kind(spec)}): {reason}; give each method its own metrics, "
                    f"e.g. metrics={{{spec.name!r}: [...], ...}}"
                )
            if record.rows == "several" and k < 2:
                raise ValueError(
                    f"metrics: {metric.name!r} compares each sample's classes and needs 2 or "
                    f"more per sample, but {asked}; ask for more classes or leave "
                    f"{metric.name} out"
                )
            if record.rows == "all" and not _every_class(classes, n_outputs):
                raise ValueError(
                    f"metrics: {metric.name!r} compares every class with each sample's own and "
                    f"needs all {n_outputs} classes of the model (classes=None), but {asked}"
                )
            if record.inputs == "images" and len(shape) != 3:
                raise ValueError(
                    f"metrics: {metric.name!r} needs images [C, H, W], but the data's samples "
                    f"have shape {list(shape)}; use a metric for any inputs, such as deletion "
                    "or insertion"
                )


def _metric(name: str) -> metric_records.MetricRecord:
    return metric_records.metric(name)


def _what(spec: method_specs.MethodSpec) -> str:
    bound = [o for o in spec.record.loses if method_specs.bound(spec, o) not in (None, False)]
    return spec.record.name + (f" with {', '.join(bound)}" if bound else "")


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
