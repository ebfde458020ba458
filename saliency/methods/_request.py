"""A method call checked at the door: validated once, outputs at ``x``, targets resolved once.

Noisy samples and path points are not the input being explained, so the classes (``top_k``
included) are resolved at ``x`` and handed to every later engine call as explicit per-sample ids.
A contrast is the same pair of classes for every sample, so it passes through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import targets
from ..attribution import Attribution
from ..engine import STRATEGIES
from ..engine.problem import Shared, make_problem

__all__ = ["Request", "describe", "generator"]


class Request:
    """One method call: the problem, the outputs at ``x`` and the resolved targets."""

    def __init__(
        self,
        model: Callable,
        x: torch.Tensor,
        classes: targets.Classes,
        output: str | Callable,
        strategy: str,
        max_memory: int | str | None,
        kwargs: dict,
    ) -> None:
        self.problem = make_problem(
            model, x, classes, output, strategy, max_memory, False, kwargs, tuple(STRATEGIES)
        )
        self.x = x.detach()
        self.batch = x.shape[0]
        self.max_memory = max_memory
        self.strategy = strategy  # replaced by the engine's choice after the first call
        self.outputs = self.forward(self.x)
        self.classes = self.problem.classes  # normalised at the door (NumPy ids become tensors)
        self.rows = targets.resolve(self.classes, self.outputs)
        self.k = self.rows.ids.shape[1]

    @property
    def budget(self) -> int | None:
        return self.problem.budget

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Transformed outputs ``[B, C]`` at ``inputs`` (one value per sample of ``x``)."""
        with torch.no_grad():
            return self.problem.forward(inputs, slice(0, self.batch)).detach()

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
        for name, value in self.problem.kwargs.items():
            if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == self.batch:
                value = value[samples].repeat(repeats, *([1] * (value.ndim - 1)))
            elif isinstance(value, torch.Tensor):
                # Shared at the caller's B; the engine sees more rows, so say so explicitly.
                value = Shared(value)
            out[name] = value
        return out

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
                self.problem.model,
                inputs,
                self.target(samples, repeats),
                output=self.problem.output,
                strategy=self.strategy,
                max_memory=budget,
                **self.kwargs(samples, repeats),
            )
        except MemoryError as e:
            raise MemoryError(
                f"max_memory={self.max_memory!r}: after {_mb(held)} of running sums, each "
                f"engine call gets {_mb(budget)}. {e}"
            ) from e
        expected = (inputs.shape[0], self.k, *inputs.shape[1:])
        if not isinstance(a, Attribution) or tuple(a.values.shape) != expected:
            got = tuple(a.values.shape) if isinstance(a, Attribution) else type(a).__name__
            raise TypeError(
                f"method: expected a function like saliency.gradients returning an Attribution "
                f"with values of shape {expected}, got {got}"
            )
        self.strategy = a.params.get("strategy", self.strategy)
        return a

    def params(self, **method_params: object) -> dict:
        """``Attribution.params``: the method's arguments, then the shared ones."""
        return {
            **method_params,
            "classes": describe(self.classes),
            "output": describe(self.problem.output),
            "strategy": self.strategy,
            "max_memory": self.max_memory,
        }


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
    if callable(value):
        func = getattr(value, "func", value)  # functools.partial
        return getattr(func, "__qualname__", type(func).__name__)
    return repr(value)


def _mb(n: int | None) -> str:
    return "no budget" if n is None else f"{n / 1e6:.3g} MB"


def generator(seed: int | None, device: torch.device) -> tuple[torch.Generator, int]:
    """A private generator (the global RNG is never touched) and its seed.

    ``seed=None`` draws fresh entropy; the drawn seed is returned so that ``params`` can record it
    and the result can be reproduced.
    """
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed: expected None or a non-negative int, got {seed!r}")
    g = torch.Generator(device=device)
    if seed is None:
        return g, g.seed()
    g.manual_seed(seed)
    return g, seed
