"""What the perturbation metrics track: each Attribution row's score, on batches of perturbed rows.

A row ``k`` of sample ``b`` explains ``out[b, ids[b, k]]`` (minus ``out[b, neg[b, k]]`` for a
contrast row, as :attr:`saliency.Attribution.negatives` records) after the ``output``
transform. The metrics run many perturbed copies of the samples through the model; these
helpers read the rows off an Attribution, line up per-sample forward arguments with the copies,
size the chunks under a memory budget, and seed private generators.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .._random import generator
from ..attribution import Attribution
from ..engine import outputs

__all__ = [
    "Tracked",
    "check_explains",
    "check_inputs",
    "generator",
    "number",
    "rows_per_chunk",
    "take",
    "tracked",
]

_OUTPUTS = ("logits", "softmax", "log_softmax")


class Tracked:
    """The score of every Attribution row, evaluated on any batch of copies of the samples."""

    def __init__(
        self,
        model: Callable,
        n: int,
        ids: torch.Tensor,
        neg: torch.Tensor | None,
        output: str | Callable,
        forward_kwargs: dict,
    ) -> None:
        self.model = model
        self.n = n
        self.ids = ids  # [B, K]
        self.neg = neg  # [B, K], -1 where a row subtracts nothing; or None: no row does
        self.output = output
        self.forward_kwargs = forward_kwargs

    def outputs(self, x: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        """The outputs ``[R, C]`` of copies ``x`` ``[R, ...]`` of the samples ``samples``."""
        kwargs = {k: take(v, samples, self.n) for k, v in self.forward_kwargs.items()}
        return outputs(self.model, x, output=self.output, **kwargs)

    def scores(
        self, out: torch.Tensor, samples: torch.Tensor, rows: torch.Tensor | None
    ) -> torch.Tensor:
        """Row scores from outputs ``out`` ``[R, C]``.

        ``rows`` ``[R]`` picks one row per output (its class index ``k``); ``None`` takes all
        ``K`` rows of each output's sample, giving ``[R, K]``.
        """
        samples = samples.to(self.ids.device)
        if rows is None:
            ids = self.ids[samples]
            neg = None if self.neg is None else self.neg[samples]
        else:
            rows = rows.to(self.ids.device)
            ids = self.ids[samples, rows][:, None]
            neg = None if self.neg is None else self.neg[samples, rows][:, None]
        ids = ids.to(out.device)
        picked = out.gather(1, ids)
        if neg is not None:
            neg = neg.to(out.device)
            subtracted = out.gather(1, neg.clamp(min=0))
            picked = picked - torch.where(neg >= 0, subtracted, torch.zeros_like(subtracted))
        return picked if rows is None else picked[:, 0]

    def is_top(
        self, out: torch.Tensor, samples: torch.Tensor, rows: torch.Tensor | None
    ) -> torch.Tensor:
        """Whether each row's class is the top output, shaped like :meth:`scores`."""
        samples = samples.to(self.ids.device)
        ids = self.ids[samples] if rows is None else self.ids[samples, rows.to(self.ids.device)]
        top = out.argmax(1).to(ids.device)
        return ids == (top[:, None] if rows is None else top)


def tracked(
    model: Callable,
    x: torch.Tensor,
    attribution: Attribution,
    output: str | Callable | None,
    forward_kwargs: dict,
) -> Tracked:
    """The rows of ``attribution`` and the output transform they are tracked under.

    ``output=None`` tracks what the attribution explained (its recorded ``output``); a callable
    recorded by name only has to be passed again.
    """
    neg = attribution.negatives if attribution.contrasted else None
    return Tracked(
        model, x.shape[0], attribution.classes, neg, _output(attribution, output), forward_kwargs
    )


def check_inputs(x: object, attribution: object) -> None:
    """``x`` a floating batch and ``attribution`` an Attribution of input-shaped maps of it."""
    if not isinstance(attribution, Attribution):
        raise TypeError(
            f"attribution: expected a saliency.Attribution, got {type(attribution).__name__}"
        )
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
        what = f"{x.dtype} {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"x: expected a floating tensor [B, ...] of inputs, got {what}")
    v = attribution.values
    if v.shape[0] != x.shape[0] or tuple(v.shape[2:]) != tuple(x.shape[1:]):
        raise ValueError(
            f"attribution: values {list(v.shape)} do not explain x {list(x.shape)}; expected "
            f"[{x.shape[0]}, K, {', '.join(map(str, x.shape[1:]))}] (maps of a layer cannot be "
            "perturbed in input space)"
        )
    if not bool(torch.isfinite(v).all()):
        bad = (~torch.isfinite(v.flatten(1))).any(1).nonzero().flatten().tolist()
        raise ValueError(f"attribution: NaN or inf values for samples {bad[:8]}")
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x.flatten(1))).any(1).nonzero().flatten().tolist()
        raise ValueError(f"x: NaN or inf values for samples {bad[:8]}")


