"""Validate a call once at the door and turn it into a plain description the engine works with."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import targets
from .budget import parse_memory
from .identity import owners

__all__ = [
    "Problem",
    "Shared",
    "call_output",
    "is_per_sample",
    "make_problem",
    "read_scores",
    "sample_rows",
    "scores_of",
]

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
    """One validated request: the model, the input, the output, the targets and the budget.

    ``x`` is what the model is called with; the engine differentiates ``x`` itself, or the output
    of ``layer`` (replaced by ``layer_value`` when given).
    """

    model: Callable
    x: torch.Tensor
    classes: targets.Classes
    output: object  # the caller's ``output`` argument
    transform: Callable | None  # built-in transform of extracted scores; None for a callable
    strategy: str
    budget: int | None
    create_graph: bool
    kwargs: dict
    layer: nn.Module | None
    layer_name: str | None
    layer_value: torch.Tensor | None
    allow_random: bool
    owners: tuple[nn.Module, ...]

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    def finish(
        self, raw: object, n: int, kwargs: dict | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(scores [n, C], pre)`` from the model's raw output: the checked, transformed scores,
        and the tensor ``output`` was applied to (``None`` when that was not a tensor).
        ``kwargs`` are the forward arguments of these rows, for a callable that reads some."""
        if self.transform is None:
            out = call_output(self.output, raw, kwargs or {})
            pre = raw if isinstance(raw, torch.Tensor) else None
            return _checked(out, n, "output: the callable's result"), pre
        pre = _checked(scores_of(raw), n, "model: output")
        return self.transform(pre), pre

    def kwargs_for(self, rows: slice, repeats: int = 1) -> dict:
        """Forward kwargs for ``repeats`` point-major copies of ``rows``."""
        return {k: sample_rows(v, self.batch, rows, repeats) for k, v in self.kwargs.items()}


def is_per_sample(value: object, batch: int) -> bool:
    """Whether a forward argument holds one entry per sample: a tensor whose first dimension is
    the batch size (not wrapped in :class:`Shared`)."""
    return isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == batch


def sample_rows(
    value: object, batch: int, samples: slice | torch.Tensor, repeats: int = 1
) -> object:
    """A forward argument for ``repeats`` point-major copies of ``samples`` of a ``batch``.

    The one rule for every per-sample argument (attention masks, token type ids, ...), wherever a
    batch is chunked, noised or put on a path: a per-sample tensor is sliced to ``samples`` and
    repeated; a :class:`Shared` value is unwrapped; anything else passes through.

    Examples
    --------
    >>> import torch
    >>> from saliency.engine import Shared, sample_rows
    >>> mask = torch.tensor([[1, 1], [1, 0], [1, 1]])
    >>> sample_rows(mask, 3, slice(1, 2), repeats=2).tolist()
    [[1, 0], [1, 0]]
    >>> sample_rows(Shared(mask), 3, slice(1, 2)).shape  # the same for every sample
    torch.Size([3, 2])
    """
    if isinstance(value, Shared):
        return value.value
    if is_per_sample(value, batch):
        value = value[samples]
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
    *,
    layer: nn.Module | str | None = None,
    layer_value: torch.Tensor | None = None,
    allow_random: bool = False,
    differentiate: bool = True,
) -> Problem:
    """Check every argument and build the :class:`Problem` (``differentiate=False``: only the
    model's outputs are wanted, so ``x`` may be any tensor the model takes)."""
    if not callable(model):
        raise TypeError(f"model: expected an nn.Module or a callable, got {type(model).__name__}")
    found = owners(model)
    module, name = _layer(layer, found)
    _check_input(x, layered=module is not None or not differentiate)
    if strategy != "auto" and strategy not in strategies:
        raise ValueError(
            f"strategy: expected 'auto' or one of {list(strategies)}, got {strategy!r}"
        )
    for flag, value in (("create_graph", create_graph), ("allow_random", allow_random)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag}: expected True or False, got {value!r}")
    if isinstance(classes, np.ndarray):  # ids ported from NumPy code
        classes = torch.as_tensor(classes)
    if layer_value is not None:
        layer_value = _check_layer_value(layer_value, module, x)
    if x.is_inference():  # made under torch.inference_mode: a normal copy can join a graph
        with torch.inference_mode(False):
            x = x.clone()
    return Problem(
        model=model,
        x=x,
        classes=classes,
        output=output,
        transform=_transform(output),
        strategy=strategy,
        budget=parse_memory(max_memory),
        create_graph=create_graph,
        kwargs=dict(kwargs),
        layer=module,
        layer_name=name,
        layer_value=layer_value,
        allow_random=allow_random,
        owners=found,
    )


