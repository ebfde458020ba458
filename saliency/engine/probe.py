"""What the engine learns about a model from one tiny forward pass, cached per model and shape.

Two facts drive planning: the bytes one sample's forward pass saves for the backward pass (measured
with saved-tensor hooks, so it holds on any device and for any architecture), and whether the model
ends in a linear layer whose output *is* the model output (the ``head`` strategy factorises the
Jacobian through it).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Probe", "probe"]

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Probe:
    """Facts about a model at one input shape."""

    act: int  # bytes saved for backward per sample
    raw: torch.Tensor  # one sample's raw scores [1, C], detached: C after any transform
    head: str | None  # name of the final linear layer, if the output is exactly its output
    width: int = 0  # features entering that layer

    def outputs(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> int:
        """The number of outputs after ``transform`` (which may change it)."""
        return transform(self.raw).shape[1]

    def head_module(self, model: nn.Module) -> nn.Linear:
        """The head layer itself (the name keeps the cache from holding the model alive)."""
        return dict(model.named_modules())[self.head]


def probe(
    model: Callable, scores: Callable[[torch.Tensor, slice], torch.Tensor], x: torch.Tensor
) -> Probe:
    """Measure ``model`` on the first one and two samples of ``x`` (cached per shape and dtype).

    ``scores(x_rows, rows)`` runs the model on those rows with their keyword arguments, giving
    raw ``[n, C]`` scores.
    """
    # Swapping a layer can change C or the head, so the layers' shapes are part of the key.
    layers = (
        tuple((name, tuple(p.shape)) for name, p in model.named_parameters())
        if isinstance(model, nn.Module)
        else ()
    )
    key = (tuple(x.shape[1:]), x.dtype, x.device, layers)
    try:
        per_model = _CACHE.setdefault(model, {})
    except TypeError:  # not weak-referenceable: measure every time
        per_model = {}
    if key not in per_model:
        per_model[key] = _measure(model, scores, x)
    return per_model[key]


def _measure(model, scores, x) -> Probe:
    exclude = set()
    if isinstance(model, nn.Module):
        exclude = {_ptr(t) for t in (*model.parameters(), *model.buffers())}
    one, head, raw = _saved_bytes(model, scores, x, 1, exclude)
    if x.shape[0] >= 2:
        two, _, _ = _saved_bytes(model, scores, x, 2, exclude)
        act = max(two - one, 0) or one
    else:
        act = one
    width = 0 if head is None else dict(model.named_modules())[head].in_features
    return Probe(act=act, raw=raw, head=head, width=width)


def _saved_bytes(model, scores, x, n, exclude) -> tuple[int, str | None, torch.Tensor]:
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = _ptr(t)
        if ptr not in exclude:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    calls: list[tuple[nn.Linear, torch.Tensor]] = []
    hooks = []
    if isinstance(model, nn.Module):
        for m in model.modules():
            if isinstance(m, nn.Linear):
                hooks.append(m.register_forward_hook(lambda mod, _i, o: calls.append((mod, o))))
    try:
        # A copy, so that a saved input counts its own rows, not the whole batch's storage.
        xs = x[:n].detach().clone().requires_grad_()
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = scores(xs, slice(0, n))
    finally:
        for h in hooks:
            h.remove()
    head = None
    if calls and calls[-1][1] is out and out.ndim == 2:
        mod = calls[-1][0]
        if sum(m is mod for m, _ in calls) == 1:
            head = next(name for name, m in model.named_modules() if m is mod)
    return sum(seen.values()), head, out[:1].detach()


def _ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()
