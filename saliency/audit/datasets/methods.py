"""Explanation methods for a run: by name or as callables, called with fixed seeds and strategy.

Every method follows :class:`saliency.methods.Method`. A method of the records
(:mod:`saliency.methods.records`), by name or as a ``functools.partial`` of its function, brings
its record: whether it takes a seed, whether it runs the engine (and so takes a strategy,
pinned once per run) and what its Attribution gives the metrics. A run hands each call a seed
derived from the run's seed and the shard (when the method takes ``seed`` and it is not already
fixed), and every engine-backed method the run's pinned strategy, so that a shard computed
again, by any rank, in any launch, gives the same bytes.

Examples
--------
>>> [m.name for m in resolve(["gradients", "ig"])]
['gradients', 'ig']
>>> resolve("smoothgrad")[0].takes_seed, resolve("gradients")[0].takes_seed
(True, False)
>>> import functools, saliency
>>> spec = resolve({"cam": functools.partial(saliency.gradcam, layer="features.3")})[0]
>>> spec.record.name, spec.takes_strategy
('gradcam', True)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from saliency._records import suggest
from saliency.attribution import Attribution
from saliency.methods import records

__all__ = ["MethodSpec", "bound", "call", "gives", "kind", "names", "resolve"]


@dataclass(frozen=True)
class MethodSpec:
    """One method of a run: the name its rows carry, how to call it, and its record (None for
    a callable of unknown kind)."""

    name: str
    func: Callable[..., Attribution]
    takes_seed: bool
    takes_strategy: bool
    record: records.MethodRecord | None = None


def names() -> list[str]:
    """The method names (and aliases) a run accepts by name alone: not those that need
    ``layer`` (give those as a ``functools.partial`` of the function with its layer)."""
    return [w for r in records.methods() if not r.needs_layer for w in r.words]


def resolve(methods: object) -> list[MethodSpec]:
    """``methods`` (a name, a list of names, or a dict name -> method) as specs, in order."""
    if isinstance(methods, str):
        methods = [methods]
    if isinstance(methods, Mapping):
        items = list(methods.items())
    elif isinstance(methods, list | tuple):
        items = [(name, _named(name)) for name in methods]
    else:
        raise TypeError(
            f"methods: expected a name such as 'gradients', a list of names, or a dict name -> "
            f"method, got {type(methods).__name__}"
        )
    if not items:
        raise ValueError("methods: expected at least one method")
    specs, seen = [], set()
    for name, func in items:
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"methods: names must be non-empty strings without '/', got {name!r}")
        if name in seen:
            raise ValueError(f"methods: {name!r} is given twice")
        if not callable(func):
            raise TypeError(
                f"methods[{name!r}]: expected a method such as saliency.gradients, got "
                f"{type(func).__name__}"
            )
        seen.add(name)
        record = records.of(func)
        if record is None:  # a callable of the caller's: its signature tells about the seed
            specs.append(MethodSpec(name, func, _takes(func, "seed"), False))
        else:
            seed = record.seed and not _fixed(func, "seed")
            specs.append(MethodSpec(name, func, seed, record.engine, record))
    return specs


def call(
    spec: MethodSpec,
    model: Callable,
    x: torch.Tensor,
    classes: object,
    *,
    output: object,
    max_memory: int | None,
    strategy: str | None,
    seed: int,
    forward: Mapping[str, torch.Tensor] | None = None,
) -> Attribution:
    """Run one method on one batch (``forward``: the batch's per-sample model arguments) and
    check what it returns."""
    options: dict = {"output": output, **(forward or {})}
    if max_memory is not None:
        options["max_memory"] = max_memory
    if spec.takes_strategy and strategy is not None and not _fixed(spec.func, "strategy"):
        options["strategy"] = strategy
    if spec.takes_seed:
        options["seed"] = seed
    a = spec.func(model, x, classes, **options)
    if not isinstance(a, Attribution):
        raise TypeError(
            f"methods[{spec.name!r}]: expected an Attribution (the saliency.methods.Method "
            f"contract), got {type(a).__name__}"
        )
    if a.values.shape[0] != x.shape[0]:
        raise ValueError(
            f"methods[{spec.name!r}]: returned {a.values.shape[0]} samples for a batch of "
            f"{x.shape[0]}"
        )
    return a


def kind(spec: MethodSpec) -> str | None:
    """The name of the method of the records that ``spec`` calls (``"gradients"``, ...),
    through any partials; None for any other callable."""
    return None if spec.record is None else spec.record.name


def gives(spec: MethodSpec) -> set[str] | None:
    """What the Attribution of ``spec`` gives the metrics (keys of
    :data:`saliency.methods.records.PROVIDES`), with the options its partials set; None for a
    callable of unknown kind."""
    if spec.record is None:
        return None
    return spec.record.gives({name: bound(spec, name) for name in spec.record.loses})


def bound(spec: MethodSpec, name: str) -> object:
    """The value a ``functools.partial`` fixed for option ``name`` (the outermost wins), else
    None."""
    func = spec.func
    while isinstance(func, functools.partial):
        if name in func.keywords:
            return func.keywords[name]
        func = func.func
    return None


def _named(name: object) -> Callable[..., Attribution]:
    if not isinstance(name, str):
        raise TypeError(f"methods: expected method names, got {name!r}")
    record = records.find(name)
    if record is None:
        raise ValueError(
            f"methods: unknown method {name!r}{suggest(name, names())}, or give a dict "
            "name -> method callable"
        )
    if record.needs_layer:
        raise ValueError(
            f"methods: {name!r} needs the layer it explains, which a name cannot carry; give "
            f"methods={{{name!r}: functools.partial(saliency.{record.function.__name__}, "
            "layer='features.3')} with your model's module name"
        )
    return record.function


def _fixed(func: Callable, name: str) -> bool:
    while isinstance(func, functools.partial):
        if name in func.keywords:
            return True
        func = func.func
    return False


def _takes(func: Callable, name: str) -> bool:
    """Whether ``func`` has a parameter ``name`` that a partial has not fixed yet.

    Only an explicit parameter counts: ``**options`` may pass unknown names to the model.
    """
    if _fixed(func, name):
        return False
    try:
        parameters = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    p = parameters.get(name)
    return p is not None and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
