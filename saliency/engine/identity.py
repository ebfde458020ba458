"""Which modules a callable runs, found without running it: the key of everything the engine caches.

Users hand the engine an ``nn.Module``, its bound ``forward``, a ``functools.partial``, a lambda
around a model that returns a tuple, a TorchScript module, or an object holding the model. The
cached facts (activation bytes, the strategy ``auto`` chose) belong to the modules behind such a
callable, not to the wrapper object, which is often made afresh for every call. Correctness never
rests on this key: whatever can change between calls is checked again on the call itself.
"""

from __future__ import annotations

import functools
import types
import weakref
from collections.abc import Callable

from torch import nn

__all__ = ["key_of", "owners"]

_DEPTH = 3  # wrappers of wrappers of wrappers: deeper nesting is rare and just not cached


def owners(model: Callable) -> tuple[nn.Module, ...]:
    """The ``nn.Module`` objects a callable holds directly or through its wrappers, in order.

    Examples
    --------
    >>> import functools, torch
    >>> net = torch.nn.Linear(2, 2)
    >>> owners(lambda t: net(t))[0] is net, owners(functools.partial(net))[0] is net
    (True, True)
    """
    found: list[nn.Module] = []
    _collect(model, found, _DEPTH)
    unique: list[nn.Module] = []
    for m in found:
        if not any(m is u for u in unique):
            unique.append(m)
    return tuple(unique)


def _collect(obj: object, found: list[nn.Module], depth: int) -> None:
    if depth < 0:
        return
    if isinstance(obj, nn.Module):
        found.append(obj)
        return
    if isinstance(obj, types.MethodType):
        _collect(obj.__self__, found, depth - 1)
        return
    if isinstance(obj, functools.partial):
        _collect(obj.func, found, depth - 1)
        for value in (*obj.args, *obj.keywords.values()):
            _collect(value, found, depth - 1)
        return
    if isinstance(obj, types.FunctionType):
        for cell in obj.__closure__ or ():
            try:
                _collect(cell.cell_contents, found, depth - 1)
            except ValueError:  # an empty cell
                pass
        names = obj.__code__.co_names
        for name in names:
            value = obj.__globals__.get(name)
            if isinstance(value, nn.Module | types.FunctionType | functools.partial):
                _collect(value, found, depth - 1)
        for value in obj.__defaults__ or ():
            _collect(value, found, depth - 1)
        return
    if callable(obj) and hasattr(obj, "__dict__") and not isinstance(obj, type):
        # A user object with __call__ that holds the model as an attribute.
        for value in vars(obj).values():
            if isinstance(value, nn.Module):
                found.append(value)


def key_of(model: Callable, found: tuple[nn.Module, ...]) -> tuple[object, tuple] | None:
    """``(anchor, rest)``: the object caches are weakly keyed on, and what else identifies the
    callable; ``None`` when nothing can be weakly referenced (then nothing is cached)."""
    code = (_code(model), _bound(model))
    if found:
        return found[0], (code, tuple(id(m) for m in found[1:]))
    try:
        weakref.ref(model)
    except TypeError:
        return None
    return model, (code,)


def _bound(obj: object) -> tuple:
    """The plain values a ``functools.partial`` binds (a flag may switch the model's behaviour);
    other bound objects by identity."""
    out = []
    for _ in range(_DEPTH):
        if not isinstance(obj, functools.partial):
            break
        for name, value in (*enumerate(obj.args), *obj.keywords.items()):
            if value is None or isinstance(value, bool | int | float | str):
                out.append((name, value))
            elif not isinstance(value, nn.Module):
                out.append((name, type(value).__name__, id(value)))
        obj = obj.func
    return tuple(out)


def _code(obj: object) -> object:
    for _ in range(_DEPTH):
        if isinstance(obj, functools.partial):
            obj = obj.func
        elif isinstance(obj, types.MethodType):
            return (obj.__func__, type(obj.__self__))
        else:
            break
    if isinstance(obj, types.FunctionType):
        return obj.__code__
    return type(obj)
