"""The model parameter randomisation test (Adebayo et al. 2018), for every class at once.

An explanation that survives the destruction of the model it explains does not explain the model.
The test re-initialises the model's layers one by one, on a deep copy, recomputes the explanation
after each step with the same method, and measures how similar the maps stay.
"""

from __future__ import annotations

import copy
import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .. import targets
from .._random import generator as private_generator
from ..attribution import Attribution
from .records import MetricRecord
from .similarity import check_similarity, compare, prepare_maps

__all__ = ["RandomizationResult", "randomization_test"]

ORDERS = ("cascading", "independent")
# Step 0 recomputes the maps on an untouched copy; below this they are not reproducible.
_REPRODUCIBLE = 0.99


@dataclass(frozen=True, eq=False)
class RandomizationResult:
    """Similarity of the maps to the original ones after each randomisation step.

    Attributes
    ----------
    steps : tuple of str
        What had been randomised at each step: ``"original"`` (nothing, on an untouched copy),
        then the name of each layer (qualified module name; ``""`` is the model itself) in the
        order they were re-initialised. A step that changes the parameters of several modules
        (tied weights: GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``) names them all,
        joined by ``" + "``.
    similarity : dict of str to torch.Tensor
        For each similarity asked for (``"spearman"``, ``"ssim"``, ``"cosine"``), a
        ``[steps, B, K]`` tensor: row ``k`` of sample ``b`` compares the maps of class
        ``classes[b, k]``. Step 0 is 1 for a deterministic method. NaN where undefined (a
        constant map).
    classes : torch.Tensor
        ``[B, K]`` class ids, resolved once on the original model (``top_k`` does not move).
    order : str
        ``"cascading"`` or ``"independent"``.
    maps : torch.Tensor or None
        ``[steps, B, K, *map]``: the compared maps (channels summed, absolute values when
        ``abs``), kept when ``keep_maps=True``; step 0 is the original maps.
    seed : int or None
        The seed of the re-initialisation: the one given, or the one drawn for ``seed=None``
        (pass it back to reproduce the test).
    """

    steps: tuple[str, ...]
    similarity: dict[str, torch.Tensor]
    classes: torch.Tensor
    order: str
    maps: torch.Tensor | None = None
    seed: int | None = None

    def summary(self) -> dict:
        """Per step, the mean and median similarity over samples and classes, JSON-safe.

        ``final`` holds the means at the last step (everything randomised, when cascading);
        ``undefined`` counts the NaN rows per step.
        """
        out: dict = {
            "metric": "randomization_test",
            "order": self.order,
            "samples": int(self.classes.shape[0]),
            "classes_per_sample": int(self.classes.shape[1]),
            "steps": list(self.steps),
            "seed": self.seed,
        }
        for name, values in self.similarity.items():
            flat = values.flatten(1).double()
            out[name] = {
                "mean": [_number(row.nanmean()) for row in flat],
                "median": [_number(row.nanmedian()) for row in flat],
                "undefined": [int(row.isnan().sum()) for row in flat],
            }
        out["final"] = {name: out[name]["mean"][-1] for name in self.similarity}
        return out


