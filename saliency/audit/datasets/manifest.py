"""The manifest of a run: what was asked, on which model and data, and which shards are done.

A run started again in the same folder resumes only when everything that decides its numbers is
the same: the configuration, the model's fingerprint (a hash of its parameters, buffers and
modes), the data's size and first shard, and the library and torch versions. Otherwise it is
refused with the differences named.

Examples
--------
>>> import torch
>>> model = torch.nn.Linear(3, 2)
>>> before = fingerprint(model)
>>> with torch.no_grad():
...     model.weight[0, 0] += 1
>>> fingerprint(model) == before
False
>>> differences({"seed": 0, "classes": None}, {"seed": 1, "classes": None})
['seed: 0 then, 1 now']
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from saliency._atomic import atomic_write
from saliency.targets import Contrast, TopK

from .shards import dumps

__all__ = [
    "FORMAT",
    "Unreadable",
    "describe",
    "differences",
    "digest",
    "fingerprint",
    "read",
    "tensor_digest",
    "write",
]

FORMAT = "saliency.audit.run"
VERSION = 1
NAME = "manifest.json"


def fingerprint(model: Callable) -> str:
    """A hash of a module's class, parameters, buffers (names, dtypes, shapes, bytes) and modes.

    A callable that is not an :class:`torch.nn.Module` has no parameters to hash: it is named by
    its qualified name only, prefixed ``unverified:``.
    """
    if not isinstance(model, nn.Module):
        func = getattr(model, "func", model)  # functools.partial
        name = getattr(func, "__qualname__", type(func).__qualname__)
        return f"unverified:{getattr(func, '__module__', '')}.{name}"
    h = hashlib.sha256(type(model).__qualname__.encode())
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for name, t in tensors:
        t = t.detach()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(_bytes(t))
    h.update(bytes(m.training for m in model.modules()))
    return "sha256:" + h.hexdigest()


def tensor_digest(*tensors: torch.Tensor | None) -> str:
    """A hash of tensors' dtypes, shapes and bytes (None counts as absent)."""
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        h.update(f"{t.dtype}:{tuple(t.shape)}".encode())
        h.update(_bytes(t.detach()))
    return "sha256:" + h.hexdigest()


def describe(value: object) -> object:
    """A JSON-safe description of an argument, stable from one launch to the next."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, TopK):
        return {"top_k": value.k}
    if isinstance(value, Contrast):
        return {"contrast": [list(value.a), list(value.b)]}
    if isinstance(value, torch.Tensor):
        if value.numel() <= 64:
            return {"tensor": value.tolist(), "dtype": str(value.dtype)}
        return {
            "tensor": list(value.shape),
            "dtype": str(value.dtype),
            "digest": tensor_digest(value),
        }
    if isinstance(value, list | tuple):
        return [describe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): describe(v) for k, v in value.items()}
    if isinstance(value, functools.partial):
        return {
            "callable": _qualified(value.func),
            "args": describe(list(value.args)),
            "keywords": describe(dict(value.keywords)),
        }
    if callable(value):
        return {"callable": _qualified(value)}
    return repr(value)


def digest(parts: dict) -> str:
    """The hash that ties every shard to the run it was made for."""
    return "sha256:" + hashlib.sha256(dumps(parts).encode()).hexdigest()


def differences(old: object, new: object, path: str = "") -> list[str]:
    """What differs between two descriptions, one line per differing entry."""
    if isinstance(old, dict) and isinstance(new, dict):
        lines = []
        for key in sorted(set(old) | set(new), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in old:
                lines.append(f"{where}: absent then, {_short(new[key])} now")
            elif key not in new:
                lines.append(f"{where}: {_short(old[key])} then, absent now")
            else:
                lines += differences(old[key], new[key], where)
        return lines
    if old != new:
        return [f"{path}: {_short(old)} then, {_short(new)} now"]
    return []


class Unreadable(ValueError):
    """A manifest that is empty or garbled: the run writing it was cut off (a power cut before
    the file reached the disk)."""


def read(out_dir: Path) -> dict | None:
    """The manifest in ``out_dir``, None when there is none; an error when it is garbled
    (:class:`Unreadable`) or not ours."""
    path = out_dir / NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        manifest = json.loads(text)
    except ValueError as e:
        raise Unreadable(
            f"out_dir: {str(path)!r} is empty or garbled ({e}): the run writing it was cut off "
            "mid-write (a power cut?), so what it holds cannot be trusted; pass overwrite=True "
            "to delete its results and start over, or choose another out_dir"
        ) from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(
            f"out_dir: {str(path)!r} was not written by saliency.audit.run; choose another out_dir"
        )
    return manifest


def write(out_dir: Path, manifest: dict) -> None:
    """Write the manifest atomically (indented: people read it)."""
    text = json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False) + "\n"
    with atomic_write(out_dir / NAME, "w") as f:
        f.write(text)


def _bytes(t: torch.Tensor) -> bytes:
    t = t.cpu().contiguous().reshape(-1)
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return t.view(torch.uint8).numpy().tobytes()


def _qualified(func: object) -> str:
    name = getattr(func, "__qualname__", type(func).__qualname__)
    return f"{getattr(func, '__module__', None) or ''}.{name}".lstrip(".")


def _short(value: object) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
