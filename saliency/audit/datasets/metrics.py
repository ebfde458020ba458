"""The metrics of a run, behind one small interface: a batch in, per-(sample, class) columns out.

A metric is a function of a :class:`Batch` (the model, the inputs, the labels, one method's
Attribution and the method itself) returning named tensors ``[n, K]`` (one value per sample and
class) or ``[n]`` (one per sample). One is computed here from the Attribution alone
(``norms``); every other name is a metric function of :mod:`saliency.audit`, called with the
arguments its signature asks for (``model``, ``x``, ``attribution``, ``method``, ``labels``,
``output``, ``max_memory``, ``seed``), whose result's tensor fields become columns.

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

from saliency.attribution import Attribution

__all__ = ["Batch", "MetricSpec", "available", "resolve"]

# Metrics of saliency.audit that judge a model, not a sample: one call, never per shard.
_NOT_PER_SAMPLE = {
    "randomization_test": "randomises the model layer by layer, a check of the model and method "
    "rather than of each sample; run it once on a batch (saliency.audit.randomization_test)",
}
# Which way is good, for the columns whose direction is known: "worst" and "best" samples are
# listed for these, "lowest" and "highest" for every column.
_BETTER: dict[str, dict[str, str]] = {
    "class_sensitivity": {"mean_other": "lower", "off_diagonal": "lower"},
    "deletion": {"auc": "lower", "normalized_auc": "lower"},
    "insertion": {"auc": "higher", "normalized_auc": "higher"},
    "road": {"auc": "lower", "normalized_auc": "lower"},  # MoRF, its default; LeRF: higher
    "infidelity": {"infidelity": "lower"},
    "sensitivity_max": {"sensitivity": "lower"},
    "completeness": {"abs_gap": "lower", "relative_gap": "lower"},
}


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
    """A metric of a run: its name, how to compute its columns, and which way is better."""

    name: str
    compute: Callable[[Batch], dict[str, torch.Tensor]]
    better: Mapping[str, str]


def available() -> list[str]:
    """The metric names a run accepts now (the package's metrics as they land)."""
    return sorted({*_BUILTIN, *_external_names()})


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
        if name in _NOT_PER_SAMPLE:
            raise ValueError(
                f"metrics: {name!r} is not a per-sample metric: it {_NOT_PER_SAMPLE[name]}"
            )
        extra = dict(options.get(name, {}))
        if name in _BUILTIN:
            if extra:
                raise ValueError(f"metric_options[{name!r}]: {name!r} takes no options")
            compute = _BUILTIN[name]
        elif name in _external_names():
            compute = _external(name, extra)
        else:
            raise ValueError(f"metrics: unknown metric {name!r}; expected some of {available()}")
        better = dict(_BETTER.get(name, {}))
        if name == "road" and extra.get("order") == "lerf":
            better = {field: "higher" for field in better}
        specs.append(MetricSpec(name, compute, better))
    return specs


# -- computed here ---------------------------------------------------------------------------------


def _norms(b: Batch) -> dict[str, torch.Tensor]:
    flat = b.attribution.values.detach().flatten(2)
    return {"l1": flat.abs().sum(-1), "l2": flat.norm(dim=-1)}


_BUILTIN: dict[str, Callable[[Batch], dict[str, torch.Tensor]]] = {
    "norms": _norms,
}


# -- the metrics of saliency.audit -------------------------------------------------------------


def _external_names() -> list[str]:
    from saliency import audit  # above this module: looked up when a run starts

    found = []
    for name in getattr(audit, "__all__", []):
        func = getattr(audit, name, None)
        takes = _parameters(func) if inspect.isfunction(func) else set()
        # A metric takes an Attribution or a method; the rest of saliency.audit is tooling.
        if name not in _NOT_PER_SAMPLE and name != "run" and takes & {"attribution", "method"}:
            found.append(name)
    return found


def _parameters(func: Callable) -> set[str]:
    try:
        return set(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return set()


def _external(name: str, options: dict) -> Callable[[Batch], dict[str, torch.Tensor]]:
    from saliency import audit

    func = getattr(audit, name)
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
        return columns(name, func(*args, **kwargs), b.attribution)

    return compute


def columns(name: str, result: object, attribution: Attribution) -> dict[str, torch.Tensor]:
    """The tensor fields of a metric's result that hold one value per row or per sample."""
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
    for field, value in fields.items():
        if field == "classes" or not isinstance(value, torch.Tensor):
            continue
        if tuple(value.shape) in ((n, k), (n,)):
            out[field] = value.detach()
    if not out:
        raise ValueError(
            f"metrics: {name!r} returned no tensor of one value per sample and class "
            f"([{n}, {k}]) or per sample ([{n}])"
        )
    return out