def randomization_test(
    model: nn.Module,
    x: torch.Tensor,
    method: Callable[..., Attribution],
    *,
    classes: targets.Classes = None,
    order: str = "cascading",
    layers: Sequence[str | nn.Module] | None = None,
    similarity: str | Sequence[str] = ("spearman", "ssim"),
    abs: bool = True,
    sum_channels: bool = True,
    seed: int | None = None,
    reinit: Callable[[nn.Module], None] | None = None,
    keep_maps: bool = False,
    output: str | Callable | None = None,
    max_memory: int | str | None = None,
    **options: object,
) -> RandomizationResult:
    """Re-initialise the model's layers step by step and measure how similar the maps stay.

    Adebayo et al.'s model parameter randomisation test, for every class of the explanation at
    once. The caller's model is never touched: the layers are re-initialised on a deep copy.
    Step 0 recomputes the maps on the untouched copy (similarity 1 unless ``method`` is not
    deterministic, which warns); each later step re-initialises one more layer, from the output
    down (``"cascading"``: layers randomised so far stay so), or one layer alone with the
    others restored (``"independent"``), and recomputes the maps with the same ``method``.

    Parameters
    ----------
    model
        An ``nn.Module`` (parameters are what gets randomised).
    x, classes
        As in :func:`saliency.class_jacobian`. The classes are resolved once on the original
        model and kept for every step.
    method
        Any explanation method (:class:`saliency.methods.Method`), e.g. ``saliency.gradients``
        or ``functools.partial(saliency.smoothgrad, seed=0)``; give noisy methods a seed.
    order
        ``"cascading"`` (the default, the paper's main test) or ``"independent"``.
    layers
        ``None``: every module that owns parameters and runs in the forward pass, from the last
        to run to the first (found with forward hooks, not by registration order), each step
        re-initialising that module's own parameters. Modules that share a parameter (tied
        weights) are one step, at the place of the first of them to be reached, and the shared
        parameter is re-initialised once. Else module names or modules of ``model``, each
        re-initialised whole (submodules included), in the order given; a step also names the
        modules outside it whose parameters it changes through tied weights, and two listed
        layers may not share a parameter.
    similarity
        One or several of ``"spearman"`` (rank correlation over all map elements), ``"ssim"``
        (structural similarity of images ``[H, W]`` or signals ``[D]``) and ``"cosine"``.
        See :mod:`saliency.audit.similarity`.
    abs, sum_channels
        What is compared: image maps ``[C, H, W]`` have their channels summed (signed) when
        ``sum_channels``, then absolute values are taken when ``abs`` (as Quantus's MPRT).
    seed
        Seeds the re-initialisation (a private generator; the global RNG state is left as it
        was). ``None`` draws one, recorded in the result's ``seed``.
    reinit
        How a layer is re-initialised, called with the copy's module under a forked, seeded RNG.
        Default: the module's ``reset_parameters()`` (its own initialisation, as Quantus), and
        for parameters of modules without one, zero-mean normal noise with the parameter's root
        mean square as standard deviation. A step that changes nothing warns.
    keep_maps
        Keep the compared maps of every step in the result (for
        :func:`saliency.audit.randomization_figures.plot_randomization`).
    output, max_memory, **options
        Passed to ``method`` (``output`` and ``max_memory`` only when given, so that a
        ``functools.partial`` keeps its own); the rest are the method's options or the model's
        keyword arguments. A ``layer=`` module (here or bound in a partial) is passed by its
        dotted name, so that it points into the copy.

    Returns
    -------
    RandomizationResult
        ``similarity[name]`` is ``[steps, B, K]``; ``steps`` names what was randomised.

    Examples
    --------
    >>> import torch, saliency
    >>> from saliency.audit import randomization_test
    >>> model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    >>> r = randomization_test(model, torch.randn(4, 6), saliency.gradients, seed=0)
    >>> r.steps, tuple(r.similarity["spearman"].shape)
    (('original', '2', '0'), (3, 4, 3))
    >>> bool((r.similarity["spearman"][0] > 0.999).all())
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model: the randomisation test re-initialises parameters, so it needs an "
            f"nn.Module; got {type(model).__name__}"
        )
    if not callable(method):
        raise TypeError(f"method: expected an explanation method (callable), got {method!r}")
    if order not in ORDERS:
        raise ValueError(f"order: expected one of {list(ORDERS)}, got {order!r}")
    kinds = _similarities(similarity)
    for name, flag in (("abs", abs), ("sum_channels", sum_channels), ("keep_maps", keep_maps)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name}: expected True or False, got {flag!r}")
    if reinit is not None and not callable(reinit):
        raise TypeError(f"reinit: expected a callable taking a module, got {reinit!r}")
    if output is not None:
        options["output"] = output
    if max_memory is not None:
        options["max_memory"] = max_memory
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed: expected an int or None, got {seed!r}")
    generator, seed = private_generator(seed, torch.device("cpu"))
    chosen = _check_layers(model, layers)
    method, options = _by_name(method, options, model)

    original = _explain(method, model, x, classes, options)
    fixed = _fixed_classes(classes, original)
    if "strategy" not in options and isinstance(original.params.get("strategy"), str):
        # The engine already timed its strategies on this model; a copy would time them again.
        options["strategy"] = original.params["strategy"]
    raw_ndim = original.values.ndim - 2
    base, map_ndim = prepare_maps(original.values, raw_ndim, abs=abs, sum_channels=sum_channels)

    twin = copy.deepcopy(model)
    ran = _running_order(twin)
    with ran:
        first = _explain(method, twin, x, fixed, options)
    steps = _tied(twin, chosen) if chosen is not None else _grouped(twin, ran.top_down())
    if not steps:
        raise ValueError(
            "model: no module with parameters ran in the forward pass, so nothing can be randomised"
        )

    scores: dict[str, list[torch.Tensor]] = {kind: [] for kind in kinds}
    kept: list[torch.Tensor] = []

    def record(attribution: Attribution) -> None:
        _check_rows(attribution, original)
        maps, _ = prepare_maps(attribution.values, raw_ndim, abs=abs, sum_channels=sum_channels)
        for kind in kinds:
            scores[kind].append(compare(base, maps, kind, map_ndim))
        if keep_maps:
            kept.append(maps.cpu())

    record(first)
    _warn_if_not_reproducible(scores, method)
    saved: list[tuple[nn.Module, dict]] = []
    for step in steps:
        changed = [twin.get_submodule(name) for name in step.changed]
        if order == "independent":
            for module, state in saved:
                module.load_state_dict(state)
            saved = [(m, copy.deepcopy(m.state_dict())) for m in changed]
        # A found layer is a module that owns parameters: its own only (its children are steps of
        # their own). A layer the caller names is re-initialised whole.
        params = _unique(p for m in changed for p in m.parameters())
        before = [p.detach().clone() for p in params]
        modules = [twin.get_submodule(name) for name in step.reset]
        _randomise(modules, generator, reinit, whole=chosen is not None)
        if all(torch.equal(a, p) for a, p in zip(before, params, strict=True)):
            warnings.warn(
                f"randomization_test: re-initialising layer {step.name!r} left its parameters "
                "unchanged (a constant initialisation?), so its step randomises nothing",
                stacklevel=2,
            )
        record(_explain(method, twin, x, fixed, options))

    return RandomizationResult(
        steps=("original", *(step.name for step in steps)),
        similarity={kind: torch.stack(rows) for kind, rows in scores.items()},
        classes=original.classes,
        order=order,
        maps=torch.stack(kept) if keep_maps else None,
        seed=seed,
    )


# -- arguments ---------------------------------------------------------------------------------
RECORDS = (
    MetricRecord(
        name="randomization_test",
        function=randomization_test,
        result=RandomizationResult,
        explanation="how similar the maps stay as the model's layers are re-initialised: maps "
        "that do not change do not depend on what the model learnt",
        doc="audit/randomization.md",
        columns={},
        not_in_runs="randomises the model layer by layer, a check of the model and method "
        "rather than of each sample; run it once on a batch (saliency.audit.randomization_test)",
    ),
)


def _similarities(value: object) -> tuple[str, ...]:
    kinds = (value,) if isinstance(value, str) else value
    if not isinstance(kinds, Sequence) or not kinds:
        raise ValueError(
            f"similarity: expected a name or a non-empty sequence of names, got {value!r}"
        )
    kinds = tuple(check_similarity(kind) for kind in kinds)
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"similarity: names repeat in {value!r}")
    return kinds


def _check_layers(model: nn.Module, layers: object) -> list[str] | None:
    """Module names for ``layers`` (None: found later, from the forward pass)."""
    if layers is None:
        return None
    if isinstance(layers, str | nn.Module) or not isinstance(layers, Sequence) or not layers:
        raise TypeError(
            f"layers: expected None or a non-empty list of module names or modules, got {layers!r}"
        )
    names_of = {id(m): name for name, m in model.named_modules()}
    names = []
    for layer in layers:
        if isinstance(layer, nn.Module):
            if id(layer) not in names_of:
                raise ValueError(f"layers: {type(layer).__name__} module is not part of the model")
            name = names_of[id(layer)]
        elif isinstance(layer, str):
            try:
                model.get_submodule(layer)
            except AttributeError:
                known = [n for n, m in model.named_modules() if _owns_parameters(m)]
                raise ValueError(
                    f"layers: the model has no module {layer!r}; modules with parameters: {known}"
                ) from None
            name = layer
        else:
            raise TypeError(f"layers: expected module names or modules, got {layer!r}")
        if next(model.get_submodule(name).parameters(), None) is None:
            raise ValueError(f"layers: module {name!r} has no parameters to randomise")
        names.append(name)
    if len(set(names)) != len(names):
        raise ValueError(f"layers: a module is listed twice in {names}")
    return names


# -- running the method ------------------------------------------------------------------------
def _by_name(method, options: dict, model: nn.Module) -> tuple[Callable, dict]:
    """A ``layer=`` module of the caller's model as its dotted name, valid in the copy too.

    A module object would keep pointing into the caller's model, which the copy never runs.
    """
    names_of = {id(m): name for name, m in model.named_modules()}

    def name(layer: nn.Module) -> str:
        if id(layer) not in names_of:
            raise ValueError(f"layer: the {type(layer).__name__} module is not part of the model")
        return names_of[id(layer)]

    if isinstance(options.get("layer"), nn.Module):
        options = {**options, "layer": name(options["layer"])}
    bound = getattr(method, "keywords", None)
    if isinstance(method, functools.partial) and isinstance(bound.get("layer"), nn.Module):
        method = functools.partial(
            method.func, *method.args, **{**bound, "layer": name(bound["layer"])}
        )
    return method, options


def _explain(method, model, x, classes, options) -> Attribution:
    result = method(model, x, classes, **options)
    if not isinstance(result, Attribution):
        raise TypeError(
            f"method: expected it to return a saliency.Attribution, got {type(result).__name__}"
        )
    if not bool(torch.isfinite(result.values).all()):
        bad = (~torch.isfinite(result.values.flatten(1))).any(1).nonzero().flatten().tolist()
        raise ValueError(f"method: returned NaN or inf attributions for samples {bad[:8]}")
    return result


def _fixed_classes(classes: targets.Classes, original: Attribution) -> targets.Classes:
    """The classes of the original maps, as ids that cannot move when the model changes."""
    if targets.resolve(classes, original.outputs).neg is not None:
        return classes  # a contrast names its pairs already
    return original.classes


def _check_rows(attribution: Attribution, original: Attribution) -> None:
    if attribution.values.shape != original.values.shape or not torch.equal(
        attribution.classes, original.classes
    ):
        raise ValueError(
            "method: returned maps of other shapes or classes for the randomised model "
            f"({list(attribution.values.shape)} vs {list(original.values.shape)}); it must "
            "honour the classes it is given"
        )


def _warn_if_not_reproducible(scores: dict[str, list[torch.Tensor]], method) -> None:
    for kind, rows in scores.items():
        worst = rows[0].nan_to_num(nan=1.0).min()
        if float(worst) < _REPRODUCIBLE:
            fn = getattr(method, "func", method)  # functools.partial: name the function
            name = getattr(fn, "__name__", type(fn).__name__)
            warnings.warn(
                f"randomization_test: recomputing the maps on an untouched copy of the model "
                f"gives {kind} {float(worst):.3f} (expected 1): {name} is not deterministic, so "
                "part of every step's drop is noise. Give it a seed, e.g. "
                "functools.partial(saliency.smoothgrad, seed=0).",
                stacklevel=3,
            )
            return


# -- layers ------------------------------------------------------------------------------------
def _owns_parameters(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


class _running_order:
    """Records, with forward hooks, the order in which parameter-owning modules first run."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.names: dict[str, None] = {}
        self.handles: list = []

    def __enter__(self) -> _running_order:
        for name, module in self.model.named_modules():
            if _owns_parameters(module):
                self.handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()

    def _hook(self, name: str):
        def hook(module, args, out) -> None:
            self.names.setdefault(name, None)

        return hook

    def top_down(self) -> list[str]:
        return list(reversed(self.names))


