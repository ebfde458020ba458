"""Methods on token ids: where a run differentiates them when the caller did not say.

Token ids have no gradient; a text model is explained at its input embeddings (``layer=``). A run
on integer inputs gives this package's methods that have no ``layer`` the model's input
embeddings: ``model.get_input_embeddings()`` (HuggingFace models), else the model's only
``nn.Embedding``; and Integrated Gradients without a ``baseline`` starts from the padding id (the
embedding's ``padding_idx``, else ``model.config.pad_token_id``). Both are bound by name, so the
manifest records them. Anything else is refused with the call that says it explicitly.

Examples
--------
>>> from saliency import models
>>> from saliency.audit.datasets import methods
>>> model, _ = models.load("sentiment")
>>> [spec] = on_token_ids(methods.resolve("ig"), model)
>>> spec.func.keywords
{'layer': 'embedding', 'baseline': 0}
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

from torch import nn

from . import methods as method_specs

__all__ = ["input_embeddings", "on_token_ids"]


def on_token_ids(
    specs: list[method_specs.MethodSpec], model: Callable
) -> list[method_specs.MethodSpec]:
    """``specs`` with this package's methods bound to the input embeddings (and, for Integrated
    Gradients, the padding id) where the caller gave no ``layer`` (no ``baseline``)."""
    out = []
    for spec in specs:
        kind = method_specs.kind(spec)
        options: dict = {}
        if kind is not None and method_specs.bound(spec, "layer") is None:
            options["layer"] = input_embeddings(model, spec.name, kind)[0]
        if kind == "integrated_gradients" and method_specs.bound(spec, "baseline") is None:
            options["baseline"] = _padding_id(model, spec.name)
        if options:
            spec = dataclasses.replace(spec, func=functools.partial(spec.func, **options))
        out.append(spec)
    return out


def input_embeddings(model: Callable, method: str, kind: str) -> tuple[str, nn.Module]:
    """The dotted name and module of ``model``'s input embeddings, or an error saying how to
    name them."""
    fix = (
        f"give it its layer: methods={{{method!r}: functools.partial(saliency.{kind}, "
        "layer=model.<embeddings>)}"
    )
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"methods: {method!r} explains token ids at an embedding layer, but the model is a "
            f"{type(model).__name__}, not an nn.Module whose embeddings can be found; {fix}"
        )
    names = {id(m): n for n, m in model.named_modules()}
    getter = getattr(model, "get_input_embeddings", None)
    if callable(getter):
        try:
            module = getter()
        except (NotImplementedError, AttributeError):
            module = None
        if isinstance(module, nn.Module) and id(module) in names:
            return names[id(module)], module
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    if len(found) == 1:
        return found[0]
    what = f"its nn.Embedding modules are {[n for n, _ in found]}" if found else "it has none"
    raise ValueError(
        f"methods: {method!r} explains token ids at the input embeddings, but the model has no "
        f"get_input_embeddings() and {what}; {fix}"
    )


def _padding_id(model: Callable, method: str) -> int:
    try:
        module = input_embeddings(model, method, "integrated_gradients")[1]
    except ValueError:
        module = None
    pad = getattr(module, "padding_idx", None)
    if pad is None:
        pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    if isinstance(pad, int) and not isinstance(pad, bool) and pad >= 0:
        return pad
    raise ValueError(
        f"methods: {method!r} (integrated gradients on token ids) starts its path from a baseline "
        "id, but the model names no padding id (its embedding's padding_idx, "
        "model.config.pad_token_id); give one: methods={"
        f"{method!r}: functools.partial(saliency.integrated_gradients, baseline=<pad id>)}}"
    )