def check_explains(
    model: Callable,
    x: torch.Tensor,
    attribution: Attribution,
    output: str | Callable | None,
    forward_kwargs: dict,
) -> None:
    """Refuse ``attribution`` unless the outputs it recorded are the model's at ``x``.

    Every metric that takes a model, inputs and an Attribution calls this first: an attribution
    of other inputs (``x`` reordered: ``deletion(model, x[perm], a)``), of another model or under
    another ``output`` would otherwise be measured as if it explained these. The outputs are
    compared under the ``output`` the attribution recorded (a callable, recorded by name only,
    is ``output``), within rounding.
    """
    recorded = attribution.params.get("output", "logits")
    if recorded in _OUTPUTS:
        transform = recorded
    elif output is not None and not isinstance(output, str):
        transform = output
    else:
        raise ValueError(
            f"output: the attribution was computed with output={recorded!r}, a callable recorded "
            "by name only; pass the same callable as output="
        )
    seen = outputs(model, x, output=transform, **forward_kwargs)
    then = attribution.outputs.detach().to(seen)
    if seen.shape != then.shape:
        raise ValueError(
            f"attribution: it recorded outputs {list(then.shape)} but the model gives "
            f"{list(seen.shape)} at x; it was computed for another model, other inputs or "
            "another output"
        )
    scale = float(seen.abs().max()) + 1.0 if seen.numel() else 1.0
    close = (seen - then).abs() <= 1e-4 * then.abs() + 1e-5 * scale
    differ = (~close.all(1)).nonzero().flatten().tolist()
    if differ:
        shown = ", ".join(map(str, differ[:8])) + (", ..." if len(differ) > 8 else "")
        raise ValueError(
            f"attribution: the outputs it recorded differ from the model's at x for samples "
            f"[{shown}] of {len(seen)}: it explains other inputs (x reordered or changed since?), "
            "another model or another output; compute it for this x and model"
        )


def rows_per_chunk(
    track: Tracked,
    x: torch.Tensor,
    budget: int | None,
    *,
    default: int,
    fixed: int = 0,
    per_row_extra: int = 0,
    what: str = "one perturbed input",
) -> int:
    """How many perturbed copies of a sample fit in one forward pass under ``budget`` bytes.

    A copy costs its input, a few working copies of it, and the model's activations for one
    sample (the outputs of its modules, summed: an upper bound for a forward pass without
    gradients). ``fixed`` bytes are held regardless; ``None`` means no budget: ``default``.
    """
    if budget is None:
        return max(1, default)
    row = x[0].numel() * x.element_size()
    per_row = 4 * row + per_row_extra + _activation_bytes(track, x[:1])
    rows = (budget - fixed) // per_row
    if rows < 1:
        raise MemoryError(
            f"max_memory: {budget} bytes cannot hold {what} (about {per_row + fixed} bytes "
            "with the model's activations for one sample)"
        )
    return int(rows)


def _activation_bytes(track: Tracked, x1: torch.Tensor) -> int:
    model = track.model
    modules = list(model.modules()) if isinstance(model, nn.Module) else []
    if not modules:
        return 4 * x1.numel() * x1.element_size()
    total = 0

    def count(_module, _inputs, out) -> None:
        nonlocal total
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()

    handles = [m.register_forward_hook(count) for m in modules if not list(m.children())]
    try:
        track.outputs(x1, torch.zeros(1, dtype=torch.long))
    finally:
        for h in handles:
            h.remove()
    return max(total, x1.numel() * x1.element_size())


def take(value: object, samples: torch.Tensor, n: int) -> object:
    """A forward argument for copies of ``samples``: per-sample tensors (first dimension ``n``)
    follow their sample, anything else passes unchanged."""
    if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == n:
        return value.index_select(0, samples.to(value.device))
    return value


def _output(attribution: Attribution, output: str | Callable | None) -> str | Callable:
    if output is not None:
        if isinstance(output, str) and output not in _OUTPUTS:
            raise ValueError(
                f"output: expected one of {list(_OUTPUTS)} or a callable, got {output!r}"
            )
        if not isinstance(output, str) and not callable(output):
            raise TypeError(
                f"output: expected one of {list(_OUTPUTS)} or a callable, got {output!r}"
            )
        return output
    recorded = attribution.params.get("output", "logits")
    if recorded not in _OUTPUTS:
        raise ValueError(
            f"output: the attribution was computed with output={recorded!r}, a callable recorded "
            "by name only; pass the same callable as output="
        )
    return recorded


def number(value: torch.Tensor) -> float | None:
    """A JSON-safe float: NaN and infinities become None."""
    v = float(value)
    return v if math.isfinite(v) else None
