"""Validate a call once at the door and turn it into a plain description the engine works with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import targets
from .budget import parse_memory

__all__ = ["Problem", "Shared", "make_problem"]

OUTPUTS = ("logits", "softmax", "log_softmax")


@dataclass(frozen=True)
class Shared:
    """A forward keyword argument that is the same for every sample, whatever its length.

    Tensors whose first dimension equals the batch size are taken as per-sample and follow the
    rows when a call is chunked; wrap a shared tensor that happens to have that length.

    Examples
    --------
    >>> import torch, saliency
    >>> from saliency.engine import Shared
    >>> lin = torch.nn.Linear(3, 2)
    >>> def model(x, scale):
    ...     return lin(x) * scale
    >>> x, scale = torch.randn(2, 3), torch.tensor([1.0, 10.0])  # per class, not per sample
    >>> saliency.class_jacobian(model, x, scale=Shared(scale)).shape
    torch.Size([2, 2, 3])
    """

    value: object


@dataclass(frozen=True)
class Problem:
    """One validated request: the model, the input, the transform, the targets and the budget."""

    model: Callable
    x: torch.Tensor
    classes: targets.Classes
    transform: Callable[[torch.Tensor], torch.Tensor]
    output: object  # the caller's ``output`` argument, used as part of cache keys
    strategy: str
    budget: int | None
    create_graph: bool
    kwargs: dict

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    def forward(self, x: torch.Tensor, rows: slice, repeats: int = 1) -> torch.Tensor:
        """Model outputs ``[n, C]`` after the transform, checked, for inputs ``x`` of ``rows``."""
        out = self.transform(self.scores(x, rows, repeats))
        if not isinstance(out, torch.Tensor) or out.shape != (x.shape[0], out.shape[-1]):
            raise ValueError(
                f"output: the transform must map [B, C] scores to [B, C], got "
                f"{getattr(out, 'shape', type(out).__name__)}"
            )
        _check_finite(out, rows, repeats)
        return out

    def scores(self, x: torch.Tensor, rows: slice, repeats: int = 1) -> torch.Tensor:
        """Raw model scores ``[n, C]`` (before the transform) for inputs ``x`` of ``rows``."""
        kwargs = {k: self._rows(v, rows, repeats) for k, v in self.kwargs.items()}
        return _as_scores(self.model(x, **kwargs), x.shape[0])

    def _rows(self, value: object, rows: slice, repeats: int) -> object:
        # Per-sample tensors (first dimension B) follow the rows; everything else passes through.
        if isinstance(value, Shared):
            return value.value
        if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == self.batch:
            value = value[rows]
            if repeats > 1:
                value = value.repeat(repeats, *([1] * (value.ndim - 1)))
        return value


def make_problem(
    model: Callable,
    x: torch.Tensor,
    classes: targets.Classes,
    output: str | Callable,
    strategy: str,
    max_memory: int | str | None,
    create_graph: bool,
    kwargs: dict,
    strategies: tuple[str, ...],
) -> Problem:
    """Check every argument and build the :class:`Problem`."""
    _check_model(model)
    _check_input(x)
    if strategy != "auto" and strategy not in strategies:
        raise ValueError(
            f"strategy: expected 'auto' or one of {list(strategies)}, got {strategy!r}"
        )
    if create_graph and strategy in ("forward", "head"):
        raise ValueError(
            f"strategy={strategy!r} does not support create_graph=True; "
            "use 'loop', 'vmap', 'replicate' or 'auto'"
        )
    if isinstance(classes, np.ndarray):  # ids ported from NumPy code
        classes = torch.as_tensor(classes)
    if not isinstance(create_graph, bool):
        raise TypeError(f"create_graph: expected True or False, got {create_graph!r}")
    return Problem(
        model=model,
        x=x,
        classes=classes,
        transform=_transform(output),
        output=output,
        strategy=strategy,
        budget=parse_memory(max_memory),
        create_graph=create_graph,
        kwargs=dict(kwargs),
    )


def _check_model(model: Callable) -> None:
    if not callable(model):
        raise TypeError(f"model: expected an nn.Module or a callable, got {type(model).__name__}")
    # A bound method (model.forward) or a partial carries the module it runs.
    owner = getattr(model, "__self__", None)
    if owner is None:
        owner = getattr(getattr(model, "func", None), "__self__", None)
    module = model if isinstance(model, nn.Module) else owner
    if isinstance(module, nn.Module):
        # Training mode, or no running statistics to use: either way batch statistics couple
        # the samples.
        coupled = [
            name
            for name, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and (m.training or m.running_mean is None)
        ]
        if coupled:
            raise ValueError(
                f"model: contains BatchNorm using batch statistics ({', '.join(coupled[:3])}): "
                "training mode, or track_running_stats=False. It couples the samples of a batch, "
                "so per-sample Jacobian rows would be wrong. Call model.eval() first (with "
                "running statistics)."
            )


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"x: expected a floating tensor (float32 or float64), got dtype {x.dtype}. Integer "
            "inputs such as token ids have no input gradient: embed them first and explain the "
            "embeddings (pass a model that takes the embedded tensor)."
        )
    if x.ndim < 2:
        raise ValueError(
            f"x: expected a batch of rank >= 2 ([B, D], [B, C, H, W], ...), got shape "
            f"{tuple(x.shape)}; add a batch dimension with x.unsqueeze(0)"
        )
    if x.shape[0] == 0:
        raise ValueError("x: the batch is empty (B = 0)")


def _transform(output: str | Callable) -> Callable[[torch.Tensor], torch.Tensor]:
    if callable(output):
        return output
    if output == "logits":
        return _identity
    if output == "softmax":
        return _softmax
    if output == "log_softmax":
        return _log_softmax
    raise ValueError(
        f"output: expected one of {list(OUTPUTS)} or a callable on the model output, got {output!r}"
    )


def _identity(out: torch.Tensor) -> torch.Tensor:
    return out


def _softmax(out: torch.Tensor) -> torch.Tensor:
    return torch.softmax(out, dim=1)


def _log_softmax(out: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(out, dim=1)


def _as_scores(raw: object, n: int) -> torch.Tensor:
    if not isinstance(raw, torch.Tensor):
        raise TypeError(
            f"model: must return a tensor of scores [B, C], got {type(raw).__name__}; wrap a model "
            "that returns a tuple or dict so that it returns the logits"
        )
    if not raw.is_floating_point():
        raise TypeError(f"model: output must be floating point, got dtype {raw.dtype}")
    if raw.ndim == 1 and raw.shape[0] == n:
        return raw.unsqueeze(1)
    if raw.ndim != 2 or raw.shape[0] != n:
        raise ValueError(
            f"model: output must have shape [B, C] = [{n}, C], got {tuple(raw.shape)}. For "
            "segmentation maps or other outputs of higher rank, wrap the model so that it returns "
            "one score per class, e.g. lambda x: model(x).mean(dim=(2, 3))"
        )
    return raw


def _check_finite(out: torch.Tensor, rows: slice, repeats: int) -> None:
    # One reduction on the fast path; the per-sample search runs only when something is off.
    if bool(torch.isfinite(out.detach().sum())):
        return
    bad = ~torch.isfinite(out).all(dim=1)
    if bool(bad.any()):
        n = out.shape[0] // repeats
        first = rows.start or 0
        samples = sorted({first + int(i) % n for i in bad.nonzero().flatten()})
        raise ValueError(
            f"model: output holds NaN or inf for samples {samples[:10]}"
            f"{' ...' if len(samples) > 10 else ''}; their gradients would be meaningless"
        )
