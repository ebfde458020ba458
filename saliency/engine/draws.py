"""Random numbers a forward pass draws, seen rather than sampled.

A model that draws random numbers (dropout, stochastic depth, noise layers, any ``torch.rand`` or
``bernoulli_`` inside a module, on CPU or CUDA) has random gradients, so the engine refuses it
unless randomness is allowed. Comparing two passes only catches it when the two draws happen to
differ; instead, :class:`Draws` watches the operators themselves: every ATen operator PyTorch tags
``nondeterministic_seeded`` is a draw, seen through a dispatch mode (which, like the module
hooks here, belongs to the calling thread), together with the innermost module that was running.

Watching every operator costs a Python call each, so only the probe's pass runs under
:class:`Draws`. Every other pass compares the default generators' states before and after
(:func:`state`, microseconds); when they moved, the pass is run again under :class:`Draws` to tell
the model's own draws from another thread's.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["Draws", "message", "moved", "restore", "state", "transformed"]

_SEEDED = torch.Tag.nondeterministic_seeded


class Draws(TorchDispatchMode):
    """Records every random operator run in this thread inside the block, with its module."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[nn.Module | None, str]] = []
        self._stack: list[nn.Module] = []
        self._thread = threading.get_ident()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _SEEDED in func.tags and _draws(func, args, kwargs):
            self.found.append((self._stack[-1] if self._stack else None, _op_name(func)))
        return func(*args, **kwargs)

    def __enter__(self) -> Draws:
        mine = self._thread

        def push(m: nn.Module, _args: object) -> None:
            if threading.get_ident() == mine:
                self._stack.append(m)

        def pop(m: nn.Module, _args: object, _out: object) -> None:
            if threading.get_ident() == mine and self._stack and self._stack[-1] is m:
                self._stack.pop()

        self._handles = [register_module_forward_pre_hook(push), register_module_forward_hook(pop)]
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        try:
            super().__exit__(*exc)
        finally:
            for h in self._handles:
                h.remove()
            self._stack.clear()


def transformed() -> bool:
    """Inside ``torch.func`` transforms (vmap, jvp), where generator states cannot be read; vmap
    refuses random operators there by itself."""
    return torch._C._functorch.peek_interpreter_stack() is not None


def state(device: torch.device) -> tuple[np.ndarray, ...]:
    """The states of the default generators a pass on ``device`` can draw from."""
    states = [torch.default_generator.get_state().numpy()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device).numpy())
    return tuple(states)


def moved(before: tuple[np.ndarray, ...], device: torch.device) -> bool:
    """Whether a default generator advanced since ``before`` (in any thread)."""
    return any(not np.array_equal(a, b) for a, b in zip(before, state(device), strict=True))


def restore(before: tuple[np.ndarray, ...], device: torch.device) -> None:
    """Put the default generators back to ``before``."""
    torch.default_generator.set_state(torch.from_numpy(before[0].copy()))
    if device.type == "cuda":
        torch.cuda.set_rng_state(torch.from_numpy(before[1].copy()), device)


def message(found: list[tuple[nn.Module | None, str]], name) -> str:
    """The refusal for a pass that drew random numbers; ``name(module)`` names a module."""
    where: dict[str, list[str]] = {}
    for module, op in found:
        label = "the model's forward" if module is None else name(module)
        if module is not None and label != type(module).__name__:
            label = f"{label} ({type(module).__name__})"
        ops = where.setdefault(label, [])
        if op not in ops:
            ops.append(op)
    listed = "; ".join(f"{label}: {', '.join(ops[:3])}" for label, ops in list(where.items())[:4])
    more = " ..." if len(where) > 4 else ""
    training = any(m is not None and m.training for m, _ in found)
    hint = "Call model.eval() first" if training else "Remove the randomness from the model"
    return (
        f"model: draws random numbers during its forward pass ({listed}{more}), so its output and "
        f"its gradients are random: two identical calls would differ (dropout, stochastic depth "
        f"or a noise layer). {hint}, or pass allow_random=True to explain one random draw per "
        "forward pass."
    )


def _draws(func, args: tuple, kwargs: dict) -> bool:
    """Whether a seeded operator really draws with these arguments: attention and dropout with a
    probability of 0, and recurrent layers or RReLU outside training, draw nothing (PyTorch tags
    the operator, not the call)."""
    given = dict(kwargs)
    for spec, value in zip(func._schema.arguments, args, strict=False):
        given.setdefault(spec.name, value)
    for spec in func._schema.arguments:
        if spec.name not in given and spec.has_default_value():
            given[spec.name] = spec.default_value
    for flag in ("train", "training"):
        if given.get(flag, True) is False:
            return False
    for name in ("dropout_p", "dropout"):
        if name in given and given[name] == 0:
            return False
    p = given.get("p")
    if isinstance(p, float | int) and not isinstance(p, bool):
        kept = _op_name(func) == "_fused_dropout"  # its p is the probability of keeping
        return not (p == (1 if kept else 0) or (_op_name(func).startswith("bernoulli") and p == 1))
    return True


def _op_name(func) -> str:
    return f"{func._schema.name.removeprefix('aten::')}"
