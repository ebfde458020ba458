"""safetensors files of results: bytes that are the same every time, and a reader whose every
failure names the file and what is wrong with it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

__all__ = ["damaged", "read", "steady"]


def steady(data: bytes) -> bytes:
    """``data`` (a safetensors file) with the metadata of its header in sorted order.

    The safetensors library writes metadata from a hash map, in an order that changes from one
    call to the next, so the same tensors and metadata would give other bytes in every process;
    resumable runs compare files byte for byte.

    Examples
    --------
    >>> import torch
    >>> from safetensors.torch import save
    >>> a = save({"x": torch.zeros(2)}, metadata={"b": "1", "a": "2"})
    >>> b = save({"x": torch.zeros(2)}, metadata={"a": "2", "b": "1"})
    >>> steady(a) == steady(b)
    True
    """
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the library's alignment of the data that follows
    return len(text).to_bytes(8, "little") + text + data[8 + size :]


def damaged(path: str, kind: str, why: str) -> ValueError:
    """The error for a file of ``kind`` (a class name) that cannot be read, and why."""
    return ValueError(
        f"path: {path!r} cannot be read as a saved {kind}: {why}; it is damaged (cut short?) or "
        f"was not written by {kind}.save"
    )


def read(
    path: str | os.PathLike, kind: str, form: str, device: str | torch.device = "cpu"
) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and tensors of a file written by ``kind.save`` (metadata ``format`` equal
    to ``form``), tensors onto ``device``; a clear error for a missing, foreign or damaged file."""
    from safetensors import safe_open

    name = os.fspath(path)
    if not Path(name).is_file():
        raise FileNotFoundError(f"path: {name!r} is not a file")
    try:
        with safe_open(name, framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            if meta.get("format") != form:
                raise ValueError(
                    f"path: {name!r} is not a saved {kind} "
                    f"(metadata format {meta.get('format')!r}, expected {form!r})"
                )
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except ValueError:
        raise
    except Exception as e:  # safetensors' own error type, raised for any unreadable header
        raise damaged(name, kind, f"{type(e).__name__}: {e}") from e
    return meta, tensors