def _layer(layer: nn.Module | str | None, found: tuple[nn.Module, ...]):
    module, name = _find_layer(layer, found)
    if isinstance(module, torch.jit.ScriptModule):
        raise ValueError(
            f"layer: {name} is a TorchScript module, whose output no Python hook can replace; "
            "explain the Python model (before torch.jit.script), or pick a Python module of the "
            "model"
        )
    return module, name


def _find_layer(layer: nn.Module | str | None, found: tuple[nn.Module, ...]):
    if layer is None:
        return None, None
    if isinstance(layer, nn.Module):
        for root in found:
            for name, m in root.named_modules():
                if m is layer:
                    return layer, name or type(layer).__name__
        return layer, type(layer).__name__  # seen to run (or not) on the first forward pass
    if isinstance(layer, str):
        if not found:
            raise ValueError(
                f"layer: the name {layer!r} needs a model that is an nn.Module (or a function "
                "or method of one); pass the module object itself"
            )
        for root in found:
            named = dict(root.named_modules())
            if layer in named:
                return named[layer], layer
        some = [n for n, _ in found[0].named_modules() if n][:8]
        raise ValueError(
            f"layer: the model has no module named {layer!r}; some of its modules: {some}"
        )
    raise TypeError(
        f"layer: expected an nn.Module of the model or its dotted name, got {type(layer).__name__}"
    )


def _check_input(x: torch.Tensor, *, layered: bool) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if not layered and not x.is_floating_point():
        raise TypeError(
            f"x: expected a floating tensor (float32 or float64), got dtype {x.dtype}. Integer "
            "inputs such as token ids have no input gradient: pass layer= the embedding module "
            "(e.g. layer=model.embeddings.word_embeddings) to explain its output instead"
        )
    if x.ndim < 1 or (not layered and x.ndim < 2):
        raise ValueError(
            f"x: expected a batch of rank >= 2 ([B, D], [B, C, H, W], ...), got shape "
            f"{tuple(x.shape)}; add a batch dimension with x.unsqueeze(0)"
        )
    if x.shape[0] == 0:
        raise ValueError("x: the batch is empty (B = 0)")
    if x.device.type == "meta":
        raise ValueError("x: is on the meta device and holds no values")


def _check_layer_value(value: torch.Tensor, module: nn.Module | None, x: torch.Tensor):
    if module is None:
        raise ValueError("layer_value: only meaningful together with layer=")
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise TypeError(
            f"layer_value: expected a floating tensor [B, *layer_output], got "
            f"{getattr(value, 'dtype', type(value).__name__)}"
        )
    if value.ndim < 1 or value.shape[0] != x.shape[0]:
        raise ValueError(
            f"layer_value: expected one value per sample of x ([{x.shape[0]}, ...]), got shape "
            f"{tuple(value.shape)}"
        )
    return value


def _transform(output: str | Callable) -> Callable | None:
    if callable(output):
        return None
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


