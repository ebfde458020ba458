"""The one contract every explanation method follows, stated once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from .. import targets
from ..attribution import Attribution

__all__ = ["Method"]


@runtime_checkable
class Method(Protocol):
    """An explanation method: ``method(model, x, classes=None, **options) -> Attribution``.

    ``model``, ``x`` and ``classes`` mean what they mean for :func:`saliency.class_jacobian`; the
    result holds one row per sample and requested class. Methods accept the shared options
    ``output``, ``max_memory`` and ``strategy`` (where an engine runs underneath) and pass the
    rest to the model. Wrappers such as :func:`saliency.smoothgrad` and every audit take any
    callable that follows this contract: the methods of this package,
    :func:`functools.partial` of them, and Captum's methods through :func:`saliency.from_captum`.

    Examples
    --------
    >>> import saliency
    >>> from saliency.methods import Method
    >>> isinstance(saliency.gradients, Method)
    True
    """

    def __call__(
        self,
        model: Callable,
        x: torch.Tensor,
        classes: targets.Classes = None,
        **options: object,
    ) -> Attribution: ...
