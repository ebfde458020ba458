"""Read ``.npy`` and ``.safetensors`` inputs and split batches into samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from saliency.io.errors import InputProblem

__all__ = ["read_tensor", "split_rows"]


def read_tensor(path: Path, key: str | None) -> torch.Tensor:
    """Read the array of a ``.npy`` file (never unpickling) or one tensor of a safetensors file."""
    if path.suffix.lower() == ".npy":
        array = np.load(path, allow_pickle=False)
        tensor_key = None
    else:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            if key is None and len(keys) != 1:
                raise InputProblem(
                    f"holds {len(keys)} tensors {keys[:10]}; name the one to explain with key"
                )
            tensor_key = keys[0] if key is None else key
            if tensor_key not in keys:
                raise InputProblem(f"has no tensor {tensor_key!r}; it holds {keys[:10]}")
            array = f.get_tensor(tensor_key)
    kind = array.dtype.kind if isinstance(array, np.ndarray) else None
    if kind is not None and kind not in "biuf":
        raise InputProblem(f"holds {array.dtype} values; expected numbers")
    tensor = torch.as_tensor(array)
    if tensor.is_complex():
        raise InputProblem(f"holds {tensor.dtype} values; expected real numbers")
    if tensor.ndim == 0:
        raise InputProblem("holds a single number; expected at least one dimension")
    # A private float32 copy, so that normalising in place never touches a memory map.
    return tensor.to(torch.float32, copy=True)


def split_rows(
    tensor: torch.Tensor, shape: tuple[int, ...] | None
) -> tuple[list[torch.Tensor], bool]:
    """Split a tensor file into samples; also say whether it held a batch."""
    if shape is None:
        return ([tensor], False) if tensor.ndim == 1 else (list(tensor), True)
    if tuple(tensor.shape) == shape:
        return [tensor], False
    if tuple(tensor.shape[1:]) == shape:
        return list(tensor), True
    raise InputProblem(
        f"holds shape {list(tensor.shape)}; expected one input {list(shape)} "
        f"or a batch [N, {', '.join(map(str, shape))}]"
    )
