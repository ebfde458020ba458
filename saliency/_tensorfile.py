"""safetensors bytes that are the same every time for the same tensors and metadata."""

from __future__ import annotations

import json

__all__ = ["steady"]


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
