"""Explanation methods for a run: by name or as callables, called with fixed seeds and strategy.

Every method follows :class:`saliency.methods.Method`. A run hands each call a seed derived from
the run's seed and the shard (when the method takes ``seed`` and it is not already fixed), and
this package's methods a strategy fixed once per run, so that a shard computed again, by any
rank, in any launch, gives the same bytes.

Examples
--------
>>> [m.name for m in resolve(["gradients", "ig"])]
['gradients', 'ig']
>>> resolve("smoothgrad")[0].takes_seed, resolve("gradients")[0].takes_seed
(True, False)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

import saliency
from saliency.attribution import Attribution
from saliency.methods import gradients, integrated_gradients, smoothgrad

__all__ = ["MethodSpec", "bound", "call", "kind", "names", "resolve"]

_OURS = (gradients, smoothgrad, integrated_gradients)
_ALIASES = {"ig": "integrated_gradients"}


@dataclass(frozen=True)
class MethodSpec:
    """One method of a run: the name its rows carry and how to call it."""

    name: str
    func: Callable[..., Attribution]
    takes_seed: bool
    takes_strategy: bool


def names() -> list[str]:
    """The method names a run accepts."""
    found = ["gradients", "smoothgrad", "integrated_gradients", "ig"]
    return found + (["gradcam"] if callable(getattr(saliency, "gradcam", None)) else [])


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
        specs.append(MethodSpec(name, func, _takes(func, "seed"), _base(func) in _OURS))
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
    """Which of this package's methods ``spec`` calls (``"gradients"``, ``"smoothgrad"``,
    ``"integrated_gradients"``), through any partials; None for any other callable."""
    base = _base(spec.func)
    return base.__name__ if base in _OURS else None


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
    key = _ALIASES.get(name, name)
    if key not in names():
        raise ValueError(
            f"methods: unknown method {name!r}; expected one of {names()} or a dict "
            "name -> method callable"
        )
    return getattr(saliency, key)


def _base(func: Callable) -> Callable:
    while isinstance(func, functools.partial):
        func = func.func
    return func


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
