"""Norms: the size of every row's map, the simplest column of a data-set run.

No model call: the L1 and L2 norms of each (sample, class) row over all its values. They locate
the samples and classes whose maps are unusually strong or empty (a dead class, a saturated
sample), and they fit every method, whatever the shape of its maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attribution import Attribution
from .records import MetricRecord

__all__ = ["Norms", "norms"]


@dataclass(frozen=True, eq=False)
class Norms:
    """The L1 and L2 norm of every row of an Attribution.

    Attributes
    ----------
    l1, l2 : torch.Tensor
        ``[B, K]``: ``sum |values|`` and ``sqrt(sum values^2)`` over each row's values.
    classes : torch.Tensor
        ``[B, K]`` class ids of the rows.
    """

    l1: torch.Tensor
    l2: torch.Tensor
    classes: torch.Tensor


def norms(attribution: Attribution) -> Norms:
    """The L1 and L2 norms of every (sample, class) row's map.

    Examples
    --------
    >>> import torch, saliency
    >>> from saliency.audit import norms
    >>> a = saliency.gradients(torch.nn.Linear(4, 3), torch.randn(2, 4))
    >>> r = norms(a)
    >>> r.l1.shape, bool((r.l2 <= r.l1).all())
    (torch.Size([2, 3]), True)
    """
    if not isinstance(attribution, Attribution):
        raise TypeError(
            f"attribution: expected a saliency.Attribution, got {type(attribution).__name__}"
        )
    flat = attribution.values.detach().flatten(2)
    return Norms(flat.abs().sum(-1), flat.norm(dim=-1), attribution.classes)


RECORDS = (
    MetricRecord(
        name="norms",
        function=norms,
        result=Norms,
        explanation="the L1 and L2 norm of each map: where maps are unusually strong or empty",
        doc="audit/runs.md#methods-and-metrics",
        columns={"l1": None, "l2": None},
        baseline="none: a size, not a quality",
    ),
)