def _randomise(
    modules: list[nn.Module], generator: torch.Generator, reinit, *, whole: bool
) -> None:
    """Re-initialise ``modules`` (one step) under one seed; a parameter they share (tied
    weights) keeps the value the first of them gave it, so it is re-initialised once."""
    seed = int(torch.randint(2**62, (1,), generator=generator).item())
    devices = sorted(
        {p.device.index or 0 for m in modules for p in m.parameters() if p.device.type == "cuda"}
    )
    done: set[int] = set()  # parameters this step already re-initialised
    # reset_parameters draws from the global RNG: fork it so the caller's stream is untouched.
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        for module in modules:
            if reinit is not None:
                _once(module, module.parameters(), done, lambda m=module: reinit(m))
                continue
            for sub in module.modules() if whole else (module,):
                if _owns_parameters(sub):
                    _once(sub, sub.parameters(recurse=False), done, lambda m=sub: _reset(m))


def _once(module: nn.Module, params, done: set[int], reset: Callable[[], None]) -> None:
    """``reset()``, then put back the parameters of ``module`` that ``done`` already holds."""
    params = list(params)
    if params and all(id(p) in done for p in params):
        return
    kept = [(p, p.detach().clone()) for p in params if id(p) in done]
    reset()
    for p, value in kept:
        p.copy_(value)
    done.update(id(p) for p in params)


