"""How a layer's output becomes Grad-CAM's channels-first maps ``[N, C, *positions]``.

Convolutions give ``[B, C, h, w]`` or ``[B, C, T]`` already. Transformers give tokens
``[B, T, E]``, channels last: a vision transformer's patch tokens follow a few leading tokens (CLS,
DeiT's distillation token, Dinov2's registers) and fold row-major into their grid; Swin's stages
are grids with no leading token; a text or audio model's tokens are a 1-D sequence. One callable
at the door turns the layer's output into channels-first maps (pytorch-grad-cam's
``reshape_transform``), so the CAM itself never learns about architectures. It is applied to the
activations and, row for row, to their gradients, so it must only select, reorder and reshape.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..engine.identity import owners

__all__ = ["Layout", "apply", "layout"]

# Modules whose outputs are channels first ([B, C, T]) and modules whose outputs put the channels
# last ([B, T, E]): what a 1-D layer is made of tells which way its output reads.
_CHANNELS_FIRST = (
    nn.Conv1d, nn.ConvTranspose1d, nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool1d, nn.BatchNorm1d, nn.InstanceNorm1d,
)  # fmt: skip
_CHANNELS_LAST = (nn.Linear, nn.Embedding, nn.MultiheadAttention)
_MAX_DOWNSAMPLING = 7  # Swin-like stages halve the grid up to 2^7 times the patch size


@dataclass(frozen=True)
class Layout:
    """``reshape`` turns ``[N, *layer_output]`` into ``[N, C, *positions]``; ``record`` says how
    it was chosen, for ``params``."""

    reshape: Callable[[torch.Tensor], torch.Tensor]
    record: dict | None


def layout(
    model: Callable,
    x: torch.Tensor,
    layer: nn.Module | str,
    acts: torch.Tensor,
    reshape: Callable[[torch.Tensor], torch.Tensor] | None,
    where: str,
) -> Layout:
    """The reshaping for ``acts`` (the layer's output at ``x``): the caller's ``reshape``, the
    identity for channels-first maps, or a token fold recognised from ``x`` and the model."""
    if reshape is not None:
        if not callable(reshape):
            raise TypeError(
                f"reshape: expected a callable [N, *layer] -> [N, C, ...], got {reshape!r}"
            )
        return Layout(reshape, {"reshape": getattr(reshape, "__qualname__", repr(reshape))})
    if acts.ndim < 3:
        raise ValueError(
            f"layer: Grad-CAM needs an output with channels and spatial dimensions [B, C, ...] "
            f"or tokens [B, T, E], got shape {tuple(acts.shape)} from {where}"
        )
    if acts.ndim > 3:
        return Layout(_same, None)
    if x.ndim == 4:  # an image [B, C, H, W] read by tokens
        lead, h, w = _grid(acts.shape[1], tuple(x.shape[2:]), _patch_size(model), acts, where)
        return Layout(_Fold(lead, h, w), {"tokens": {"leading": lead, "grid": [h, w]}})
    if x.ndim in (2, 3) and _tokens_last(model, layer, acts, x.shape[-1], where):
        return Layout(_transpose, {"tokens": {"leading": 0, "sequence": int(acts.shape[1])}})
    if x.ndim in (2, 3):
        return Layout(_same, None)
    raise ValueError(
        f"layer: the output of {where} has shape {tuple(acts.shape)} and x has shape "
        f"{tuple(x.shape)}; Grad-CAM cannot tell how its tokens map to x's positions. Pass "
        "reshape=, a callable turning [N, T, E] into channels-first maps [N, C, ...]"
    )


def apply(fn: Callable, tensor: torch.Tensor, lead: int, reference: torch.Size | None, name: str):
    """``fn`` on ``tensor`` whose first ``lead`` dimensions are rows, checked: channels-first
    maps with the rows kept (and the shape of ``reference`` past the rows, when given)."""
    rows = tensor.shape[:lead]
    out = fn(tensor.flatten(0, lead - 1))
    if not isinstance(out, torch.Tensor) or out.ndim < 3 or out.shape[0] != math.prod(rows):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"reshape: expected channels-first maps [N, C, ...] with N={math.prod(rows)} rows "
            f"from the {name} of shape {tuple(tensor.flatten(0, lead - 1).shape)}, got {got}"
        )
    out = out.unflatten(0, rows)
    if reference is not None and out.shape[lead:] != reference:
        raise ValueError(
            f"reshape: turned the layer's gradients into maps of shape {tuple(out.shape[lead:])} "
            f"but its activations into {tuple(reference)}; it must only select, reorder and "
            "reshape, the same way for every row"
        )
    return out


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _transpose(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2)


@dataclass(frozen=True)
class _Fold:
    """Drop ``lead`` leading tokens, fold the rest row-major into ``[h, w]``, channels first."""

    lead: int
    h: int
    w: int

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return t[:, self.lead :].unflatten(1, (self.h, self.w)).movedim(-1, 1)


def _grid(
    tokens: int, size: tuple[int, int], patch: tuple[int, int] | None, acts, where: str
) -> tuple[int, int, int]:
    """``(leading tokens, h, w)``: the grid that ``tokens`` cover with the fewest extra tokens.

    With the model's patch size, the grids are the patch grid and its halvings (Swin's stages);
    without it (or when none fits), every downsampling factor of the input is tried.
    """
    height, width = size
    factors = None
    if patch is not None:
        factors = [(patch[0] << s, patch[1] << s) for s in range(_MAX_DOWNSAMPLING + 1)]
    for pool in (factors, [(f, f) for f in range(1, max(size) + 1)]):
        if pool is None:
            continue
        best = None
        for fh, fw in pool:
            for h, w in ((height // fh, width // fw), (-(-height // fh), -(-width // fw))):
                lead = tokens - h * w
                fits = h > 0 and w > 0 and 0 <= lead < max(h * w, 2)
                if fits and (best is None or lead < best[0]):
                    best = (lead, h, w)
        if best is not None:
            return best
    raise ValueError(
        f"layer: the output of {where}, {tuple(acts.shape)}, looks like tokens [B, T, E], but "
        f"T={tokens} does not fold into a grid of the {height}x{width} input. Pass reshape=, a "
        "callable turning [N, T, E] into channels-first maps [N, C, h, w], e.g. "
        "reshape=lambda a: a[:, 1:].unflatten(1, (h, w)).movedim(-1, 1)"
    )


def _patch_size(model: Callable) -> tuple[int, int] | None:
    """The patch size in a HuggingFace-style config of the model, when it has one."""
    for root in owners(model):
        for module in root.modules():
            patch = getattr(getattr(module, "config", None), "patch_size", None)
            if isinstance(patch, int) and not isinstance(patch, bool) and patch > 0:
                return patch, patch
            if (
                isinstance(patch, list | tuple)
                and len(patch) == 2
                and all(isinstance(p, int) and p > 0 for p in patch)
            ):
                return int(patch[0]), int(patch[1])
    return None


def _tokens_last(model, layer, acts: torch.Tensor, length: int, where: str) -> bool:
    """Whether a 1-D layer's output ``[B, a, b]`` is tokens ``[B, T, E]`` (else ``[B, C, T]``):
    from what the layer is made of, else from which dimension runs along ``x``'s length."""
    module = _module(model, layer)
    if module is not None:
        first = any(isinstance(m, _CHANNELS_FIRST) for m in module.modules())
        last = any(isinstance(m, _CHANNELS_LAST) for m in module.modules())
        if first != last:
            return last
    a, b = acts.shape[1:]
    if (a == length) != (b == length):
        return a == length
    raise ValueError(
        f"layer: cannot tell whether the output of {where}, {tuple(acts.shape)}, is channels "
        f"first [B, C, T] (a convolution) or tokens [B, T, E] (x's length is {length}). Pass "
        "reshape=lambda a: a for channels first, or reshape=lambda a: a.transpose(1, 2) for tokens"
    )


def _module(model: Callable, layer: nn.Module | str) -> nn.Module | None:
    if isinstance(layer, nn.Module):
        return layer
    for root in owners(model):
        try:
            return root.get_submodule(layer)
        except AttributeError:
            continue
    return None
