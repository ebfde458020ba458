"""Which output rows to differentiate: every class, a shared list, per-sample ids, top-k, contrasts.

Every target becomes a cotangent row on the model output: row ``k`` of sample ``b`` is
``out[b, ids[b, k]] - out[b, neg[b, k]]`` (``neg`` is empty for plain classes). The engine only ever
sees that pair of ``[B, K]`` index tensors, so selection, top-k and contrasts share one mechanism.
This module sits beneath the engine: it is the vocabulary the engine speaks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Classes", "Rows", "contrast", "resolve", "top_k"]


@dataclass(frozen=True)
class TopK:
    """The ``k`` highest outputs of each sample (see :func:`top_k`)."""

    k: int


@dataclass(frozen=True)
class Contrast:
    """Differences ``out[a] - out[b]`` of pairs of classes (see :func:`contrast`)."""

    a: tuple[int, ...]
    b: tuple[int, ...]


Classes = None | int | Sequence[int] | torch.Tensor | TopK | Contrast


def top_k(k: int) -> TopK:
    """Select the ``k`` highest-scoring classes of each sample, highest first.

    Examples
    --------
    >>> import torch, saliency
    >>> model = torch.nn.Linear(4, 6)
    >>> saliency.class_jacobian(model, torch.randn(2, 4), saliency.top_k(3)).shape
    torch.Size([2, 3, 4])
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k: k must be a positive int, got {k!r}")
    return TopK(k)


def contrast(a: int | Sequence[int], b: int | Sequence[int]) -> Contrast:
    """Differentiate the difference ``out[a] - out[b]`` (one row per pair).

    ``a`` and ``b`` are class ids, or equally long sequences of them; the rows keep ``a`` as their
    class id.

    Examples
    --------
    >>> import torch, saliency
    >>> model = torch.nn.Linear(4, 3, bias=False)
    >>> J = saliency.class_jacobian(model, torch.randn(1, 4), saliency.contrast(0, 2))
    >>> torch.allclose(J[0, 0], model.weight[0] - model.weight[2])
    True
    """
    pa, pb = _as_id_tuple(a, "contrast(a)"), _as_id_tuple(b, "contrast(b)")
    if len(pa) != len(pb):
        raise ValueError(f"contrast: a and b must have equal lengths, got {len(pa)} and {len(pb)}")
    return Contrast(pa, pb)


@dataclass(frozen=True)
class Rows:
    """Resolved targets: row ``k`` of sample ``b`` is ``out[b, ids[b, k]] - out[b, neg[b, k]]``."""

    ids: torch.Tensor  # [B, K] long
    neg: torch.Tensor | None  # [B, K] long, or None for plain classes
    first: int | None = None  # when ids[b, k] == first + k for every sample: every class in order

    def select(self, out: torch.Tensor) -> torch.Tensor:
        """The selected scores ``[B, K]`` of outputs ``out`` ``[B, C]``."""
        s = out.gather(1, self.ids)
        return s if self.neg is None else s - out.gather(1, self.neg)

    def cotangents(self, out: torch.Tensor) -> torch.Tensor:
        """One cotangent row per target, ``[K, B, C]``: ``d select(out)[:, k] / d out``.

        Differentiating ``out`` against these rows directly keeps a gather out of every backward
        pass.
        """
        n, c = out.shape
        k = self.ids.shape[1]
        if self.first is not None and self.neg is None:  # consecutive classes: rows of eye(C)
            return _eye_rows(self.first, k, n, c, out.dtype, out.device)
        cot = out.new_zeros(k, n, c)
        cot.scatter_(2, self.ids.T.unsqueeze(2), 1.0)
        if self.neg is not None:
            cot.scatter_add_(2, self.neg.T.unsqueeze(2), out.new_full((k, n, 1), -1.0))
        return cot

    def __getitem__(self, index: slice) -> Rows:
        neg = None if self.neg is None else self.neg[index]
        return Rows(self.ids[index], neg, self.first)

    def columns(self, index: slice) -> Rows:
        """The rows restricted to a slice of the ``K`` targets."""
        neg = None if self.neg is None else self.neg[:, index]
        first = None
        if self.first is not None and (index.step or 1) == 1:
            first = self.first + range(self.ids.shape[1])[index].start
        return Rows(self.ids[:, index], neg, first)


_EYE_CACHE: dict[tuple, torch.Tensor] = {}
_EYE_CACHE_BYTES = 4 * 2**20  # only small blocks are kept: building a large one costs little


def _eye_rows(first, k, n, c, dtype, device) -> torch.Tensor:
    """``[k, n, c]`` one-hot rows ``first .. first + k - 1`` of ``eye(c)`` for ``n`` samples,
    materialised (autograd's backward runs slower on stride-0 gradients) and, when small, kept:
    a call of the same shape reuses them (autograd never writes into its gradients)."""
    key = (first, k, n, c, dtype, device)
    rows = _EYE_CACHE.get(key)
    if rows is None:
        eye = torch.eye(c, dtype=dtype, device=device)
        rows = eye[first : first + k].unsqueeze(1).expand(k, n, c).contiguous()
        if rows.numel() * rows.element_size() <= _EYE_CACHE_BYTES:
            if len(_EYE_CACHE) >= 16:
                _EYE_CACHE.pop(next(iter(_EYE_CACHE)))
            _EYE_CACHE[key] = rows
    return rows


