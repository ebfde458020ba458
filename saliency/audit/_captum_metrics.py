"""Captum's infidelity and max-sensitivity, for every class of an Attribution in one pass.

``captum.metrics.infidelity`` and ``captum.metrics.sensitivity_max`` take one target per call,
so ``K`` classes cost ``K`` calls, each running every perturbation through the model again. Here
the perturbations of a sample are shared by all its classes: one forward pass (infidelity) or
one explanation call (sensitivity) per chunk of perturbed copies gives every class at once. With
the same perturbations, the results equal Captum's class by class.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import targets
from ..attribution import Attribution
from ..engine import parse_memory
from ._scores import (
    check_explains,
    check_inputs,
    generator,
    number,
    rows_per_chunk,
    take,
    tracked,
)
from .records import MetricRecord

__all__ = ["Infidelity", "Sensitivity", "infidelity", "sensitivity_max"]

Perturb = Callable[[torch.Tensor], object]


@dataclass(frozen=True, eq=False)
class Infidelity:
    """Infidelity of every sample and class row (Yeh et al. 2019, as Captum computes it).

    Attributes
    ----------
    infidelity : torch.Tensor
        ``[B, K]``: the mean squared difference between ``sum(attribution * I)`` and
        ``F(x) - F(x - I)`` over the perturbations ``I`` (after scaling the attribution by
        ``beta`` when ``normalize``).
    beta : torch.Tensor or None
        ``[B, K]``: the least-squares scale of the attribution when ``normalize``, else None.
    classes : torch.Tensor
        ``[B, K]`` class ids of the rows.
    n_perturb : int
    normalize : bool
    params : dict
    """

    infidelity: torch.Tensor
    beta: torch.Tensor | None
    classes: torch.Tensor
    n_perturb: int
    normalize: bool
    params: dict

    def summary(self) -> dict:
        """Mean and median infidelity over samples and classes, JSON-safe."""
        v = self.infidelity.double().flatten()
        return {
            "metric": "infidelity",
            "samples": int(self.classes.shape[0]),
            "classes_per_sample": int(self.classes.shape[1]),
            "n_perturb": self.n_perturb,
            "normalize": self.normalize,
            "mean": number(v.mean()),
            "median": number(v.median()),
            "max": number(v.max()),
            "params": self.params,
        }


@dataclass(frozen=True, eq=False)
class Sensitivity:
    """Max-sensitivity of every sample and class row (Yeh et al. 2019, as Captum computes it).

    Attributes
    ----------
    sensitivity : torch.Tensor
        ``[B, K]``: the largest relative change of the row's explanation,
        ``||e(x + u) - e(x)|| / ||e(x)||``, over the perturbations ``u``.
    classes : torch.Tensor
        ``[B, K]`` class ids of the rows.
    n_perturb : int
    params : dict
    """

    sensitivity: torch.Tensor
    classes: torch.Tensor
    n_perturb: int
    params: dict

    def summary(self) -> dict:
        """Mean, median and largest sensitivity over samples and classes, JSON-safe."""
        v = self.sensitivity.double().flatten()
        return {
            "metric": "sensitivity_max",
            "samples": int(self.classes.shape[0]),
            "classes_per_sample": int(self.classes.shape[1]),
            "n_perturb": self.n_perturb,
            "mean": number(v.mean()),
            "median": number(v.median()),
            "max": number(v.max()),
            "params": self.params,
        }


def infidelity(
    model: Callable,
    x: torch.Tensor,
    attribution: Attribution,
    *,
    perturb: str | Perturb = "gaussian",
    noise: float = 0.1,
    n_perturb: int = 10,
    normalize: bool = False,
    seed: int | None = None,
    output: str | Callable | None = None,
    max_memory: int | str | None = None,
    **forward_kwargs: object,
) -> Infidelity:
    """Measure how well each row predicts the score change under random input perturbations.

    For perturbations ``I`` of each sample, ``mean((sum(A * I) - (F(x) - F(x - I)))^2)`` per
    row, with ``F`` the row's score: captum.metrics.infidelity's definition, for every class
    at once (the perturbations of a sample are shared by its classes). Lower is better.

    Parameters
    ----------
    model, x, **forward_kwargs
        The model and inputs the attribution explains, as in :func:`saliency.class_jacobian`.
    attribution
        Any :class:`saliency.Attribution` of ``x``.
    perturb
        ``"gaussian"``: ``I`` Gaussian with standard deviation ``noise`` times each sample's
        value range (``max - min``, as SmoothGrad's ``noise``), the input ``x - I``; or a
        callable taking the repeated inputs ``[R, ...]`` (each sample repeated ``n_perturb``
        times in a row, in chunks) and returning ``(I, perturbed inputs)``, as Captum's
        ``perturb_func`` does. Gaussian perturbations suit local maps (gradients,
        SmoothGrad); for maps multiplied by the input (Integrated Gradients, gradient x
        input) Yeh et al. use perturbations that set subsets of features to a baseline.
    noise
        The Gaussian's standard deviation, as a fraction of each sample's value range.
    n_perturb
        Perturbations per sample.
    normalize
        Scale each row's attribution by the ``beta`` that minimises its infidelity first
        (Captum's ``normalize``): the score no longer depends on the attribution's scale.
    seed
        Seeds the Gaussian perturbations (a private generator; ``None`` draws one).
    output
        The score ``F``, as in :func:`saliency.class_jacobian`; default: what the
        attribution explained.
    max_memory
        A budget for the perturbed copies and the model's activations, as in
        :func:`saliency.class_jacobian`; ``None`` runs all ``B x n_perturb`` copies at once.

    Returns
    -------
    Infidelity

    Examples
    --------
    >>> import torch, saliency
    >>> from saliency.audit import infidelity
    >>> model = torch.nn.Linear(5, 3)
    >>> x = torch.randn(4, 5)
    >>> r = infidelity(model, x, saliency.gradients(model, x), seed=0)
    >>> r.infidelity.shape, bool(r.infidelity.max() < 1e-10)   # gradients of a linear model
    (torch.Size([4, 3]), True)
    """
    check_inputs(x, attribution)
    check_explains(model, x, attribution, output, forward_kwargs)
    n_perturb = _check_count(n_perturb)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize: expected True or False, got {normalize!r}")
    draw = _perturbation(perturb, noise, x, seed)
    track = tracked(model, x, attribution, output, forward_kwargs)
    x = x.detach()
    n, k = attribution.classes.shape
    values = attribution.values.detach().to(x.device).flatten(2)  # [B, K, D]
    samples = torch.arange(n, device=x.device)
    at_x = track.scores(track.outputs(x, samples), samples, None)  # [B, K]
    work = torch.promote_types(at_x.dtype, torch.float32)

    chunk = _chunk(track, x, max_memory, n * n_perturb)
    sums = torch.zeros(3, n, k, dtype=torch.float64, device=x.device)  # sum a^2, a d, d^2
    sq_err = torch.zeros(n, k, dtype=torch.float64, device=x.device)
    for r0 in range(0, n * n_perturb, chunk):
        rows = torch.arange(r0, min(n * n_perturb, r0 + chunk), device=x.device)
        owner = rows // n_perturb
        xs = x[owner]
        perturbation, perturbed = draw(xs, owner)
        d = at_x[owner] - track.scores(track.outputs(perturbed, owner), owner, None)
        a = _dot(values, perturbation.flatten(1), owner).double()  # [R, K]
        d = d.double()
        for target, value in ((sums[0], a * a), (sums[1], a * d), (sums[2], d * d)):
            target.index_add_(0, owner, value)
        sq_err.index_add_(0, owner, (a - d) ** 2)

    beta = None
    if normalize:
        # Captum's safe_div: a zero denominator divides by 1 instead.
        beta = sums[1] / torch.where(sums[0] == 0, torch.ones_like(sums[0]), sums[0])
        total = beta * beta * sums[0] - 2 * beta * sums[1] + sums[2]
    else:
        total = sq_err
    value = (total / n_perturb).to(work)
    return Infidelity(
        infidelity=value,
        beta=None if beta is None else beta.to(work),
        classes=attribution.classes,
        n_perturb=n_perturb,
        normalize=normalize,
        params={
            "perturb": perturb if isinstance(perturb, str) else _name(perturb),
            "noise": noise,
            "seed": draw.seed,
            "output": track.output if isinstance(track.output, str) else _name(track.output),
            "max_memory": max_memory,
        },
    )


def sensitivity_max(
    model: Callable,
    x: torch.Tensor,
    method: Callable[..., Attribution],
    *,
    classes: targets.Classes = None,
    attribution: Attribution | None = None,
    perturb_radius: float = 0.02,
    perturb: Perturb | None = None,
    n_perturb: int = 10,
    norm: float | str = "fro",
    seed: int | None = None,
    output: str | Callable | None = None,
    max_memory: int | str | None = None,
    **forward_kwargs: object,
) -> Sensitivity:
    """Measure how much each row's explanation changes, at most, when the input is nudged.

    For ``n_perturb`` copies ``x + u`` of each sample, ``u`` uniform in
    ``[-perturb_radius, perturb_radius]`` per feature, the largest
    ``||e(x + u) - e(x)|| / ||e(x)||`` per class row: captum.metrics.sensitivity_max's
    definition, for every class at once (each perturbation of the batch is explained for all
    classes in one call of ``method``). Lower is more stable.

    Parameters
    ----------
    model, x, **forward_kwargs
        As in :func:`saliency.class_jacobian`; extra keyword arguments go to the model through
        ``method``, per-sample ones following their sample's copies.
    method
        Any callable following :class:`saliency.methods.Method` (``saliency.gradients``, a
        :func:`functools.partial` of a method, ...). Fix the seed of a random method
        (SmoothGrad) with a partial, or its own noise counts as sensitivity: the copies of one
        perturbation are explained as one batch laid out as ``x`` (same samples, same order),
        so that each copy gets the noise its sample got at ``x``.
    classes
        What to explain, as in :func:`saliency.class_jacobian`; resolved once at ``x`` (a
        ``top_k`` keeps the classes of ``x`` for every copy).
    attribution
        ``method``'s Attribution of ``x``, when already computed: its values and classes are
        used instead of calling ``method`` on ``x`` again (``classes`` must then be None).
    perturb_radius
        Half-width of the uniform noise, in input units (Captum's default 0.02).
    perturb
        Instead of the uniform noise, a callable taking inputs ``[R, ...]`` and returning them
        perturbed, as Captum's ``perturb_func`` does. It is called ``n_perturb`` times with
        ``x``'s samples in order (perturbation after perturbation; under ``max_memory``, each
        perturbation group of samples after group).
    n_perturb
        Perturbed copies per sample.
    norm
        The norm of the flattened explanation: ``"fro"`` (Euclidean, Captum's default) or a
        number ``p`` (``math.inf`` for the largest absolute value).
    seed
        Seeds the uniform noise (a private generator; ``None`` draws one).
    output, max_memory
        Passed to ``method`` when given; ``max_memory`` also bounds the copies explained per
        call (``None``: one call per perturbation, on all ``B`` copies). When it cannot hold
        all ``B``, the samples are taken in groups, and ``x`` is explained again group by group
        (instead of using ``attribution``) so that a random method's noise still matches.

    Returns
    -------
    Sensitivity

    Examples
    --------
    >>> import torch, saliency
    >>> from saliency.audit import sensitivity_max
    >>> model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> r = sensitivity_max(model, torch.randn(4, 5), saliency.gradients, seed=0)
    >>> r.sensitivity.shape, bool((r.sensitivity > 0).all())
    (torch.Size([4, 3]), True)
    >>> linear = torch.nn.Linear(5, 3)                 # constant gradients: nothing changes
    >>> float(sensitivity_max(linear, torch.randn(4, 5), saliency.gradients).sensitivity.max())
    0.0
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
        what = f"{x.dtype} {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"x: expected a floating tensor [B, ...] of inputs, got {what}")
    if not callable(method):
        raise TypeError(
            f"method: expected a method such as saliency.gradients, got {type(method).__name__}"
        )
    n_perturb = _check_count(n_perturb)
    if not (norm == "fro" or (isinstance(norm, int | float) and not isinstance(norm, bool))):
        raise ValueError(f"norm: expected 'fro' or a number p, got {norm!r}")
    if norm != "fro" and not norm > 0:
        raise ValueError(f"norm: expected a positive p, got {norm!r}")
    if isinstance(perturb_radius, bool) or not isinstance(perturb_radius, int | float):
        raise TypeError(f"perturb_radius: expected a number, got {perturb_radius!r}")
    if not perturb_radius >= 0:
        raise ValueError(f"perturb_radius: expected a non-negative number, got {perturb_radius!r}")
    if perturb is not None and not callable(perturb):
        raise TypeError(f"perturb: expected None or a callable, got {type(perturb).__name__}")
    x = x.detach()
    n = x.shape[0]
    budget = parse_memory(max_memory)
    options: dict = {}
    if output is not None:
        options["output"] = output
    if max_memory is not None:
        options["max_memory"] = max_memory

    if attribution is None:
        attribution = _explain(method, model, x, classes, options, forward_kwargs)
    else:
        if classes is not None:
            raise ValueError(
                "classes: give either classes or attribution (whose classes are used), not both"
            )
        if not isinstance(attribution, Attribution) or attribution.values.shape[0] != n:
            raise TypeError(
                f"attribution: expected the Attribution of x's {n} samples by method, got "
                f"{type(attribution).__name__}"
            )
        check_explains(model, x, attribution, output, forward_kwargs)
    k = attribution.values.shape[1]
    rows_spec = _classes_again(attribution)
    gen, seed = generator(seed, x.device)
    item = attribution.values[0, 0].numel() * attribution.values.element_size()
    row_bytes = 3 * k * item + 4 * x[0].numel() * x.element_size()
    group = n
    if budget is not None:
        group = min(n, budget // row_bytes)
        if group < 1:
            raise MemoryError(
                f"max_memory: {budget} bytes cannot hold the {k} explanations of one perturbed "
                f"copy (about {row_bytes} bytes)"
            )
    groups = [torch.arange(lo, min(lo + group, n), device=x.device) for lo in range(0, n, group)]

    def explain(inputs: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        kwargs = {name: take(v, owner, n) for name, v in forward_kwargs.items()}
        a = _explain(method, model, inputs, rows_spec(owner), options, kwargs)
        if tuple(a.values.shape[:2]) != (len(owner), k):
            raise ValueError(
                f"method: returned values {list(a.values.shape)} for {len(owner)} copies of "
                f"{k} classes"
            )
        return a.values.detach().flatten(2)

    # A random method (SmoothGrad) draws its noise for the batch it is given, row by row: so the
    # copies of one perturbation are explained as a batch laid out like x's (the same samples,
    # in the same order), and row b of every copy gets the noise sample b got at x. When the
    # budget splits x's samples into groups, x itself is explained again in the same groups.
    if len(groups) == 1:
        base = attribution.values.detach().flatten(2)  # [B, K, D']
    else:
        base = torch.cat([explain(x[g], g).to(attribution.values.device) for g in groups])
    base_norm = _norm(base, norm)
    base_norm = torch.where(base_norm == 0, torch.ones_like(base_norm), base_norm)
    best = torch.zeros(n, k, dtype=base_norm.dtype, device=base.device)
    for _ in range(n_perturb):
        u = None
        if perturb is None:  # one draw per perturbation, whatever the groups
            u = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        for owner in groups:
            xs = x[owner]
            if u is None:
                perturbed = _tensor_like(perturb(xs), xs, "perturb")
            else:
                perturbed = xs + (2 * u[owner] - 1) * perturb_radius
            at = owner.to(base.device)
            change = _norm(explain(perturbed, owner).to(base.device) - base[at], norm)
            ratio = (change / base_norm[at]).to(best.dtype)
            best[at] = torch.maximum(best[at], ratio)
    return Sensitivity(
        sensitivity=best,
        classes=attribution.classes,
        n_perturb=n_perturb,
        params={
            "perturb_radius": perturb_radius,
            "perturb": None if perturb is None else _name(perturb),
            "norm": norm,
            "seed": seed,
            "method": _name(method),
            "max_memory": max_memory,
        },
    )


# -- helpers ---------------------------------------------------------------------------------------


RECORDS = (
    MetricRecord(
        name="infidelity",
        function=infidelity,
        result=Infidelity,
        explanation="how well each map predicts the score change under random perturbations "
        "of the input (mean squared error)",
        doc="audit/infidelity-sensitivity.md",
        columns={"infidelity": "lower", "beta": None},
        needs=("input_maps",),
        baseline="0: the map predicts every change exactly",
        faithfulness=True,
    ),
    MetricRecord(
        name="sensitivity_max",
        function=sensitivity_max,
        result=Sensitivity,
        explanation="how much each map changes, at most, when the input is nudged slightly",
        doc="audit/infidelity-sensitivity.md",
        columns={"sensitivity": "lower"},
        baseline="0: the map does not move",
        inputs="numbers",
    ),
)


class _Draw:
    """Infidelity's perturbations of a chunk of repeated inputs: ``(I, perturbed)``."""

    def __init__(self, perturb, noise, x, seed) -> None:
        self.perturb = perturb
        if perturb == "gaussian":
            self.generator, self.seed = generator(seed, x.device)
            flat = x.detach().flatten(1)
            self.scale = noise * (flat.amax(1) - flat.amin(1))
        else:
            self.seed = seed

    def __call__(self, xs: torch.Tensor, owner: torch.Tensor):
        if self.perturb == "gaussian":
            shape = (-1,) + (1,) * (xs.ndim - 1)
            eps = torch.randn(xs.shape, generator=self.generator, device=xs.device, dtype=xs.dtype)
            perturbation = eps * self.scale[owner].view(shape)
            return perturbation, xs - perturbation
        got = self.perturb(xs)
        if not isinstance(got, tuple | list) or len(got) != 2:
            raise TypeError(
                f"perturb: expected a callable returning (perturbation, perturbed inputs), got "
                f"{type(got).__name__}"
            )
        return _tensor_like(got[0], xs, "perturb"), _tensor_like(got[1], xs, "perturb")


def _perturbation(perturb, noise, x, seed) -> _Draw:
    if isinstance(perturb, str):
        if perturb != "gaussian":
            raise ValueError(
                f"perturb: expected 'gaussian' or a callable returning (perturbation, perturbed "
                f"inputs), got {perturb!r}"
            )
        if isinstance(noise, bool) or not isinstance(noise, int | float) or not noise >= 0:
            raise ValueError(f"noise: expected a non-negative fraction of the range, got {noise!r}")
    elif not callable(perturb):
        raise TypeError(f"perturb: expected 'gaussian' or a callable, got {type(perturb).__name__}")
    return _Draw(perturb, noise, x, seed)


def _dot(values: torch.Tensor, perturbation: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """``sum(values[owner[r]] * perturbation[r])`` per row ``r``, one product per sample.

    Rows come sample by sample, so each sample's maps ``[K, D]`` meet all its rows in one
    matrix product, without copying the maps once per row.
    """
    out = torch.empty(len(owner), values.shape[1], dtype=values.dtype, device=values.device)
    first = torch.ones(1, dtype=torch.bool, device=owner.device)
    starts = torch.cat([first, owner[1:] != owner[:-1]]).nonzero()
    bounds = [*starts.flatten().tolist(), len(owner)]
    for lo, hi in itertools.pairwise(bounds):
        out[lo:hi] = perturbation[lo:hi].to(values.dtype) @ values[int(owner[lo])].T
    return out


def _chunk(track, x, max_memory, total: int) -> int:
    budget = parse_memory(max_memory)
    return rows_per_chunk(track, x, budget, default=total, what="one perturbed input")


def _explain(method, model, x, classes, options, kwargs) -> Attribution:
    a = method(model, x, classes, **options, **kwargs)
    if not isinstance(a, Attribution):
        raise TypeError(
            f"method: expected a callable returning an Attribution (the saliency.methods.Method "
            f"contract), got {type(a).__name__}"
        )
    return a


def _classes_again(attribution: Attribution) -> Callable[[torch.Tensor], object]:
    """The ``classes`` that explain the same rows for copies of samples ``owner``."""
    ids, neg = attribution.classes, attribution.negatives
    if attribution.contrasted:
        # A contrast is one list of pairs shared by every sample (saliency.contrast).
        shared = bool((neg >= 0).all()) and all(
            torch.equal(t, t[:1].expand_as(t)) for t in (ids, neg)
        )
        if not shared:
            raise ValueError(
                "attribution: its rows are not one saliency.contrast(a, b) shared by every "
                "sample (they mix contrasts and plain classes, or differ between samples), so "
                "the method cannot be asked again for them; explain one contrast for every sample"
            )
        shared = targets.contrast(ids[0].tolist(), neg[0].tolist())
        return lambda owner: shared
    return lambda owner: ids[owner.to(ids.device)]


def _norm(v: torch.Tensor, norm: float | str) -> torch.Tensor:
    return torch.linalg.vector_norm(v, ord=2 if norm == "fro" else norm, dim=-1)


def _tensor_like(value: object, like: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(like.shape):
        got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(
            f"{name}: expected tensors of the inputs' shape {list(like.shape)}, got {got}"
        )
    return value.to(device=like.device, dtype=like.dtype)


def _check_count(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n_perturb: expected a positive int, got {n!r}")
    return n


def _name(value: object) -> str:
    func = getattr(value, "func", value)
    return getattr(func, "__qualname__", type(func).__name__)
