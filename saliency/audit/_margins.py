"""Linearised margins: how far each sample lies from the boundary with every competing class.

With the gradients of all classes at hand, the first-order distance from ``x`` to the boundary
between its class ``c`` and any class ``k`` is one division (the step DeepFool takes):
``(f_c - f_k) / ||grad f_c - grad f_k||``. The nearest competing class is the one the model most
easily confuses with ``c`` at this sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..attribution import Attribution
from ._scores import check_explains
from .records import MetricRecord

__all__ = ["Margins", "margins"]

_OUTPUTS = ("logits", "softmax", "log_softmax")


@dataclass(frozen=True, eq=False)
class Margins:
    """Distances from every sample to the boundary with every other class, to first order.

    Attributes
    ----------
    distance : torch.Tensor
        ``[B, K]``: ``gap / gradient_gap``, the Euclidean distance in input space from ``x`` to
        where the linearised scores of ``reference`` and ``classes[b, k]`` are equal; ``inf`` on
        the reference class's own row. Negative when class ``k`` already scores higher (a
        misclassified sample measured against its label). ``+-inf`` where the two gradients are
        equal, NaN where the scores are equal too.
    gap : torch.Tensor
        ``[B, K]``: ``f_c(x) - f_k(x)``, the score of the reference class minus that of row ``k``.
    gradient_gap : torch.Tensor
        ``[B, K]``: ``||grad f_c(x) - grad f_k(x)||_2`` over all input elements.
    reference : torch.Tensor
        ``[B]``: the class ``c`` measured from (the predicted class, or the label when given).
    nearest : torch.Tensor
        ``[B]``: the competing class with the smallest distance (for a crossed sample, the most
        negative: the class furthest past the boundary).
    nearest_distance : torch.Tensor
        ``[B]``: its distance.
    classes : torch.Tensor
        ``[B, K]``: the class id of every row (all classes, in the attribution's order).
    """

    distance: torch.Tensor
    gap: torch.Tensor
    gradient_gap: torch.Tensor
    reference: torch.Tensor
    nearest: torch.Tensor
    nearest_distance: torch.Tensor
    classes: torch.Tensor

    def summary(self) -> dict:
        """Mean and median distance to the nearest class, and the most frequent confusions.

        ``crossed`` counts samples already on the other side (negative distance: the label
        scores below another class); ``pairs`` lists the most frequent ``[reference, nearest,
        count]``.
        """
        near = self.nearest_distance.double()
        finite = near[torch.isfinite(near)]
        pairs = torch.stack([self.reference, self.nearest], 1).cpu()
        found, counts = pairs.unique(dim=0, return_counts=True)
        top = counts.argsort(descending=True, stable=True)[:10]
        return {
            "metric": "margins",
            "samples": int(near.numel()),
            "classes_per_sample": int(self.classes.shape[1]),
            "mean": _number(finite.mean()) if finite.numel() else None,
            "median": _number(finite.median()) if finite.numel() else None,
            "crossed": int((near < 0).sum()),
            "undefined": int((~torch.isfinite(near)).sum()),
            "pairs": [[*found[i].tolist(), int(counts[i])] for i in top.tolist()],
        }


def margins(
    model: Callable,
    x: torch.Tensor,
    attribution: Attribution,
    *,
    labels: torch.Tensor | None = None,
    output: str | Callable | None = None,
    **forward_kwargs: object,
) -> Margins:
    """First-order distance from every sample to the boundary with every competing class.

    For each sample, with ``c`` its predicted class (or its label), and every class ``k``:
    ``(f_c(x) - f_k(x)) / ||J_c(x) - J_k(x)||_2``, the distance along the straight line on
    which the linearised score difference falls fastest. Exact for a linear model; for others a
    first-order estimate (DeepFool's step). All from the attribution's gradients and outputs;
    the model is run once, to check that they belong to ``model`` and ``x``.

    Parameters
    ----------
    model, x, **forward_kwargs
        The model and inputs the attribution explains, as in :func:`saliency.class_jacobian`.
    attribution
        Plain input gradients of all classes: ``saliency.gradients(model, x)`` (no
        ``times_input``, no ``abs``, every class once per sample, in any order).
    labels
        ``[B]`` class ids to measure from instead of the predicted classes.
    output
        The ``output`` the attribution was computed with; needed only when that was a callable
        (its name alone is recorded).

    Returns
    -------
    Margins

    Examples
    --------
    >>> import torch, saliency
    >>> from saliency.audit import margins
    >>> model = torch.nn.Linear(2, 3)
    >>> x = torch.randn(5, 2)
    >>> m = margins(model, x, saliency.gradients(model, x))
    >>> bool((m.reference == model(x).argmax(1)).all()), bool((m.nearest_distance > 0).all())
    (True, True)
    """
    if not isinstance(attribution, Attribution):
        raise TypeError(
            f"attribution: expected a saliency.Attribution, got {type(attribution).__name__}"
        )
    _check_gradients(attribution, x)
    check_explains(model, x, attribution, _output(attribution, output), forward_kwargs)
    f = attribution.outputs
    ids = attribution.classes.to(f.device)
    n = f.shape[0]
    reference = _reference(labels, f)

    scores = f.gather(1, ids)  # [B, K], in the rows' order
    own = ids == reference[:, None]  # exactly one row per sample
    values = attribution.values.flatten(2)
    ref_row = own.to(torch.uint8).argmax(1).to(values.device)
    ref_grad = values[torch.arange(n, device=values.device), ref_row]  # [B, D]
    gradient_gap = (values - ref_grad[:, None]).norm(dim=-1).to(f.device)
    gap = f.gather(1, reference[:, None]) - scores
    distance = (gap / gradient_gap).masked_fill(own, math.inf)
    nearest_row = distance.nan_to_num(nan=math.inf).argmin(1)
    return Margins(
        distance=distance,
        gap=gap,
        gradient_gap=gradient_gap,
        reference=reference,
        nearest=ids.gather(1, nearest_row[:, None]).squeeze(1),
        nearest_distance=distance.gather(1, nearest_row[:, None]).squeeze(1),
        classes=attribution.classes,
    )


RECORDS = (
    MetricRecord(
        name="margins",
        function=margins,
        result=Margins,
        explanation="the first-order distance from each sample to the boundary with every "
        "other class, from the gradients of both classes",
        doc="audit/margins.md",
        columns={
            "distance": None,
            "gap": None,
            "gradient_gap": None,
            "reference": None,
            "nearest": None,
            "nearest_distance": None,
        },
        needs=("gradients",),
        rows="all",
        baseline="none: a property of the model near the sample",
    ),
)


def _check_gradients(attribution: Attribution, x: torch.Tensor) -> None:
    a = attribution
    if a.method != "gradients" or a.params.get("times_input") or a.params.get("abs"):
        what = a.method + "".join(f", {k}=True" for k in ("times_input", "abs") if a.params.get(k))
        raise ValueError(
            f"attribution: margins need plain input gradients (saliency.gradients without "
            f"times_input or abs), got {what}"
        )
    if a.params.get("layer") is not None:
        raise ValueError(
            f"attribution: margins need input gradients, got gradients at layer "
            f"{a.params['layer']!r}"
        )
    if a.contrasted:
        raise ValueError("attribution: margins need the gradients of classes, not of contrasts")
    if (
        not isinstance(x, torch.Tensor)
        or tuple(a.values.shape[2:]) != tuple(x.shape[1:])
        or (a.values.shape[0] != x.shape[0])
    ):
        raise ValueError(
            f"attribution: values {list(a.values.shape)} are not input gradients of x "
            f"{list(getattr(x, 'shape', []))} (expected [B, C, *x.shape[1:]])"
        )
    c = a.outputs.shape[1]
    every = torch.arange(c, device=a.classes.device)
    if a.classes.shape[1] != c or not bool((a.classes.sort(1).values == every).all()):
        raise ValueError(
            f"attribution: margins need every one of the model's {c} classes once per sample "
            f"(saliency.gradients(model, x)); got {a.classes.shape[1]} classes per sample"
        )


def _output(attribution: Attribution, output: str | Callable | None) -> str | Callable:
    recorded = attribution.params.get("output", "logits")
    if output is None:
        if recorded not in _OUTPUTS:
            raise ValueError(
                f"output: the attribution was computed with output={recorded!r}, a callable; "
                "pass the same callable as output="
            )
        return recorded
    if isinstance(output, str) and output != recorded:
        raise ValueError(f"output: {output!r} differs from the attribution's output={recorded!r}")
    return output


def _reference(labels: object, f: torch.Tensor) -> torch.Tensor:
    n, c = f.shape
    if labels is None:
        return f.argmax(1)
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.shape != (n,):
        raise ValueError(
            f"labels: expected [B] = [{n}] integer class ids, got {labels.dtype} "
            f"{list(labels.shape)}"
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= c):
        raise ValueError(
            f"labels: ids must lie in [0, {c}), got values from {int(labels.min())} to "
            f"{int(labels.max())}"
        )
    return labels.to(device=f.device, dtype=torch.long)


def _number(value: torch.Tensor) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None
