"""Grad-CAM for every requested class from one streamed layer Jacobian."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .. import targets
from ..attribution import Attribution
from ..engine import iter_class_jacobian, layer_name, layer_output, outputs
from ._request import describe
from .records import MethodRecord, Option

__all__ = ["gradcam"]

_MODES = ("nearest", "bilinear", "bicubic", "area", "nearest-exact")


def gradcam(
    model: Callable,
    x: torch.Tensor,
    classes: targets.Classes = None,
    *,
    layer: nn.Module | str,
    relu: bool = True,
    size: str | tuple[int, ...] | None = "input",
    mode: str = "bilinear",
    output: str | Callable = "logits",
    strategy: str = "auto",
    max_memory: int | str | None = None,
    allow_random: bool = False,
    **forward_kwargs,
) -> Attribution:
    """Grad-CAM maps of every requested class: ``relu(sum_c mean(dF_k/dA_c) A_c)`` at ``layer``.

    ``A`` is the layer's output ``[B, C', h, w]``; each class's channel weights are its layer
    gradients averaged over the spatial positions, all classes from one engine pass over the
    layer (:func:`saliency.iter_class_jacobian` with ``layer``, streamed under ``max_memory``).

    Parameters
    ----------
    model, x, classes, output, strategy, max_memory, allow_random, **forward_kwargs
        As in :func:`saliency.class_jacobian`.
    layer
        A module of the model whose output has channels and spatial dimensions (typically the
        last convolutional block), or its dotted name.
    relu
        Keep only positive evidence (Grad-CAM's ReLU; Captum's ``relu_attributions``).
    size
        ``"input"`` (upsample to ``x``'s spatial size), a size tuple, or ``None`` (the layer's
        own resolution).
    mode
        Interpolation for upsampling: ``"bilinear"`` (smooth, like pytorch-grad-cam) or
        ``"nearest"`` (Captum's ``LayerAttribution.interpolate`` default), ``"bicubic"``,
        ``"area"``, ``"nearest-exact"``.

    Returns
    -------
    Attribution
        ``values`` ``[B, K, *size]``, method ``"gradcam"``.

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
    if mode not in _MODES:
        raise ValueError(f"mode: expected one of {list(_MODES)}, got {mode!r}")
    kw = {"allow_random": allow_random, **forward_kwargs}
    acts = layer_output(model, x, layer, output=output, **kw)
    if acts.ndim < 3:
        raise ValueError(
            f"layer: Grad-CAM needs an output with channels and spatial dimensions "
            f"[B, C, ...], got shape {tuple(acts.shape)} from {layer_name(model, layer)}"
        )
    spatial = tuple(range(3, acts.ndim + 1))  # of the Jacobian [B, k, C, *spatial]
    maps, ids = [], []
    for class_ids, jac in iter_class_jacobian(
        model, x, classes, output=output, strategy=strategy, max_memory=max_memory,
        layer=layer, **kw,
    ):  # fmt: skip
        weights = jac.mean(dim=spatial)  # [B, k, C]
        cam = torch.einsum("bkc,bc...->bk...", weights, acts)
        maps.append(cam.clamp_(min=0) if relu else cam)
        ids.append(class_ids)
    cam = torch.cat(maps, 1)
    target = _size(size, x, acts)
    if target is not None and tuple(cam.shape[2:]) != target:
        corners = False if mode in ("bilinear", "bicubic") else None
        cam = F.interpolate(cam, size=target, mode=mode, align_corners=corners)
    params = {
        "layer": layer_name(model, layer),
        "relu": relu,
        "size": list(target) if target is not None else None,
        "mode": mode,
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


def _size(size, x: torch.Tensor, acts: torch.Tensor) -> tuple[int, ...] | None:
    n = acts.ndim - 2  # spatial dimensions of the layer
    if size is None:
        return None
    if isinstance(size, str):
        if size != "input":
            raise ValueError(f"size: expected 'input', a size tuple or None, got {size!r}")
        if x.ndim != n + 2:
            raise ValueError(
                f"size='input': x of shape {tuple(x.shape)} has no {n} spatial dimensions to "
                "match the layer's; pass size=(...) or size=None"
            )
        return tuple(x.shape[2:])
    size = tuple(size)
    if len(size) != n or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"size: expected {n} positive ints for the layer's {n}-D maps, got {size}")
    return size
