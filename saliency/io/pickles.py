"""Reading ``torch.save`` files without running code from them, unless trusted."""

from __future__ import annotations

import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from pickle import UnpicklingError
from typing import BinaryIO

import torch

from saliency.io.errors import UnsafeFileError

__all__ = ["SAFE_FORMATS", "TRUST", "is_safetensors", "is_state_dict", "load_restricted"]

SAFE_FORMATS = (
    "save it as TorchScript (torch.jit.save), as a torch.export program (torch.export.save), "
    "or save its state_dict and pass package.module:factory with weights="
)
TRUST = "If you trust the file, pass trust_pickle=True (the command's --trust-pickle)."


def is_safetensors(f: BinaryIO) -> bool:
    """Check the safetensors layout: an 8-byte little-endian header size, then a JSON object."""
    f.seek(0)
    head = f.read(9)
    size = f.seek(0, 2)
    f.seek(0)
    return len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") <= size - 8


def is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def load_restricted(
    f: BinaryIO, path: Path, argument: str, trust_pickle: bool, device: torch.device
) -> object:
    """Load a ``torch.save`` file, refusing (before any of its code runs) what is not plain data."""
    name = repr(str(path))
    try:
        with warnings.catch_warnings():
            # The restricted unpickler notes protocol versions it did not expect; the outcome
            # (success, or the refusal below) says all that matters.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(f, map_location=device, weights_only=True)
    except UnpicklingError as e:
        # weights_only=True refuses any global outside torch's allowlist before calling it.
        refusal = e
    except Exception as e:  # a damaged file or no torch file at all
        raise ValueError(
            f"{argument}: {name} is not a model file of a supported form (TorchScript, "
            f"torch.export, safetensors, or torch.save data): {type(e).__name__}: {e}"
        ) from None
    match = re.search(r"GLOBAL (\S+)", str(refusal))
    f.seek(0)
    pickled = f.read(1) == b"\x80" or zipfile.is_zipfile(f)  # protocol 2+ or torch.save's zip
    if not (match or pickled):
        raise ValueError(
            f"{argument}: {name} is not a model file of a supported form (TorchScript, "
            f"torch.export, safetensors, or torch.save data)"
        )
    if not trust_pickle:
        reason = (
            f"it names {match.group(1)}, which unpickling would import and call"
            if match
            else "it holds more than tensors and plain containers"
        )
        raise UnsafeFileError(
            f"{argument}: refused to unpickle {name}: {reason}, so loading it could run arbitrary "
            f"code. To share a model safely, {SAFE_FORMATS}. {TRUST}"
        )
    f.seek(0)
    try:
        return torch.load(f, map_location=device, weights_only=False)
    except Exception as e:  # trusted, but still damaged or not a torch file
        raise ValueError(f"{argument}: {name} fails to load even trusted: {e}") from e