def _reset(module: nn.Module) -> None:
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        reset()
        return
    for p in module.parameters(recurse=False):
        # Unknown initialisation: random values of the trained values' magnitude (RMS),
        # so that a constant parameter (a learned scale) is randomised too.
        rms = float(p.detach().double().pow(2).mean().sqrt())
        p.normal_(0.0, rms if math.isfinite(rms) else 1.0)


# -- tied parameters ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Step:
    """One randomisation step: the modules re-initialised (``reset``, in order) and every module
    whose parameters that changes (``changed``, which ``name`` lists)."""

    reset: tuple[str, ...]
    changed: tuple[str, ...]

    @property
    def name(self) -> str:
        return " + ".join(self.changed)


def _owners(model: nn.Module) -> dict[int, list[str]]:
    """For each parameter, the modules that hold it directly, in registration order."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(name)
    return owners


def _grouped(model: nn.Module, found: list[str]) -> list[_Step]:
    """The found layers (top down) as steps, modules sharing a parameter merged into the step of
    the first of them, with tied modules that did not run named after those that did."""
    owners = _owners(model)
    steps, placed = [], set()
    for name in found:
        if name in placed:
            continue
        group, todo = [name], [name]
        while todo:  # every module reachable through shared parameters
            for p in model.get_submodule(todo.pop()).parameters(recurse=False):
                for other in owners[id(p)]:
                    if other not in group:
                        group.append(other)
                        todo.append(other)
        rank = {n: i for i, n in enumerate(found)}
        group.sort(key=lambda n: rank.get(n, len(rank)))
        placed.update(group)
        steps.append(_Step(tuple(group), tuple(group)))
    return steps


def _tied(model: nn.Module, chosen: list[str]) -> list[_Step]:
    """The caller's layers as steps, each naming the modules outside it that its parameters are
    tied to; two layers sharing a parameter are refused (the second would re-initialise it
    again; nested layers, which share parameters without a tie, stay allowed)."""
    owners = _owners(model)
    steps, claimed = [], {}
    for name in chosen:
        params = list(model.get_submodule(name).parameters())
        inside = {n for n, _ in model.get_submodule(name).named_modules(prefix=name)}
        changed = [name]
        for p in params:
            if id(p) in claimed and len(owners[id(p)]) > 1:
                raise ValueError(
                    f"layers: {claimed[id(p)]!r} and {name!r} share a parameter (tied weights), "
                    "so the first step already re-initialises both; list only one of them"
                )
            claimed[id(p)] = name
            changed += [o for o in owners[id(p)] if o not in inside and o not in changed]
        steps.append(_Step((name,), tuple(changed)))
    return steps


def _unique(params) -> list[torch.Tensor]:
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _number(value: torch.Tensor) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None
