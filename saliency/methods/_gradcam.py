"""Grad-CAM for every requested class from one streamed layer Jacobian."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .. import targets
from ..attribution import Attribution
from ..engine import iter_class_jacobian, layer_name, layer_output, outputs
from ._cam_layout import apply, layout
from ._request import describe
from .records import MethodRecord, Option

__all__ = ["gradcam"]

# Interpolation modes, and the map dimensions each works on (None: any).
_MODES = {
    "nearest": None, "nearest-exact": None, "area": None,
    "linear": 1, "bilinear": 2, "bicubic": 2, "trilinear": 3,
}  # fmt: skip
_SMOOTH = {1: "linear", 2: "bilinear", 3: "trilinear"}


def gradcam(
    model: Callable,
    x: torch.Tensor,
    classes: targets.Classes = None,
    *,
    layer: nn.Module | str,
    relu: bool = True,
    size: str | tuple[int, ...] | None = "input",
    mode: str | None = None,
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
    output: str | Callable = "logits",
    strategy: str = "auto",
    max_memory: int | str | None = None,
    allow_random: bool = False,
    **forward_kwargs,
) -> Attribution:
    """Grad-CAM maps of every requested class: ``relu(sum_c mean(dF_k/dA_c) A_c)`` at ``layer``.

    ``A`` is the layer's output as channels-first maps ``[B, C', *positions]``; each class's
    channel weights are its layer gradients averaged over the positions, all classes from one
    engine pass over the layer (:func:`saliency.iter_class_jacobian` with ``layer``, streamed
    under ``max_memory``). Convolutions give such maps; a transformer's tokens ``[B, T, E]``
    are folded into them: patch tokens into their grid for image inputs (leading CLS,
    distillation and register tokens dropped), a sequence of tokens for 1-D inputs.

    Parameters
    ----------
    model, x, classes, output, strategy, max_memory, allow_random, **forward_kwargs
        As in :func:`saliency.class_jacobian`.
    layer
        A module of the model (typically the last convolutional or transformer block), or its
        dotted name.
    relu
        Keep only positive evidence (Grad-CAM's ReLU; Captum's ``relu_attributions``).
    size
        ``"input"`` (upsample to ``x``'s positions: ``[H, W]`` of an image, ``[T]`` of a
        ``[B, T]`` or ``[B, C, T]`` signal), a size tuple, or ``None`` (the layer's own
        resolution).
    mode
        Interpolation for upsampling; ``None`` picks ``"linear"``, ``"bilinear"`` or
        ``"trilinear"`` for 1-D, 2-D or 3-D maps (smooth, like pytorch-grad-cam). Also
        ``"nearest"`` (Captum's ``LayerAttribution.interpolate`` default), ``"bicubic"`` (2-D),
        ``"area"``, ``"nearest-exact"``.
    reshape
        A callable turning the layer's output ``[N, *layer_output]`` into channels-first maps
        ``[N, C', *positions]``, for layouts Grad-CAM does not recognise (pytorch-grad-cam's
        ``reshape_transform``). It is applied to the activations and to their gradients, so it
        must only select, reorder and reshape, e.g. ``lambda a: a[:, 1:].unflatten(1, (14, 14))
        .movedim(-1, 1)`` for 196 patch tokens after a CLS token.

    Returns
    -------
    Attribution
        ``values`` ``[B, K, *size]``, method ``"gradcam"``; ``params["tokens"]`` records how
        tokens were read (leading tokens, grid), None for channels-first outputs.

    Examples
    --------
    >>> import torch, saliency
    >>> model = torch.nn.Sequential(
    ...     torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
    ...     torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> a = saliency.gradcam(model, torch.randn(2, 1, 8, 8), layer=model[1])
    >>> a.values.shape
    torch.Size([2, 3, 8, 8])
    """
    if layer is None:
        raise ValueError("layer: Grad-CAM needs the module whose output it weighs, got None")
    if not isinstance(relu, bool):
        raise TypeError(f"relu: expected True or False, got {relu!r}")
    if mode is not None and mode not in _MODES:
        raise ValueError(f"mode: expected None or one of {list(_MODES)}, got {mode!r}")
    kw = {"allow_random": allow_random, **forward_kwargs}
    acts = layer_output(model, x, layer, output=output, **kw)
    where = layer_name(model, layer)
    shape = layout(model, x, layer, acts, reshape, where)
    acts = apply(shape.reshape, acts, 1, None, "activations")
    n = acts.ndim - 2  # positions of the maps
    target = _size(size, x, n)
    mode = _mode(mode, n)
    positions = tuple(range(3, acts.ndim + 1))  # of the Jacobian [B, k, C, *positions]
    maps, ids = [], []
    for class_ids, jac in iter_class_jacobian(
        model, x, classes, output=output, strategy=strategy, max_memory=max_memory,
        layer=layer, **kw,
    ):  # fmt: skip
        jac = apply(shape.reshape, jac, 2, acts.shape[1:], "gradients")
        weights = jac.mean(dim=positions)  # [B, k, C]
        cam = torch.einsum("bkc,bc...->bk...", weights, acts)
        maps.append(cam.clamp_(min=0) if relu else cam)
        ids.append(class_ids)
    cam = torch.cat(maps, 1)
    if target is not None and tuple(cam.shape[2:]) != target:
        corners = False if mode in ("linear", "bilinear", "bicubic", "trilinear") else None
        cam = F.interpolate(cam, size=target, mode=mode, align_corners=corners)
    params = {
        "layer": where,
        "relu": relu,
        "size": list(target) if target is not None else None,
        "mode": mode,
        **(shape.record or {"tokens": None}),
        "classes": describe(classes),
        "output": describe(output),
        "strategy": strategy,
        "max_memory": max_memory,
    }
    scores = outputs(model, x, output=output, **kw)
    rows = targets.resolve(classes, scores) if isinstance(classes, targets.Contrast) else None
    negatives = None if rows is None else rows.neg
    return Attribution(cam, torch.cat(ids, 1), scores, "gradcam", params, negatives=negatives)


RECORDS = (
    MethodRecord(
        name="gradcam",
        function=gradcam,
        summary="a layer's activations weighted by their mean gradients (Grad-CAM)",
        doc="methods/gradcam.md",
        options=(
            Option(
                name="layer",
                type=str,
                required=True,
                help="the module whose output Grad-CAM weighs, by its dotted name "
                "(e.g. features.3)",
            ),
        ),
        provides=(),
        needs_layer=True,
    ),
)


def _size(size, x: torch.Tensor, n: int) -> tuple[int, ...] | None:
    """The maps' target size: ``x``'s last ``n`` dimensions past its batch (and channels)."""
    if size is None:
        return None
    if isinstance(size, str):
        if size != "input":
            raise ValueError(f"size: expected 'input', a size tuple or None, got {size!r}")
        if x.ndim == n + 2 or (n == 1 and x.ndim == 2):  # [B, C, *positions], or a [B, T] signal
            return tuple(x.shape[-n:])
        raise ValueError(
            f"size='input': x of shape {tuple(x.shape)} has no {n} spatial dimensions to "
            f"match the layer's {n}-D maps; pass size=(...) or size=None"
        )
    size = tuple(size)
    if len(size) != n or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"size: expected {n} positive ints for the layer's {n}-D maps, got {size}")
    return size


def _mode(mode: str | None, n: int) -> str:
    if mode is None:
        return _SMOOTH.get(n, "nearest")
    dims = _MODES[mode]
    if dims is not None and dims != n:
        smooth = _SMOOTH.get(n, "nearest")
        raise ValueError(
            f"mode: {mode!r} interpolates {dims}-D maps, but these maps are {n}-D; use "
            f"{smooth!r} (or leave mode out)"
        )
    return mode
