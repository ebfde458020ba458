"""Guards that see the model as it runs: every module that executes, whatever wraps the model.

During each of the engine's forward passes a global module pre-hook looks at every module about to
run, so a lambda, a ``functools.partial``, a bound method or an object holding the model is
guarded like the module itself. It refuses, before the module runs (so no buffer changes):

- BatchNorm using batch statistics (training mode, or no running statistics): it couples the
  samples of a batch, so per-sample rows would mix them;
- dropout in training mode (unless randomness is allowed): gradients would be random;
- instance norm updating its running statistics in training mode: the caller's model would change.

TorchScript modules run their submodules without Python hooks, so they are walked statically when
they are called. Any other module in training mode that holds buffers has them copied before it
runs and restored (with an error) if the forward pass changed them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.modules.instancenorm import _InstanceNorm
from torch.nn.modules.module import register_module_forward_pre_hook

__all__ = ["GuardError", "Watch", "watch"]

_BATCHNORMS = {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"}
_DROPOUTS = {
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "AlphaDropout",
    "FeatureAlphaDropout",
}


_thread = threading.get_ident
_WATCHED = (torch.jit.ScriptModule, _BatchNorm, _InstanceNorm, _DropoutNd)
_PLAIN: set[type] = set()  # module types seen to be none of the watched kinds


class GuardError(ValueError):
    """The model, as it runs, cannot give exact per-sample rows (or would be changed)."""


class Watch:
    """What one forward pass ran: its modules in call order and the buffers it protected."""

    def __init__(self, allow_random: bool, roots: tuple[nn.Module, ...]) -> None:
        self.allow_random = allow_random
        self.roots = roots
        self._names: dict[int, str] | None = None
        self.modules: list[nn.Module] = []
        self.saved: list[tuple[nn.Module, str, torch.Tensor, int]] = []
        self._seen: set[int] = set()
        self.thread = _thread()

    def name(self, m: nn.Module) -> str:
        """The module's dotted name in the model (looked up only for messages)."""
        if self._names is None:
            self._names = names_of(self.roots)
        return self._names.get(id(m)) or type(m).__name__

    def before(self, m: nn.Module, _args: object) -> None:
        if _thread() != self.thread:
            return
        self.modules.append(m)
        if not m.training and type(m) in _PLAIN:
            return  # the common case, an eval-mode module with nothing to check: stay cheap
        if id(m) in self._seen:
            return
        self._seen.add(id(m))
        if not isinstance(m, _WATCHED):
            _PLAIN.add(type(m))
        if isinstance(m, torch.jit.ScriptModule):
            self._script(m)
            return
        if isinstance(m, _BatchNorm) and (m.training or m.running_mean is None):
            raise GuardError(_coupled(self.name(m), m.training))
        if isinstance(m, _InstanceNorm) and m.training and m.track_running_stats:
            raise GuardError(
                f"model: {self.name(m)} ({type(m).__name__}) updates its running statistics in "
                "training mode, so explaining would change your model; call model.eval() first"
            )
        if isinstance(m, _DropoutNd) and m.training and m.p > 0 and not self.allow_random:
            raise GuardError(_random(self.name(m), self._dropouts()))
        if m.training:
            self._save(m)

    def _save(self, m: nn.Module) -> None:
        # The object too: a running average written as `self.avg = 0.9 * self.avg + ...`
        # replaces the buffer instead of changing it in place.
        for name, buf in m.named_buffers(recurse=False):
            if buf is not None:
                self.saved.append((m, name, buf, buf.detach().clone(), buf._version))

    def _script(self, root: torch.jit.ScriptModule) -> None:
        for name, m in root.named_modules():
            kind = getattr(m, "original_name", type(m).__name__)
            label = f"{self.name(root)}.{name}" if name else self.name(root)
            if kind in _BATCHNORMS and (m.training or getattr(m, "running_mean", 0) is None):
                raise GuardError(_coupled(f"{label} (TorchScript)", m.training))
            if (
                kind.startswith("InstanceNorm")
                and m.training
                and getattr(m, "running_mean", None) is not None
            ):
                raise GuardError(
                    f"model: {label} (TorchScript InstanceNorm) updates its running statistics "
                    "in training mode, so explaining would change your model; call model.eval()"
                )
            dropout = kind in _DROPOUTS and m.training and getattr(m, "p", 1.0) > 0
            if dropout and not self.allow_random:
                raise GuardError(_random(f"{label} (TorchScript)", []))
            if m.training:
                self._save(m)

    def _dropouts(self) -> list[str]:
        return [
            self.name(m)
            for root in self.roots
            for m in root.modules()
            if isinstance(m, _DropoutNd) and m.training and m.p > 0
        ]

    def restore(self) -> None:
        """Put back buffers a forward pass changed, then refuse the model."""
        changed = []
        for m, name, original, copy, version in self.saved:
            now = getattr(m, name)
            if now is not original:
                setattr(m, name, original)
            if original._version != version:
                with torch.no_grad():
                    original.copy_(copy)
            if now is not original or original._version != version:
                changed.append(f"{self.name(m)}.{name}")
        self.saved.clear()
        if changed:
            raise GuardError(
                f"model: its forward pass changes buffers in training mode "
                f"({', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''}); they were put "
                "back. Explaining must not change your model: call model.eval() first"
            )


@contextmanager
def watch(allow_random: bool, roots: tuple[nn.Module, ...]) -> Iterator[Watch]:
    """Guard every module that runs inside the block (this thread only)."""
    w = Watch(allow_random, roots)
    handle = register_module_forward_pre_hook(w.before)
    try:
        yield w
    finally:
        handle.remove()
        w.restore()


def names_of(roots: tuple[nn.Module, ...]) -> dict[int, str]:
    """``id(module) -> dotted name`` for messages (the first root's names win)."""
    names: dict[int, str] = {}
    for root in reversed(roots):
        for name, m in root.named_modules():
            names[id(m)] = name or type(root).__name__
    return names


def _coupled(name: str, training: bool) -> str:
    why = "training mode" if training else "track_running_stats=False"
    return (
        f"model: contains BatchNorm using batch statistics ({name}: {why}). It couples the "
        "samples of a batch, so per-sample Jacobian rows would be wrong. Call model.eval() first "
        "(with running statistics); nothing was run, your model is unchanged."
    )


def _random(name: str, others: list[str]) -> str:
    more = [n for n in others if n != name]
    listed = f" (also: {', '.join(more[:4])}{' ...' if len(more) > 4 else ''})" if more else ""
    return (
        f"model: {name} is a dropout layer in training mode{listed}, so the model's output, and "
        "its gradients, are random: two identical calls would differ. Call model.eval() first, "
        "or pass allow_random=True to explain one random draw per forward pass."
    )
