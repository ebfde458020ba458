"""A method call checked at the door: scores at ``x``, targets resolved once, engine calls.

Noisy samples and path points are not the input being explained, so the classes (``top_k``
included) are resolved at ``x`` and handed to every later engine call as explicit per-sample ids.
A contrast is the same pair of classes for every sample, so it passes through unchanged. Methods
reach the engine only through its public entries (:func:`saliency.engine.evaluate`,
:func:`~saliency.engine.outputs`, :func:`~saliency.engine.layer_output`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .. import targets
from .._random import generator
from ..attribution import Attribution
from ..engine import (
    Shared,
    evaluate,
    is_per_sample,
    layer_name,
    layer_output,
    outputs,
    parse_memory,
    sample_rows,
)

__all__ = ["Request", "describe", "generator"]


class Request:
    """One method call: the scores at ``x``, the resolved targets and how to call the engine."""

    def __init__(
        self,
        model: Callable,
        x: torch.Tensor,
        classes: targets.Classes,
        output: str | Callable,
        strategy: str,
        max_memory: int | str | None,
        kwargs: dict,
        *,
        layer: nn.Module | str | None = None,
        allow_random: bool = False,
    ) -> None:
        if isinstance(classes, np.ndarray):  # ids ported from NumPy code
            classes = torch.as_tensor(classes)
        self.model, self.output, self.layer = model, output, layer
        self.allow_random = allow_random
        self.kw = dict(kwargs)
        self.outputs = outputs(
            model, x, output=output, layer=layer, allow_random=allow_random, **self.kw
        )  # validates every shared argument once
        self.x = x.detach()
        self.batch = x.shape[0]
        self.max_memory = max_memory
        self.budget = parse_memory(max_memory)
        self.requested = strategy  # what every engine call asks for ("auto": decided once, cached)
        self.strategy = strategy  # what the engine chose, for params
        self.classes = classes
        self.rows = targets.resolve(classes, self.outputs)
        self.k = self.rows.ids.shape[1]
        self.shape: tuple[int, ...] | None = None  # per-sample shape of the results

    def point(self) -> torch.Tensor:
        """What is differentiated, at ``x``: ``x`` itself, or the layer's output."""
        if self.layer is None:
            return self.x
        return self.layer_output(self.x)

    def layer_output(self, inputs: torch.Tensor) -> torch.Tensor:
        """The layer's output when the model runs on ``inputs`` (with this call's arguments)."""
        return layer_output(
            self.model,
            inputs,
            self.layer,
            output=self.output,
            allow_random=self.allow_random,
            **self.kw,
        )

    def forward(self, inputs: torch.Tensor, layer_value: torch.Tensor | None = None):
        """Scores ``[B, C]`` at ``inputs`` (one value per sample of ``x``), or, with a layer, at
        ``x`` with the layer's output replaced by ``layer_value``."""
        return outputs(
            self.model,
            inputs,
            output=self.output,
            layer=self.layer if layer_value is not None else None,
            layer_value=layer_value,
            allow_random=self.allow_random,
            **self.kw,
        )

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """The score ``F`` of every target row, ``[B, K]``."""
        return self.rows.select(outputs)

    def target(self, samples: slice, repeats: int) -> targets.Classes:
        """Classes for ``repeats`` point-major copies of ``samples``."""
        if isinstance(self.classes, targets.Contrast):
            return self.classes
        return self.rows.ids[samples].repeat(repeats, 1)

    def kwargs(self, samples: slice, repeats: int) -> dict:
        """Forward kwargs lined up with ``repeats`` copies of ``samples``: per-sample tensors
        (first dimension ``B``) are sliced and repeated, everything else passes through."""
        out = {}
        for name, value in self.kw.items():
            if not is_per_sample(value, self.batch) and isinstance(value, torch.Tensor):
                # Shared at the caller's B; the engine sees more rows, so say so explicitly.
                out[name] = Shared(value)
            else:
                out[name] = sample_rows(value, self.batch, samples, repeats)
        return out

    def inputs(self, samples: slice, repeats: int) -> torch.Tensor:
        """``x`` for ``repeats`` point-major copies of ``samples``."""
        x = self.x[samples]
        return x.repeat(repeats, *([1] * (x.ndim - 1))) if repeats > 1 else x

    def jacobian(
        self,
        samples: slice,
        repeats: int,
        budget: int | None,
        held: int,
        *,
        inputs: torch.Tensor | None = None,
        layer_value: torch.Tensor | None = None,
        ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The engine's Jacobian ``[rows, K, *shape]`` at ``inputs`` (copies of ``samples``, a
        slice or an index tensor), or, with a layer, at ``layer_value`` in the layer's space, for
        the targets resolved at ``x`` (or the per-sample class ``ids`` of ``samples``)."""
        if inputs is None:
            inputs = self.inputs(samples, repeats)
        classes = self.target(samples, repeats) if ids is None else ids.repeat(repeats, 1)
        try:
            r = evaluate(
                self.model,
                inputs,
                classes,
                output=self.output,
                strategy=self.requested,
                max_memory=budget,
                layer=self.layer,
                layer_value=layer_value,
                allow_random=self.allow_random,
                **self.kwargs(samples, repeats),
            )
        except MemoryError as e:
            raise self._memory(e, budget, held) from e
        self.strategy = r.strategy
        return r.values

    def call(
        self,
        method: Callable[..., Attribution],
        inputs: torch.Tensor,
        samples: slice,
        repeats: int,
        budget: int | None,
        held: int,
    ) -> Attribution:
        """``method`` on ``inputs``, point-major copies of ``samples``: the targets resolved at
        ``x``, the forward kwargs lined up, and the engine's strategy chosen on the first call and
        reused after."""
        try:
            a = method(
                self.model,
                inputs,
                self.target(samples, repeats),
                output=self.output,
                strategy=self.requested,
                max_memory=budget,
                **self.kwargs(samples, repeats),
            )
        except MemoryError as e:
            raise self._memory(e, budget, held) from e
        n = inputs.shape[0]
        ok = isinstance(a, Attribution) and tuple(a.values.shape[:2]) == (n, self.k)
        if ok and self.shape is not None:
            ok = tuple(a.values.shape[2:]) == self.shape
        if not ok:
            got = tuple(a.values.shape) if isinstance(a, Attribution) else type(a).__name__
            want = f"[{n}, {self.k}, ...]" if self.shape is None else f"{(n, self.k, *self.shape)}"
            raise TypeError(
                f"method: expected a method following saliency.methods.Method, returning an "
                f"Attribution with values of shape {want} (one row per sample and class), "
                f"got {got}"
            )
        self.shape = tuple(a.values.shape[2:])
        self.strategy = a.params.get("strategy", self.strategy)
        return a

    def _memory(self, e: MemoryError, budget: int | None, held: int) -> MemoryError:
        return MemoryError(
            f"max_memory={self.max_memory!r}: after {_mb(held)} of running sums, each "
            f"engine call gets {_mb(budget)}. {e}"
        )

    def params(self, **method_params: object) -> dict:
        """``Attribution.params``: the method's arguments, then the shared ones."""
        shared = {
            "classes": describe(self.classes),
            "output": describe(self.output),
            "strategy": self.strategy,
            "max_memory": self.max_memory,
        }
        if self.layer is not None:
            shared["layer"] = layer_name(self.model, self.layer)
        return {**method_params, **shared}


def describe(value: object) -> object:
    """A JSON-safe description of an argument (tensors by shape, callables by name)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, targets.TopK):
        return {"top_k": value.k}
    if isinstance(value, targets.Contrast):
        return {"contrast": [list(value.a), list(value.b)]}
    if isinstance(value, torch.Tensor):
        if value.ndim == 0:
            return value.item()
        if value.ndim == 1 and value.numel() <= 64:
            return value.tolist()
        return f"tensor{list(value.shape)}"
    if isinstance(value, list | tuple):
        return [describe(v) for v in value]
    if isinstance(value, nn.Module):
        return type(value).__name__
    if callable(value):
        func = getattr(value, "func", value)  # functools.partial
        return getattr(func, "__qualname__", type(func).__name__)
    return repr(value)


def _mb(n: int | None) -> str:
    return "no budget" if n is None else f"{n / 1e6:.3g} MB"
