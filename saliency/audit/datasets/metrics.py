"""The metrics of a run, behind one small interface: a batch in, per-(sample, class) columns out.

Every metric of a run is a record of :mod:`saliency.audit.records`: its function is called with
the arguments its signature names (``model``, ``x``, ``attribution``, ``method``, ``labels``,
``output``, ``max_memory``, ``seed``) and the run's ``metric_options``, and the record's columns
are read off its result, as tensors ``[n, K]`` (one value per sample and class) or ``[n]`` (one
per sample).

Examples
--------
>>> import torch, saliency
>>> model = torch.nn.Linear(4, 3)
>>> x = torch.randn(2, 4)
>>> a = saliency.gradients(model, x)
>>> batch = Batch(model, x, None, a, saliency.gradients, "logits", None, lambda name: 0)
>>> spec = resolve(["norms"])[0]
>>> sorted(spec.compute(batch)), spec.compute(batch)["l1"].shape
(['l1', 'l2'], torch.Size([2, 3]))
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from saliency._records import suggest
from saliency.attribution import Attribution

from .. import records

__all__ = ["Batch", "MetricSpec", "available", "columns", "resolve"]


@dataclass(frozen=True)
class Batch:
    """What a metric sees: one shard's good samples and one method's Attribution of them."""

    model: Callable
    x: torch.Tensor
    labels: torch.Tensor | None
    attribution: Attribution
    method: Callable[..., Attribution]
    output: object
    max_memory: int | None
    seed_for: Callable[[str], int]
    forward: Mapping[str, torch.Tensor] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class MetricSpec:
    """A metric of a run: its record, how to compute its columns, and which way is better."""

    name: str
    compute: Callable[[Batch], dict[str, torch.Tensor]]
    better: Mapping[str, str]
    record: records.MetricRecord


def available() -> list[str]:
    """The metric names a run accepts: those of the records a run can compute."""
    return sorted(records.names(in_runs=True))


def resolve(metrics: object, options: Mapping[str, Mapping] | None = None) -> list[MetricSpec]:
    """``metrics`` (a name or a list of names) as specs, with per-metric ``options``."""
    if metrics is None:
        metrics = []
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, list | tuple) or not all(isinstance(m, str) for m in metrics):
        raise TypeError(f"metrics: expected a list of metric names, got {metrics!r}")
    if len(set(metrics)) != len(metrics):
        raise ValueError(f"metrics: each metric once, got {list(metrics)}")
    options = dict(options or {})
    unknown = sorted(set(options) - set(metrics))
    if unknown:
        raise ValueError(f"metric_options: {unknown} are not among metrics {list(metrics)}")
    specs = []
    for name in metrics:
        record = records.find(name)
        if record is None:
            raise ValueError(f"metrics: unknown metric {name!r}{suggest(name, available())}")
        if record.not_in_runs:
            raise ValueError(
                f"metrics: {name!r} is not a per-sample metric: it {record.not_in_runs}"
            )
        extra = dict(options.get(name, {}))
        specs.append(MetricSpec(name, _compute(record, extra), record.better(extra), record))
    return specs


# -- calling a metric ------------------------------------------------------------------------


def _compute(
    record: records.MetricRecord, options: dict
) -> Callable[[Batch], dict[str, torch.Tensor]]:
    name, func = record.name, record.function
    parameters = inspect.signature(func).parameters

    def compute(b: Batch) -> dict[str, torch.Tensor]:
        supplied = {
            "model": b.model,
            "x": b.x,
            "inputs": b.x,
            "attribution": b.attribution,
            "method": b.method,
            "labels": b.labels,
            "output": b.output,
            "max_memory": b.max_memory,
            "seed": b.seed_for(f"metric:{name}"),
        }
        args, kwargs = [], {}
        for p in parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.name in options:
                value = options[p.name]
            elif p.name in supplied and supplied[p.name] is not None:
                value = supplied[p.name]
            elif p.default is not p.empty:
                continue
            else:
                raise TypeError(
                    f"metrics: {name!r} needs {p.name!r}, which a run cannot supply; give it in "
                    f"metric_options={{{name!r}: {{{p.name!r}: ...}}}}"
                )
            if p.kind is p.KEYWORD_ONLY:
                kwargs[p.name] = value
            elif kwargs:  # a positional parameter after one passed by name
                kwargs[p.name] = value
            elif p.default is p.empty or p.kind is p.POSITIONAL_ONLY:
                args.append(value)
            else:
                kwargs[p.name] = value
        unknown = sorted(set(options) - set(parameters))
        if unknown:
            raise TypeError(f"metric_options[{name!r}]: {name} takes no {unknown}")
        if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            kwargs.update(b.forward)  # the samples' per-sample model arguments
        return columns(record, func(*args, **kwargs), b.attribution)

    return compute


def columns(
    record: records.MetricRecord, result: object, attribution: Attribution
) -> dict[str, torch.Tensor]:
    """The record's columns of a metric's result: one value per row or per sample each (a
    column the result leaves at None, an option's doing, is left out)."""
    name = record.name
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    elif isinstance(result, Mapping):
        fields = dict(result)
    else:
        raise TypeError(
            f"metrics: {name!r} returned {type(result).__name__}; expected a dataclass or dict "
            "of tensors"
        )
    n, k = attribution.classes.shape
    out = {}
    for column in record.columns:
        if column not in fields:
            raise ValueError(
                f"metrics: {name!r} returned no field {column!r}, a column of its record "
                f"(it returned {sorted(fields)})"
            )
        value = fields[column]
        if value is None:
            continue
        if not isinstance(value, torch.Tensor) or tuple(value.shape) not in ((n, k), (n,)):
            what = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"metrics: {name!r} returned {column} {what}; a column holds one value per "
                f"sample and class ([{n}, {k}]) or per sample ([{n}])"
            )
        out[column] = value.detach()
    return out