def is_per_sample(classes: Classes) -> bool:
    """Whether ``classes`` is a ``[B, K]`` tensor of ids, one row per sample."""
    return isinstance(classes, torch.Tensor) and classes.ndim == 2


def count(classes: Classes, n_outputs: int, batch: int) -> int:
    """The number ``K`` of rows that ``classes`` asks for, before any output is seen."""
    if classes is None:
        return n_outputs
    if isinstance(classes, TopK):
        return classes.k
    if isinstance(classes, Contrast):
        return len(classes.a)
    if is_per_sample(classes):
        return classes.shape[1]
    return len(_as_id_tuple(classes, "classes"))


def resolve(classes: Classes, out: torch.Tensor) -> Rows:
    """Turn any accepted ``classes`` form into :class:`Rows` for outputs ``out`` ``[B, C]``."""
    n, c = out.shape
    device = out.device
    if classes is None:
        ids = torch.arange(c, device=device).expand(n, c)
        return Rows(ids, None, 0)
    if isinstance(classes, TopK):
        if classes.k > c:
            raise ValueError(
                f"classes=top_k({classes.k}) asks for more classes than the {c} outputs"
            )
        return Rows(out.detach().topk(classes.k, dim=1).indices, None)
    if isinstance(classes, Contrast):
        a, b = _shared(classes.a, n, c, device), _shared(classes.b, n, c, device)
        return Rows(a, b)
    if is_per_sample(classes):
        return Rows(_per_sample(classes, n, c, device), None)
    ids = _as_id_tuple(classes, "classes")
    _refuse_labels(classes, ids, n)
    return Rows(_shared(ids, n, c, device), None)


def _refuse_labels(classes: object, ids: tuple[int, ...], n: int) -> None:
    """A shared class list that is really per-sample labels (Captum's ``target=y``) is refused:
    it would explain every label for every sample."""
    spelling = (
        "For each sample's own class (Captum's target=y), pass a [B, 1] tensor: "
        "torch.as_tensor(y).unsqueeze(1)"
    )
    if len(set(ids)) < len(ids):
        raise ValueError(
            f"classes: {_few(list(ids))} repeats class ids, but a list of classes is shared by "
            f"every sample (each class once).{' ' + spelling if len(ids) == n else ''}"
        )
    if n > 1 and len(ids) == n and isinstance(classes, torch.Tensor | np.ndarray):
        raise ValueError(
            f"classes: a 1-D tensor as long as the batch (B = {n}) looks like per-sample labels, "
            f"but a 1-D tensor is a list of classes shared by every sample. {spelling}; for the "
            "same classes for every sample, pass a list (ids.tolist())"
        )


def _few(items: list, n: int = 8) -> str:
    return str(items) if len(items) <= n else "[" + ", ".join(map(str, items[:n])) + ", ...]"


def _shared(ids: tuple[int, ...], n: int, c: int, device: torch.device) -> torch.Tensor:
    bad = [i for i in ids if not 0 <= i < c]
    if bad:
        raise ValueError(
            f"classes: ids {bad} are out of range [0, {c}) for a model with {c} outputs"
        )
    t = torch.tensor(ids, dtype=torch.long, device=device)
    return t.expand(n, len(ids))


def _per_sample(ids: torch.Tensor, n: int, c: int, device: torch.device) -> torch.Tensor:
    if ids.dtype in (torch.bool,) or ids.is_floating_point() or ids.is_complex():
        raise TypeError(f"classes: a [B, K] tensor must hold integer ids, got dtype {ids.dtype}")
    if ids.shape[0] != n:
        raise ValueError(
            f"classes: a per-sample id tensor must have shape [B, K] with B={n}, "
            f"got {tuple(ids.shape)}"
        )
    if ids.shape[1] == 0:
        raise ValueError("classes: asks for no class at all (K = 0)")
    if ids.numel() and (ids.min() < 0 or ids.max() >= c):
        raise ValueError(
            f"classes: ids must lie in [0, {c}) for a model with {c} outputs, "
            f"got values from {int(ids.min())} to {int(ids.max())}"
        )
    return ids.to(device=device, dtype=torch.long)


def _as_id_tuple(value: object, name: str) -> tuple[int, ...]:
    if isinstance(value, np.ndarray | np.integer):  # ids ported from NumPy code
        value = torch.as_tensor(value)
    if isinstance(value, torch.Tensor):
        if value.ndim > 1:
            raise ValueError(f"{name}: expected an int or a 1-D tensor of ids, got {value.ndim}-D")
        if value.is_floating_point() or value.dtype == torch.bool:
            raise TypeError(f"{name}: ids must be integers, got a tensor of dtype {value.dtype}")
        value = value.reshape(-1).tolist()
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected class ids, got the bool {value!r}")
    if isinstance(value, int):
        return (value,)
    if isinstance(value, Sequence) and not isinstance(value, str):
        if not value:
            raise ValueError(f"{name}: asks for no class at all (an empty list)")
        out = []
        for v in value:
            if isinstance(v, bool | np.bool_) or not isinstance(v, int | np.integer):
                raise TypeError(f"{name}: every id must be an int, got {v!r}")
            out.append(int(v))
        return tuple(out)
    raise TypeError(
        f"{name}: expected None, an int, a list or 1-D tensor of ids, a [B, K] id tensor, "
        f"saliency.top_k(k) or saliency.contrast(a, b); got {type(value).__name__}"
    )
