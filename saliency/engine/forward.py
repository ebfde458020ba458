"""Every forward pass the engine makes: guarded, with the differentiated tensor put in place.

The engine differentiates either the input ``x`` or the output of a layer. For a layer, a forward
hook replaces the layer's output with a tensor the engine owns (a fresh leaf, or a given value such
as an Integrated Gradients path point), so that everything after the layer depends on it and
nothing before it is differentiated. The linear head, when a strategy needs it, is watched by a
hook that runs before any other hook of the head, so that what it records is what ``nn.Linear``
computed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from . import draws
from .guards import GuardError, Watch, names_of, watch
from .problem import Problem, check_finite

__all__ = ["HeadCall", "Pass", "run"]


@dataclass
class HeadCall:
    """What entered and left the linear head during one forward pass."""

    module: nn.Linear
    calls: int = 0
    h: torch.Tensor | None = None
    out: torch.Tensor | None = None
    h_version: int = 0
    out_version: int = 0
    thread: int = 0  # the engine's thread: the head's calls in other threads are not this pass's

    def record(self, _m: nn.Module, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        if threading.get_ident() != self.thread:
            return
        self.calls += 1
        h = args[0] if args else kwargs.get("input")
        self.h, self.out = h, out
        if isinstance(h, torch.Tensor) and isinstance(out, torch.Tensor):
            self.h_version, self.out_version = h._version, out._version

    def exact(self, pre: torch.Tensor | None, scores: torch.Tensor, builtin: bool) -> str | None:
        """Why factorising through the head would not be exact for this pass (``None``: it is).

        The scores must be the tensor the head returned, unchanged since, computed once by
        ``nn.Linear``'s own forward. With a built-in ``output`` that is the tensor it was applied
        to (``pre``); a callable ``output`` must return that very tensor itself, since what else
        it reads (a temperature computed from ``x``, say) is beyond the head's reach.
        """
        m = self.module
        if self.calls != 1:
            return f"the head {type(m).__name__} ran {self.calls} times in one forward pass"
        if type(m).forward is not nn.Linear.forward or "forward" in vars(m):
            return "the head's forward is not nn.Linear's own"
        if not isinstance(self.h, torch.Tensor) or self.h.ndim != 2:
            return "the head's input is not a [rows, features] tensor"
        target = pre if builtin else scores
        if target is not self.out:
            return (
                "the model's scores are not the head's output (something runs after the head, "
                "or a callable output= changes it)"
            )
        if self.out._version != self.out_version or self.h._version != self.h_version:
            return "the head's input or output was modified in place after the head ran"
        with torch.no_grad():
            again = self.recompute(self.h.detach())
            out = self.out.detach()
            scale = float(out.abs().max()) if out.numel() else 0.0
            if not torch.allclose(again, out, rtol=1e-4, atol=1e-6 * (1.0 + scale)):
                return "the head's output is not W h + b of its input (a global hook changed it?)"
        return None

    def recompute(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.module.weight, self.module.bias)


@dataclass
class Pass:
    """One forward pass: the scores and what the engine needs from inside the model."""

    scores: torch.Tensor  # [n, C], transformed and checked
    pre: torch.Tensor | None  # the extracted scores before a built-in transform
    value: torch.Tensor | None  # the layer value that was used (a leaf when the engine made it)
    head: HeadCall | None
    watch: Watch | None  # None when the guards' verdict was known without running them


def run(
    p: Problem,
    x: torch.Tensor,
    rows: slice,
    repeats: int = 1,
    *,
    value: torch.Tensor | None = None,
    head: nn.Linear | None = None,
    leaf: bool = True,
    guard: bool = True,
    draws_seen: bool = False,
) -> Pass:
    """Run the model on ``x`` (inputs of ``rows``, ``repeats`` point-major copies), guarded.

    With a layer, its output is replaced by ``value`` when given, else by a leaf copy of itself
    that requires grad (or, with ``leaf=False``, by the output as computed, kept in the graph).
    ``guard=False`` leaves the guards out (for a model whose verdict is known, see the engine).
    A pass that moves the default random generators is refused if the model drew from them,
    unless ``draws_seen`` (the caller watches random operators itself) or randomness is allowed.
    """
    kwargs = p.kwargs_for(rows, repeats)
    n = x.shape[0]
    hooks = []
    layer_box: dict = {}
    me = threading.get_ident()  # hooks on the caller's modules act in this thread only
    head_call = HeadCall(head, thread=me) if head is not None else None
    check = not (p.allow_random or draws_seen or draws.transformed())
    before = draws.state(x.device) if check else None
    try:
        if p.layer is not None:
            hooks.append(
                p.layer.register_forward_hook(
                    lambda m, a, o: (
                        _substitute(layer_box, o, value, leaf, p)
                        if threading.get_ident() == me
                        else None
                    ),
                    prepend=False,
                )
            )
        if head_call is not None:
            hooks.append(
                head.register_forward_hook(head_call.record, prepend=True, with_kwargs=True)
            )
        if guard:
            with watch(p.allow_random, p.owners) as w:
                raw = p.model(x, **kwargs)
        else:
            w, raw = None, p.model(x, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    if before is not None and draws.moved(before, x.device):
        _refuse_draws(p, x, kwargs, before)
    if p.layer is not None:
        if layer_box.get("calls", 0) == 0:
            scripted = any(
                isinstance(m, torch.jit.ScriptModule) for root in p.owners for m in root.modules()
            )
            why = (
                " (the model runs TorchScript, whose modules no Python hook sees: explain the "
                "Python model, before torch.jit.script)"
                if scripted
                else ""
            )
            raise ValueError(
                f"layer: {p.layer_name} did not run during the model's forward pass{why}; pick a "
                "module that the forward pass calls"
            )
        if layer_box["calls"] > 1:
            raise ValueError(
                f"layer: {p.layer_name} ran {layer_box['calls']} times in one forward pass, so "
                "'its output' is ambiguous; pick a module that runs once"
            )
    scores, pre = p.finish(raw, n, kwargs)
    check_finite(scores, rows, repeats)
    return Pass(scores, pre, layer_box.get("value"), head_call, w)


def _refuse_draws(p: Problem, x: torch.Tensor, kwargs: dict, before: tuple) -> None:
    """A default generator moved during the pass: if the model drew (seen by running the pass
    again under :class:`~.draws.Draws`), put the generators back and refuse it; if another
    thread did, carry on."""
    with draws.Draws() as seen, torch.no_grad(), watch(True, p.owners):
        p.model(x.detach(), **kwargs)
    if seen.found:
        draws.restore(before, x.device)
        names = names_of(p.owners)
        raise GuardError(draws.message(seen.found, lambda m: names.get(id(m)) or type(m).__name__))


def _substitute(box: dict, out: object, value: torch.Tensor | None, leaf: bool, p: Problem):
    box["calls"] = box.get("calls", 0) + 1
    if box["calls"] > 1:
        return None  # reported after the pass
    first = out
    if isinstance(out, tuple | list):
        first = out[0] if out else None
    if not isinstance(first, torch.Tensor) or not first.is_floating_point():
        raise ValueError(
            f"layer: {p.layer_name} returned {type(first).__name__}"
            f"{'' if not isinstance(first, torch.Tensor) else f' of dtype {first.dtype}'}; "
            "expected a floating tensor (or a tuple whose first element is one)"
        )
    if value is None:
        if leaf or not first.requires_grad:
            value = first.detach().requires_grad_()
        else:
            value = first
    elif tuple(value.shape) != tuple(first.shape):
        raise ValueError(
            f"layer_value: expected the shape of {p.layer_name}'s output, {tuple(first.shape)}, "
            f"got {tuple(value.shape)}"
        )
    box["value"] = value
    # A copy, so that in-place operations after the layer (ReLU(inplace=True)) leave it alone.
    new = value.clone() if value.requires_grad or value is not first else value
    if isinstance(out, tuple):
        return (new, *out[1:])
    if isinstance(out, list):
        return [new, *out[1:]]
    return new


def refuse_unconnected(scores: torch.Tensor, p: Problem) -> None:
    """A clear error when the scores do not depend on what is differentiated."""
    if scores.device.type == "meta":
        raise ValueError(
            "model: produced outputs on the meta device, which hold no values (its parameters "
            "were never loaded); load the weights first, e.g. model.to_empty(device=...) and "
            "load_state_dict"
        )
    if not scores.requires_grad:
        what = f"the output of layer {p.layer_name}" if p.layer is not None else "x"
        raise ValueError(
            f"model: its output does not depend on {what} through differentiable operations "
            "(for example argmax, one-hot, .detach(), .item(), integer outputs, or torch.no_grad "
            "inside the model), so there is no gradient to explain"
        )


__all__ += ["GuardError", "refuse_unconnected"]
