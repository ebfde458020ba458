"""``Attribution``: the result of every explanation method, with what produced it.

Pictures are drawn from these fields by :mod:`saliency.viz`; this module holds data only, so that
importing it pulls in no imaging code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save

from saliency._atomic import atomic_write
from saliency._tensorfile import damaged as damaged_file
from saliency._tensorfile import read, steady

__all__ = ["Attribution"]

_FORMAT = "saliency.Attribution"
# Parameters that hold one entry per sample (adaptive Integrated Gradients' points per row):
# selecting samples selects them too.
_PER_SAMPLE_PARAMS = frozenset({"steps_used"})
_VERSION = "1"


@dataclass(frozen=True, eq=False, repr=False)
class Attribution:
    """Per-sample, per-class attributions together with the classes, outputs and arguments.

    Attributes
    ----------
    values : torch.Tensor
        ``[B, K, *input_shape]``: row ``k`` of sample ``b`` explains class ``classes[b, k]``.
    classes : torch.Tensor
        ``[B, K]`` long: the class id of every row (for a contrast ``a - b``, the id ``a``).
    outputs : torch.Tensor
        ``[B, C]``: the model outputs at ``x`` after the ``output`` transform.
    method : str
        ``"gradients"``, ``"smoothgrad"`` or ``"integrated_gradients"``.
    params : dict
        The arguments that produced it, JSON-safe (tensors by shape, callables by name; ``seed``
        as drawn, ``strategy`` as chosen by the engine).
    delta : torch.Tensor or None
        ``[B, K]`` completeness gap ``sum(values) - (F(x) - F(baseline))`` of Integrated
        Gradients, else ``None``.
    negatives : torch.Tensor
        ``[B, K]`` long: the class subtracted in every row, ``-1`` where none: row ``k`` of
        sample ``b`` explains ``out[b, classes[b, k]] - out[b, negatives[b, k]]`` (a contrast,
        :func:`saliency.contrast`), or ``out[b, classes[b, k]]`` alone. Given as ``None``, every
        row is plain.

    Examples
    --------
    >>> import torch, saliency
    >>> model = torch.nn.Linear(4, 3)
    >>> a = saliency.gradients(model, torch.randn(2, 4))
    >>> a  # doctest: +ELLIPSIS
    Attribution(method='gradients', values=[2, 3, 4] float32, classes=[0, 1, 2] for every ...)
    >>> torch.equal(a.select(2), a.values[:, 2])
    True
    >>> torch.allclose(a.contrast(0, 1), (model.weight[0] - model.weight[1]).expand(2, 4))
    True
    >>> b = saliency.gradients(model, torch.randn(2, 4), saliency.contrast([0], [2]))
    >>> b.classes.tolist(), b.negatives.tolist()
    ([[0], [0]], [[2], [2]])
    """

    values: torch.Tensor
    classes: torch.Tensor
    outputs: torch.Tensor
    method: str
    params: dict = field(default_factory=dict)
    delta: torch.Tensor | None = None
    negatives: torch.Tensor | None = None

    def __post_init__(self) -> None:
        v, c, o = self.values, self.classes, self.outputs
        for name, t in (("values", v), ("classes", c), ("outputs", o)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if v.ndim < 3:
            raise ValueError(f"values: expected [B, K, *input], got shape {tuple(v.shape)}")
        if tuple(c.shape) != tuple(v.shape[:2]) or c.is_floating_point() or c.dtype == torch.bool:
            raise ValueError(
                f"classes: expected integer ids of shape {list(v.shape[:2])} (values' [B, K]), "
                f"got {c.dtype} {list(c.shape)}"
            )
        if o.ndim != 2 or o.shape[0] != v.shape[0]:
            raise ValueError(
                f"outputs: expected [B, C] with B={v.shape[0]}, got shape {tuple(o.shape)}"
            )
        if self.delta is not None and tuple(self.delta.shape) != tuple(v.shape[:2]):
            raise ValueError(
                f"delta: expected shape {list(v.shape[:2])} or None, got "
                f"{list(getattr(self.delta, 'shape', []))}"
            )
        if not isinstance(self.method, str):
            raise TypeError(f"method: expected a str, got {type(self.method).__name__}")
        try:
            params = json.loads(json.dumps(self.params))  # canonical: what load() gives back
        except (TypeError, ValueError) as e:
            raise TypeError(f"params: must be JSON-serialisable, got {self.params!r} ({e})") from e
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "classes", c.to(torch.long).contiguous())
        object.__setattr__(self, "negatives", self._checked_negatives())

    def _checked_negatives(self) -> torch.Tensor:
        c, n = self.classes, self.negatives
        if n is None:
            return torch.full_like(c, -1)
        if (
            not isinstance(n, torch.Tensor)
            or tuple(n.shape) != tuple(c.shape)
            or n.is_floating_point()
            or n.dtype == torch.bool
        ):
            got = f"{n.dtype} {list(n.shape)}" if isinstance(n, torch.Tensor) else type(n).__name__
            raise ValueError(
                f"negatives: expected integer ids of shape {list(c.shape)} (classes' [B, K]), "
                f"-1 where a row subtracts nothing, or None; got {got}"
            )
        n = n.to(device=c.device, dtype=torch.long).contiguous()
        c_out = self.outputs.shape[1]
        bad = (n < -1) | (n >= c_out) | (n == c)
        if bool(bad.any()):
            b, k = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"negatives: row {k} of sample {b} subtracts class {int(n[b, k])} from class "
                f"{int(c[b, k])}; expected -1 or another of the {c_out} classes"
            )
        return n

    @property
    def contrasted(self) -> bool:
        """Whether any row is a contrast (subtracts a class)."""
        return bool((self.negatives >= 0).any())

    # -- picking samples and classes -------------------------------------------------------
    def __len__(self) -> int:
        return self.values.shape[0]

    def __getitem__(self, samples: int | slice | Sequence[int] | torch.Tensor) -> Attribution:
        """The same attribution for some samples only (all their classes): ``a[:4]``, ``a[[0, 5]]``,
        ``a[mask]``; an int keeps a batch of one.

        Examples
        --------
        >>> import torch, saliency
        >>> a = saliency.gradients(torch.nn.Linear(3, 2), torch.randn(5, 3))
        >>> a[1:3].values.shape, len(a[torch.tensor([True, False, True, True, False])])
        (torch.Size([2, 2, 3]), 3)
        """
        if isinstance(samples, bool | np.bool_) or isinstance(samples, str):
            raise TypeError(f"samples: expected an int, a slice or indices, got {samples!r}")
        if isinstance(samples, torch.Tensor | np.ndarray) and samples.ndim == 0:
            samples = samples.item()
        if isinstance(samples, int | np.integer):
            samples = int(samples)
            samples = slice(samples, samples + 1 if samples != -1 else None)
        elif not isinstance(samples, slice):
            samples = torch.as_tensor(samples, device=self.values.device)
            if samples.dtype != torch.bool:
                samples = samples.long()
        delta = None if self.delta is None else self.delta[samples]
        negatives = self.negatives[
            samples.to(self.negatives.device) if isinstance(samples, torch.Tensor) else samples
        ]
        params = dict(self.params)
        for key in _PER_SAMPLE_PARAMS & params.keys():  # lists with one entry per sample
            params[key] = torch.as_tensor(params[key])[
                samples.cpu() if isinstance(samples, torch.Tensor) else samples
            ].tolist()
        return Attribution(
            self.values[samples],
            self.classes[samples],
            self.outputs[samples],
            self.method,
            params,
            delta,
            negatives,
        )

    def select(self, class_id: int) -> torch.Tensor:
        """The values of class ``class_id`` for every sample, ``[B, *input_shape]``.

        Every sample must have exactly one row for that class (``classes=None`` or a shared
        list guarantee it; ``top_k`` may not).
        """
        if isinstance(class_id, torch.Tensor) and class_id.numel() == 1:
            class_id = class_id.item()
        if isinstance(class_id, bool) or not isinstance(class_id, int):
            raise TypeError(f"class_id: expected an int, got {class_id!r}")
        hits = self.classes == class_id
        count = hits.sum(1)
        missing = (count == 0).nonzero().flatten().tolist()
        if missing:
            raise ValueError(
                f"class_id: class {class_id} was not computed for samples {_few(missing)}; "
                f"pass it in classes= (computed: {self._classes_text()})"
            )
        repeated = (count > 1).nonzero().flatten().tolist()
        if repeated:
            raise ValueError(
                f"class_id: class {class_id} has several rows for samples {_few(repeated)} "
                "(several contrasts against it?); index values[:, k] directly"
            )
        k = hits.to(torch.uint8).argmax(1)
        return self.values[torch.arange(len(k), device=k.device), k.to(self.values.device)]

    def contrast(self, a: int, b: int) -> torch.Tensor:
        """``select(a) - select(b)``: what pushes a sample towards ``a`` rather than ``b``.

        Both classes must have been computed. For gradients and Integrated Gradients this equals
        explaining ``saliency.contrast(a, b)`` directly (both are linear in the output).
        """
        return self.select(a) - self.select(b)

    def numpy(self) -> np.ndarray:
        """``values`` as a NumPy array on the CPU (bfloat16, which NumPy lacks, as float32)."""
        values = self.values.detach().cpu()
        return (values.float() if values.dtype == torch.bfloat16 else values).numpy()

    # -- storage ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write to ``path`` as safetensors with the method and params in its metadata.

        The file is written next to ``path`` and renamed into place, so a reader never sees
        half a file.
        """
        path = Path(path)
        if not path.parent.is_dir():
            raise FileNotFoundError(
                f"path: the folder {str(path.parent)!r} of {os.fspath(path)!r} does not exist "
                "(or is not a folder); create it first"
            )
        tensors = {
            "values": self.values,
            "classes": self.classes,
            "outputs": self.outputs,
            "negatives": self.negatives,
        }
        if self.delta is not None:
            tensors["delta"] = self.delta
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "method": self.method,
            "params": json.dumps(self.params),
        }
        with atomic_write(path) as f:
            f.write(steady(save(tensors, metadata=meta)))  # the same bytes every time

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Attribution:
        """Read a file written by :meth:`save` (tensors onto ``device``).

        Examples
        --------
        >>> import tempfile, os, torch, saliency
        >>> a = saliency.gradients(torch.nn.Linear(4, 3), torch.randn(2, 4), classes=[2])
        >>> path = os.path.join(tempfile.mkdtemp(), "grads.safetensors")
        >>> a.save(path)
        >>> b = saliency.Attribution.load(path)
        >>> torch.equal(a.values, b.values), b.method, b.params["classes"]
        (True, 'gradients', [2])
        """
        name = os.fspath(path)
        meta, tensors = read(name, "Attribution", _FORMAT, device)

        def damaged(why: str) -> ValueError:
            return damaged_file(name, "Attribution", why)

        if meta.get("version") != _VERSION:
            if str(meta.get("version", "")).isdigit() and int(meta["version"]) > int(_VERSION):
                raise ValueError(
                    f"path: {name!r} was saved by a newer saliency (Attribution format version "
                    f"{meta['version']}, this one reads {_VERSION}); upgrade saliency to read it"
                )
            raise damaged(f"format version {meta.get('version')!r}, expected {_VERSION!r}")
        missing = [k for k in ("values", "classes", "outputs") if k not in tensors]
        missing += [k for k in ("method", "params") if k not in meta]
        if missing:
            raise damaged(f"{', '.join(missing)} missing")
        try:
            params = json.loads(meta["params"])
        except ValueError as e:
            raise damaged(f"params are not JSON ({e})") from e
        if not isinstance(params, dict):
            raise damaged(f"params are a JSON {type(params).__name__}, not an object")
        try:
            negatives = tensors.get("negatives")
            if negatives is None:  # written before Attribution carried them: read from params
                negatives = _described_negatives(params, tensors["classes"])
            return cls(
                values=tensors["values"],
                classes=tensors["classes"],
                outputs=tensors["outputs"],
                method=meta["method"],
                params=params,
                delta=tensors.get("delta"),
                negatives=negatives,
            )
        except (TypeError, ValueError) as e:
            raise damaged(str(e)) from e

    # -- display ---------------------------------------------------------------------------
    # Jupyter draws _repr_png_; repr stays text about shapes.
    def _repr_png_(self) -> bytes | None:
        """A small grid of heat maps (or feature bars): ``attr`` alone in a cell draws it."""
        from saliency.viz.notebook import attribution_png  # viz sits above this module

        return attribution_png(self)

    def _repr_html_(self) -> str | None:
        """An interactive view (:func:`saliency.viz.view`): selectors, hover values, legend."""
        from saliency.viz.viewer import notebook_view  # viz sits above this module

        return notebook_view(self)

    def __repr__(self) -> str:
        v = self.values
        dtype = str(v.dtype).removeprefix("torch.")
        delta = "None"
        if self.delta is not None:
            delta = f"max |delta| {float(self.delta.abs().max()):.3g}"
        params = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        negatives = f"negatives={self._classes_text(self.negatives)}, " if self.contrasted else ""
        return (
            f"Attribution(method={self.method!r}, values={list(v.shape)} {dtype}, "
            f"classes={self._classes_text()}, {negatives}outputs={list(self.outputs.shape)}, "
            f"delta={delta}, params={{{params}}})"
        )

    def _classes_text(self, c: torch.Tensor | None = None) -> str:
        c = self.classes if c is None else c
        if bool((c == c[:1]).all()):
            return f"{_few(c[0].tolist())} for every sample"
        return f"per sample ({list(c.shape)}), first {_few(c[0].tolist())}"


def _described_negatives(params: dict, classes: torch.Tensor) -> torch.Tensor | None:
    """The subtracted classes of a file saved before ``negatives`` was stored: a contrast
    ``a - b`` is recorded in ``params["classes"]`` as ``{"contrast": [a, b]}``, the same pairs
    for every sample."""
    described = params.get("classes")
    if not (isinstance(described, dict) and "contrast" in described):
        return None
    a, b = (torch.as_tensor(ids, dtype=torch.long) for ids in described["contrast"])
    if a.shape != b.shape or a.shape[0] != classes.shape[1]:
        raise ValueError(
            f"params: the contrast {described['contrast']} does not fit classes of shape "
            f"{list(classes.shape)}"
        )
    if not bool((classes == a.to(classes.device)).all()):
        raise ValueError(
            f"params: the contrast {described['contrast']} names other classes than the file's "
            f"classes {_few(classes[0].tolist())}"
        )
    return b.to(classes.device).expand_as(classes)


def _few(items: list, n: int = 8) -> str:
    if len(items) <= n:
        return str(items)
    return "[" + ", ".join(str(i) for i in items[:n]) + ", ...]"