def scores_of(raw: object) -> torch.Tensor:
    """The score tensor in a model's output: a tensor, a ``logits`` field (HuggingFace
    ``ModelOutput``), a mapping's ``"logits"``, or the first element of a tuple or list."""
    if isinstance(raw, torch.Tensor):
        return raw
    logits = getattr(raw, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(raw, Mapping) and isinstance(raw.get("logits"), torch.Tensor):
        return raw["logits"]
    if isinstance(raw, tuple | list) and raw and isinstance(raw[0], torch.Tensor):
        return raw[0]
    raise TypeError(
        f"model: returned {type(raw).__name__}; expected a tensor of scores [B, C], an object "
        "or mapping with a 'logits' tensor, or a tuple or list whose first element is the "
        "scores. Pass output= a callable that picks the scores, e.g. output=lambda o: o['y']"
    )


def read_scores(raw: object, output: str | Callable = "logits", **forward_kwargs) -> torch.Tensor:
    """The scores ``[B, C]`` in a model's raw output, after ``output``, as the engine reads them.

    A built-in ``output`` is applied to :func:`scores_of` the raw output; a callable ``output``
    receives the raw output itself (and the ``forward_kwargs`` it :func:`reads <call_output>`).
    ``[B]`` counts as one class.

    Examples
    --------
    >>> import torch
    >>> from saliency.engine import read_scores
    >>> read_scores({"logits": torch.zeros(2, 3)}, "softmax")
    tensor([[0.3333, 0.3333, 0.3333],
            [0.3333, 0.3333, 0.3333]])
    """
    transform = _transform(output)
    if transform is None:
        out = call_output(output, raw, forward_kwargs)
        return out.unsqueeze(1) if out.ndim == 1 else out
    out = scores_of(raw)
    return transform(out.unsqueeze(1) if out.ndim == 1 else out)


def call_output(output: Callable, raw: object, kwargs: dict) -> torch.Tensor:
    """A callable ``output`` applied to a model's raw output.

    A callable with a ``reads`` attribute (a tuple of forward-argument names, such as
    :func:`saliency.next_token`'s ``("attention_mask",)``) also receives those of the call's
    forward arguments that were given, sliced to the rows of this pass like the model's own, so
    that per-sample arguments line up with the output however the engine chunks the batch.
    """
    wanted = getattr(output, "reads", ())
    given = {name: _plain(kwargs[name]) for name in wanted if name in kwargs}
    out = output(raw, **given) if given else output(raw)
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"output: the callable must return a tensor of scores [B, C], got {type(out).__name__}"
        )
    return out


def _plain(value: object) -> object:
    return value.value if isinstance(value, Shared) else value


def _checked(out: torch.Tensor, n: int, what: str) -> torch.Tensor:
    if not out.is_floating_point():
        raise TypeError(
            f"{what} must be floating point, got dtype {out.dtype}; an integer output (argmax, "
            "labels) has no gradient"
        )
    if out.ndim == 1 and out.shape[0] == n:
        out = out.unsqueeze(1)
    if out.ndim != 2 or out.shape[0] != n:
        raise ValueError(
            f"{what} must have shape [B, C] = [{n}, C], got {tuple(out.shape)}. For "
            "segmentation maps or other outputs of higher rank, reduce them to one score per "
            "class, e.g. output=lambda o: o.mean(dim=(2, 3))"
        )
    if out.shape[1] == 0:
        raise ValueError(f"{what} has no classes (shape {tuple(out.shape)}): nothing to explain")
    return out


def check_finite(out: torch.Tensor, rows: slice, repeats: int) -> None:
    """Refuse non-finite outputs, naming the samples (one reduction on the fast path)."""
    if math.isfinite(out.detach().sum().item()):
        return
    bad = ~torch.isfinite(out.detach()).all(dim=1)
    if bool(bad.any()):
        n = out.shape[0] // repeats
        first = rows.start or 0
        samples = sorted({first + int(i) % n for i in bad.nonzero().flatten()})
        raise ValueError(
            f"model: output holds NaN or inf for samples {samples[:10]}"
            f"{' ...' if len(samples) > 10 else ''}; their gradients would be meaningless"
        )
