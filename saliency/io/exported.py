"""``torch.export`` programs: what in an archive would run code, and running any batch size.

``torch.export.load`` falls back to full unpickling for some entries of a ``.pt2`` archive (sample
inputs, pickled weights and constants) and loads AOTInductor shared libraries, so an archive is
checked here before torch sees it.
"""

from __future__ import annotations

import io
import json
import zipfile

import torch
from torch import nn

__all__ = ["ExportedModel", "is_export_archive", "training_ops", "unsafe_parts", "wrap"]

# Ops that only appear in a program exported from a model in training mode, or that take a flag
# saying so: (position of the flag, its keyword), or None when the op always trains.
_TRAINING_OPS: dict[str, tuple[int, str] | None] = {
    "aten.batch_norm.default": (5, "training"),
    "aten.native_batch_norm.default": (5, "training"),
    "aten._native_batch_norm_legit.default": None,
    "aten._native_batch_norm_legit_functional.default": None,
    "aten.dropout.default": (2, "train"),
    "aten.native_dropout.default": (2, "train"),
    "aten.feature_dropout.default": (2, "train"),
    "aten.alpha_dropout.default": (2, "train"),
    "aten.feature_alpha_dropout.default": (2, "train"),
}


def _relative(archive: zipfile.ZipFile) -> dict[str, str]:
    """Map names inside the archive's root folder (if it has one) to the stored names."""
    names = archive.namelist()
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) == 1 and all("/" in name for name in names):
        return {name.split("/", 1)[1]: name for name in names}
    return {name: name for name in names}


def is_export_archive(archive: zipfile.ZipFile) -> bool:
    """Whether a zip archive was written by ``torch.export.save`` (current or pre-2.8 layout)."""
    names = _relative(archive)
    return "archive_format" in names or "serialized_exported_program.json" in names


def _restricted_load_fails(data: bytes) -> bool:
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # any failure: torch would retry it with full unpickling
        return True
    return False


def unsafe_parts(archive: zipfile.ZipFile) -> list[str]:
    """Name the entries that ``torch.export.load`` would load in a way that can run code.

    Returns an empty list for an archive that only holds a graph, raw tensors and pickles that
    ``torch.load(weights_only=True)`` accepts (then torch never needs its unrestricted fallback).
    """
    names = _relative(archive)
    unsafe = []
    if any(name.startswith("data/aotinductor/") for name in names):
        unsafe.append("data/aotinductor/ (a compiled shared library, which runs native code)")
    pickled = [name for name in names if name.endswith(".pt")]
    for folder in ("data/weights/", "data/constants/"):
        for config in (n for n in names if n.startswith(folder) and n.endswith("_config.json")):
            try:
                payloads = json.loads(archive.read(names[config]))["config"]
            except (ValueError, KeyError, TypeError):
                unsafe.append(f"{config} (unreadable, so its payloads cannot be checked)")
                continue
            for meta in payloads.values():
                entry = folder + str(meta.get("path_name", ""))
                if meta.get("path_name", "").startswith("opaque"):
                    unsafe.append(f"{entry} (an opaque object, loaded with pickle.loads)")
                elif meta.get("use_pickle"):
                    pickled.append(entry)
    for entry in pickled:
        if entry not in names or _restricted_load_fails(archive.read(names[entry])):
            unsafe.append(f"{entry} (a pickle that needs more than tensors to load)")
    return unsafe


def training_ops(program: torch.export.ExportedProgram) -> list[str]:
    """Name the ops of `program` that run in training mode (batch statistics, dropout)."""
    found = []
    for node in program.graph.nodes:
        name = str(node.target)
        if node.op != "call_function" or name not in _TRAINING_OPS:
            continue
        flag = _TRAINING_OPS[name]
        if flag is None:
            found.append(name)
            continue
        position, keyword = flag
        value = node.args[position] if len(node.args) > position else node.kwargs.get(keyword)
        if value is True:
            found.append(name)
    return found


def _batch_and_shape(
    program: torch.export.ExportedProgram,
) -> tuple[int | None, tuple[int, ...] | None]:
    """The static batch size (None if dynamic) and the shape of one input (None if not fixed)."""
    (name,) = program.graph_signature.user_inputs
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    value = placeholders[name].meta.get("val") if name in placeholders else None
    if not isinstance(value, torch.Tensor) and program.example_inputs is not None:
        # Without graph metadata the example only shows one batch size; treating it as static is
        # always correct, just slower for a program that would have accepted any batch.
        args, _ = program.example_inputs
        value = args[0] if args else None
    if not isinstance(value, torch.Tensor) or value.ndim == 0:
        raise ValueError("the program's input is not a tensor with a batch dimension")
    batch, rest = value.shape[0], tuple(value.shape[1:])
    static = batch if isinstance(batch, int) else None
    shape = rest if all(isinstance(d, int) for d in rest) else None
    return static, shape


class ExportedModel(nn.Module):
    """Run the module of a ``torch.export`` program, on any batch size.

    A program exported with a static batch size ``n`` only accepts batches of exactly ``n`` rows.
    Other batches are split into chunks of ``n``; the last chunk is padded with copies of its last
    row (detached, so that no gradient flows through the padding) whose outputs are dropped.

    The mode of an exported program was fixed when it was exported, so this module is always in
    eval mode and ``train()`` is refused.
    """

    def __init__(self, program: nn.Module, batch_size: int | None) -> None:
        super().__init__()
        self.program = program
        self.batch_size = batch_size
        # GraphModule.eval() raises; the flags only describe the fixed mode, so set them directly.
        for module in self.modules():
            module.training = False

    def train(self, mode: bool = True) -> ExportedModel:
        """Refuse training mode; ``eval()`` is accepted and changes nothing."""
        if mode:
            raise NotImplementedError(
                "an exported program's mode is fixed when it is exported; export it again from a "
                "model in training mode to train it"
            )
        return self

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        out = self.program(x)
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"the exported program returned {type(out).__name__}; expected one tensor [B, C]"
            )
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the program's outputs for a batch of any size."""
        n = self.batch_size
        rows = x.shape[0]
        if n is None or rows == n:
            return self._run(x)
        if rows == 0:
            return self._run(x.new_zeros((n, *x.shape[1:])))[:0]
        outputs = []
        for start in range(0, rows, n):
            chunk = x[start : start + n]
            real = chunk.shape[0]
            if real < n:
                padding = chunk[-1:].detach().expand(n - real, *chunk.shape[1:])
                chunk = torch.cat([chunk, padding])
            outputs.append(self._run(chunk)[:real])
        return torch.cat(outputs)


def wrap(
    program: torch.export.ExportedProgram, device: torch.device
) -> tuple[ExportedModel, tuple[int, ...] | None]:
    """Return the program's module ready to call on any batch, and the shape of one input.

    Raises
    ------
    ValueError
        If the program does not take exactly one tensor input.
    """
    inputs = program.graph_signature.user_inputs
    if len(inputs) != 1:
        raise ValueError(f"the program takes {len(inputs)} inputs {list(inputs)}; expected one")
    batch, shape = _batch_and_shape(program)
    return ExportedModel(program.module(), batch).to(device), shape
