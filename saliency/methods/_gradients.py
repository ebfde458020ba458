"""Vanilla gradients and gradient x input, for every requested class at once."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import targets
from ..attribution import Attribution
from ..engine import evaluate, layer_name
from ._request import describe
from ._stream import writable
from .records import MethodRecord

__all__ = ["gradients"]


def gradients(
    model: Callable,
    x: torch.Tensor,
    classes: targets.Classes = None,
    *,
    times_input: bool = False,
    abs: bool = False,
    output: str | Callable = "logits",
    strategy: str = "auto",
    max_memory: int | str | None = None,
    layer: torch.nn.Module | str | None = None,
    allow_random: bool = False,
    **forward_kwargs,
) -> Attribution:
    """Input gradients ``d F_k / d x`` of every requested class, optionally times the input.

    One engine call (:func:`saliency.class_jacobian`): one shared forward, then the cheapest exact
    backward passes for all ``K`` classes.

    Parameters
    ----------
    model, x, classes, output, strategy, max_memory, layer, allow_random, **forward_kwargs
        As in :func:`saliency.class_jacobian`.
    times_input
        Multiply by ``x`` (gradient x input, Captum's ``InputXGradient``), or with ``layer`` by
        the layer's output (Captum's ``LayerGradientXActivation``).
    abs
        Take absolute values (after ``times_input``).

    Returns
    -------
    Attribution
        ``values`` ``[B, K, *x.shape[1:]]`` (with ``layer``: ``[B, K, *layer_output]``), method
        ``"gradients"``.

    Notes
    -----
    Porting from Captum: ``Saliency`` returns absolute values by default, this returns signed
    ones (pass ``abs=True`` to match). Captum's per-sample ``target`` list is a ``[B, 1]`` long
    tensor here; a list here is a set of classes shared by every sample.

    Examples
    --------
    >>> import torch, saliency
    >>> model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> x = torch.randn(4, 5)
    >>> a = saliency.gradients(model, x, saliency.top_k(2), times_input=True)
    >>> a.values.shape, a.classes.shape
    (torch.Size([4, 2, 5]), torch.Size([4, 2]))
    >>> bool((a.classes[:, 0] == a.outputs.argmax(1)).all())
    True
    """
    for name, flag in (("times_input", times_input), ("abs", abs)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name}: expected True or False, got {flag!r}")
    r = evaluate(
        model,
        x,
        classes,
        output=output,
        strategy=strategy,
        max_memory=max_memory,
        layer=layer,
        allow_random=allow_random,
        **forward_kwargs,
    )
    values = r.values
    if times_input or abs:
        values = writable(values)
    if times_input:
        values.mul_(r.point.unsqueeze(1))
    if abs:
        values.abs_()
    params = {
        "times_input": times_input,
        "abs": abs,
        "classes": describe(classes),
        "output": describe(output),
        "strategy": r.strategy,
        "max_memory": max_memory,
    }
    if layer is not None:
        params["layer"] = layer_name(model, layer)
    rows = targets.resolve(classes, r.outputs) if isinstance(classes, targets.Contrast) else None
    negatives = None if rows is None else rows.neg
    return Attribution(values, r.classes, r.outputs, "gradients", params, negatives=negatives)


RECORDS = (
    MethodRecord(
        name="gradients",
        function=gradients,
        summary="input gradients d F_k / d x of every class, one shared forward pass",
        doc="methods/gradients.md",
        provides=("input_maps", "gradients"),
        loses={
            "times_input": ("gradients",),
            "abs": ("gradients",),
            "layer": ("gradients", "input_maps"),
        },
    ),
)
