"""Captum's attribution methods behind the method contract: every requested class, one call each.

Captum explains one target per sample per call. This module resolves the classes once at ``x``,
runs the Captum method once per class column on a small module that reads the model's scores and
applies ``output``, and stacks the results into an :class:`~saliency.Attribution`.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from .. import targets
from ..attribution import Attribution
from ..engine import Shared, outputs, read_scores
from ._request import describe

__all__ = ["from_captum"]

# Captum announces, on every call, that it set requires_grad on the (cloned) inputs or that it
# hooks the model's activations for the duration of the call; neither is news to the caller.
_NOTICES = (
    r"Input Tensor \d+ did not already require gradients",
    r"Input Tensor \d+ has a dtype of",
    r"Setting backward hooks on ReLU activations",
    r"Setting forward, backward hooks and attributes on non-linear",
)
# Set by from_captum itself: the input, the target and the model's extra arguments.
_OWN = ("inputs", "target", "additional_forward_args")


def from_captum(
    method: type,
    /,
    model: Callable,
    x: torch.Tensor,
    classes: targets.Classes = None,
    *,
    output: str | Callable = "logits",
    layer: nn.Module | str | None = None,
    max_memory: int | str | None = None,
    init_kwargs: Mapping[str, object] | None = None,
    strategy: str | None = None,
    **options: object,
) -> Attribution:
    """Run a Captum attribution class for every requested class and return an Attribution.

    Costs one Captum call per class (``K`` calls, each with its own forward and backward passes,
    or its own perturbations); this package's own methods compute all classes in one pass.
    Nothing is changed on ``model`` or ``x``: Captum gets a detached copy of ``x``.

    Parameters
    ----------
    method
        A Captum attribution *class*, e.g. ``captum.attr.GuidedBackprop``, ``DeepLift``,
        ``Occlusion``, ``IntegratedGradients``, ``LayerGradCam``, given by position (so that
        ``method=``, Captum's integration rule, passes through ``**options``). It is built as
        ``method(scores, **init_kwargs)`` (layer methods: ``method(scores, layer,
        **init_kwargs)``), where ``scores`` is an ``nn.Module`` holding ``model`` as a submodule,
        so that hook-based methods reach the model's own layers.
    model, x, classes, output
        As in :func:`saliency.class_jacobian`, except that ``model`` may also return a tuple or
        list (the first element is used), a mapping (its ``"logits"``) or an object with a
        ``.logits`` tensor (HuggingFace outputs), and ``x`` may hold integer token ids for
        layer methods and perturbation methods (``Occlusion``, ``FeatureAblation``, ...). A
        contrast explains the score difference itself (Captum's method run on ``F_a - F_b``).
    layer
        For layer methods (those whose constructor takes ``layer``): a module of ``model`` or its
        dotted name, e.g. ``"features.3"``.
    max_memory
        Must stay ``None``: what Captum holds cannot be estimated from outside. Bound Captum's
        own batches instead (``internal_batch_size=``, ``perturbations_per_eval=``).
    init_kwargs
        Further constructor arguments, e.g. ``{"multiply_by_inputs": False}``.
    strategy
        Ignored (no engine runs underneath); accepted so that wrappers such as
        :func:`saliency.smoothgrad` can pass it.
    **options
        Arguments that ``method.attribute`` takes by name (``baselines``, ``n_steps``,
        ``sliding_window_shapes``, ``internal_batch_size``, ``relu_attributions``,
        ``return_convergence_delta``, ...) go to every Captum call; every other keyword goes to the
        model, as forward kwargs do for every method here (Captum's ``additional_forward_args``).
        Per-sample tensors are fine: every call sees the whole batch.

    Returns
    -------
    Attribution
        ``values`` ``[B, K, *shape]`` with ``shape`` the shape of Captum's result per sample:
        ``x.shape[1:]`` for input methods, the layer's for layer methods; a result with nothing
        per sample (``[B]``) is stored as ``[B, K, 1]``. ``method`` is ``"captum.<ClassName>"``;
        ``params`` records the layer and Captum's arguments. ``delta`` ``[B, K]`` holds Captum's
        convergence delta when ``return_convergence_delta=True`` was passed, else None.

    Examples
    --------
    >>> import torch, saliency
    >>> from captum.attr import GuidedBackprop
    >>> model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> a = saliency.from_captum(GuidedBackprop, model, torch.randn(4, 5), saliency.top_k(2))
    >>> a.values.shape, a.method
    (torch.Size([4, 2, 5]), 'captum.GuidedBackprop')
    """
    init_names, attribute_names = _check_method(method)
    name = method.__name__
    init_kwargs = _check_init_kwargs(init_kwargs, init_names)
    if max_memory is not None:
        raise ValueError(
            f"max_memory: from_captum cannot bound the memory Captum's {name} uses, got "
            f"{max_memory!r}; pass None and bound Captum's own batches (internal_batch_size= for "
            "integrated gradients, perturbations_per_eval= for occlusion and ablation), or "
            "explain fewer samples per call"
        )
    own = sorted(set(options) & set(_OWN))
    if own:
        raise TypeError(
            f"{own[0]}: set by from_captum (x is the input, classes the targets); pass the "
            "model's extra arguments by name, e.g. mask=mask"
        )
    attribute_kwargs = {k: v for k, v in options.items() if k in attribute_names}
    forward_kwargs = {k: v for k, v in options.items() if k not in attribute_names}

    owner = _owner(model)
    if init_names[0] == "model" and owner is None:
        raise TypeError(
            f"model: {name} works through hooks on the model's modules, so it needs the "
            f"nn.Module (or a functools.partial or bound method of one), got "
            f"{type(model).__name__}; pass the module itself (tuple, mapping and .logits outputs "
            "are read here)"
        )
    module, layer_name = _layer(layer, owner, "layer" in init_names, name)
    if isinstance(x, tuple | list):
        raise TypeError(f"x: expected one tensor, got a {type(x).__name__} of inputs")

    names = tuple(forward_kwargs)
    scores = _Scores(model, owner, names, output)
    # Token ids have no input gradient, but a layer's output has one and perturbations need none.
    ids_allowed = layer is not None or _perturbs(method)
    at_x = _outputs_at(scores, x, forward_kwargs, ids_allowed)
    if isinstance(classes, np.ndarray):  # ids ported from NumPy code
        classes = torch.as_tensor(classes)
    rows = targets.resolve(classes, at_x)
    k = rows.ids.shape[1]
    if rows.neg is None:
        columns = [rows.ids[:, j] for j in range(k)]
    else:
        # A contrast is the same pair for every sample: explain the difference column itself.
        scores = _Scores(model, owner, names, output, (rows.ids[0], rows.neg[0]))
        columns = list(range(k))

    args = (scores, module) if module is not None else (scores,)
    explainer = method(*args, **init_kwargs)
    want_delta = bool(attribute_kwargs.get("return_convergence_delta", False))
    # Captum repeats every tensor argument with the batch; one that is not per-sample (first
    # dimension other than B) is shared by every row, as for the engine, so it travels wrapped.
    extra = (
        tuple(
            Shared(v)
            if isinstance(v, torch.Tensor) and (v.ndim == 0 or v.shape[0] != x.shape[0])
            else v
            for v in forward_kwargs.values()
        )
        or None
    )
    values = delta = None
    with warnings.catch_warnings():
        for notice in _NOTICES:
            warnings.filterwarnings("ignore", message=notice, category=UserWarning)
        for j, target in enumerate(columns):
            result = explainer.attribute(
                x.detach().clone(),
                target=target,
                additional_forward_args=extra,
                **attribute_kwargs,
            )
            attr, gap = _unpack(result, want_delta, x.shape[0], name)
            if values is None:
                values = attr.new_empty(x.shape[0], k, *attr.shape[1:])
                delta = attr.new_empty(x.shape[0], k) if want_delta else None
            elif attr.shape[1:] != values.shape[2:]:
                raise ValueError(
                    f"method: {name} returned shape {tuple(attr.shape)} for class column {j}, "
                    f"but {tuple(values[:, 0].shape)} for the first"
                )
            values[:, j] = attr
            if want_delta:
                delta[:, j] = gap
    params = {
        "layer": layer_name,
        "init_kwargs": {key: describe(v) for key, v in init_kwargs.items()},
        "attribute_kwargs": {key: describe(v) for key, v in attribute_kwargs.items()},
        "classes": describe(classes),
        "output": describe(output),
    }
    return Attribution(values, rows.ids, at_x, f"captum.{name}", params, delta, negatives=rows.neg)


class _Scores(nn.Module):
    """The model's scores ``[n, C]`` after ``output`` (or contrast columns ``[n, K]``).

    The model is a registered submodule when it is (or runs) an ``nn.Module``, so Captum's hooks
    reach its layers. Extra positional arguments are the model's forward kwargs in order: that is
    how Captum's ``additional_forward_args`` carries them, expanded with the batch.
    """

    def __init__(
        self,
        model: Callable,
        owner: nn.Module | None,
        names: tuple[str, ...],
        output: str | Callable,
        pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if owner is not None:
            self.model = owner
        self.call = None if isinstance(model, nn.Module) else model
        self.names, self.output, self.pairs = names, output, pairs
        # Mirror the caller's mode without touching it (train()/eval() would recurse into it).
        self.training = owner.training if owner is not None else False

    def forward(self, inputs: torch.Tensor, *values: object, **kwargs: object) -> torch.Tensor:
        if values:  # from Captum: the forward kwargs in order, expanded with the batch
            kwargs.update(zip(self.names, values, strict=True))
        kwargs = {k: v.value if isinstance(v, Shared) else v for k, v in kwargs.items()}
        run = self.model if self.call is None else self.call
        out = read_scores(run(inputs, **kwargs), self.output, **kwargs)
        if self.pairs is not None:
            a, b = self.pairs
            out = out[:, a] - out[:, b]
        return out


def _outputs_at(
    scores: _Scores, x: torch.Tensor, forward_kwargs: dict, ids_allowed: bool
) -> torch.Tensor:
    """The transformed outputs ``[B, C]`` at ``x``, through the engine's checks."""
    if isinstance(x, torch.Tensor) and not x.is_floating_point() and not ids_allowed:
        raise TypeError(
            f"x: expected a floating tensor for a gradient method, got dtype {x.dtype}; token ids "
            "need a layer method (e.g. LayerIntegratedGradients with layer=) or a perturbation "
            "method (Occlusion, FeatureAblation)"
        )
    try:
        return outputs(scores, x, **forward_kwargs)
    except TypeError as e:
        if forward_kwargs and "unexpected keyword" in str(e):
            raise TypeError(
                f"{e}; from_captum passes to the model every keyword that Captum's attribute "
                f"does not take (here {sorted(forward_kwargs)})"
            ) from e
        raise


def _check_method(method: object) -> tuple[list[str], set[str]]:
    """The constructor's and ``attribute``'s parameter names of a usable Captum class."""
    from captum.attr import Attribution as CaptumAttribution
    from captum.attr import NoiseTunnel

    if isinstance(method, CaptumAttribution):
        raise TypeError(
            f"method: expected a Captum attribution class, got an instance of "
            f"{type(method).__name__}; pass the class itself (constructor arguments go in "
            "init_kwargs=), so that it is built on the model's scores after output="
        )
    if not (isinstance(method, type) and issubclass(method, CaptumAttribution)):
        raise TypeError(
            f"method: expected a Captum attribution class such as captum.attr.GuidedBackprop, "
            f"got {method!r}"
        )
    if issubclass(method, NoiseTunnel):
        raise TypeError(
            "method: NoiseTunnel wraps another method; use saliency.smoothgrad(model, x, "
            "method=functools.partial(saliency.from_captum, <CaptumClass>)) instead"
        )
    init = list(inspect.signature(method.__init__).parameters)[1:]
    attribute = inspect.signature(method.attribute).parameters
    if not init or init[0] not in ("forward_func", "model") or "target" not in attribute:
        raise TypeError(
            f"method: {method.__name__} does not explain a class of a model's output (its "
            "constructor takes no model, or its attribute() no target); expected a method such "
            "as captum.attr.IntegratedGradients or LayerGradCam"
        )
    plain = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return init, {n for n, p in attribute.items() if p.kind in plain and n != "self"}


def _perturbs(method: type) -> bool:
    """Whether ``method`` perturbs the input instead of differentiating it (Occlusion, ...)."""
    from captum.attr import PerturbationAttribution

    return issubclass(method, PerturbationAttribution)


def _check_init_kwargs(init_kwargs: object, init_names: list[str]) -> dict:
    if init_kwargs is None:
        return {}
    if not isinstance(init_kwargs, Mapping):
        raise TypeError(
            f"init_kwargs: expected a dict of constructor arguments, got "
            f"{type(init_kwargs).__name__}"
        )
    taken = sorted(set(init_kwargs) & {init_names[0], "layer"})
    if taken:
        raise TypeError(
            f"init_kwargs: {taken[0]!r} is set by from_captum (pass model and layer= directly)"
        )
    return dict(init_kwargs)


def _owner(model: object) -> nn.Module | None:
    """The ``nn.Module`` that ``model`` runs: itself, a bound method's or a partial's module."""
    func = getattr(model, "func", None)  # functools.partial
    bound = getattr(model, "__self__", None)
    for candidate in (model, bound, func, getattr(func, "__self__", None)):
        if isinstance(candidate, nn.Module):
            return candidate
    if not callable(model):
        raise TypeError(f"model: expected an nn.Module or a callable, got {type(model).__name__}")
    return None


def _layer(
    layer: object, owner: nn.Module | None, needed: bool, name: str
) -> tuple[nn.Module | None, str | None]:
    """The layer module and the name recorded for it."""
    if layer is None:
        if needed:
            raise ValueError(
                f"layer: {name} attributes to a layer; pass layer= (a module of the model or its "
                "dotted name, e.g. 'features.3')"
            )
        return None, None
    if not needed:
        raise ValueError(
            f"layer: {name} attributes to the input and takes no layer, got {layer!r}; use a "
            "layer method such as captum.attr.LayerIntegratedGradients"
        )
    if isinstance(layer, str):
        if owner is None:
            raise TypeError(
                f"layer: a dotted name ({layer!r}) needs model to be an nn.Module; pass the "
                "layer module itself"
            )
        try:
            return owner.get_submodule(layer), layer
        except AttributeError:
            known = [n for n, _ in owner.named_modules() if n][:12]
            raise ValueError(
                f"layer: the model has no module named {layer!r}; its modules include {known}"
            ) from None
    if not isinstance(layer, nn.Module):
        raise TypeError(
            f"layer: expected an nn.Module of the model or its dotted name, got "
            f"{type(layer).__name__}"
        )
    if owner is None:  # a plain function: nothing to look the layer up in
        return layer, type(layer).__name__
    found = next((n for n, m in owner.named_modules() if m is layer), None)
    if found is None:
        raise ValueError(
            f"layer: the {type(layer).__name__} given is not a module of the model; pass one of "
            "its modules (model.named_modules() lists them)"
        )
    return layer, found or type(layer).__name__


def _unpack(
    result: object, want_delta: bool, batch: int, name: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Captum's result for one class as ``[B, *shape]`` (``[B, 1]`` for ``[B]``), and its delta."""
    gap = None
    if want_delta:
        result, gap = result
        gap = gap.detach().reshape(-1)
        if gap.numel() != batch:
            raise ValueError(
                f"return_convergence_delta: {name} returned {gap.numel()} deltas for {batch} "
                "samples; only one delta per sample can be stored"
            )
    if isinstance(result, tuple | list):
        if len(result) != 1:
            raise ValueError(
                f"method: {name} returned {len(result)} attributions (several inputs or layers); "
                "from_captum explains one input or one layer"
            )
        result = result[0]
    if not isinstance(result, torch.Tensor) or result.ndim == 0 or result.shape[0] != batch:
        raise ValueError(
            f"method: {name} returned {getattr(result, 'shape', type(result).__name__)}; expected "
            f"one attribution per sample (first dimension {batch})"
        )
    result = result.detach()
    return (result.unsqueeze(1) if result.ndim == 1 else result), gap
