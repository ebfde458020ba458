"""Deletion, insertion and ROAD: the score of every class as its most important features go.

For every sample and every class row of an Attribution, features are removed (replaced by a
substrate) or inserted (into the substrate) in the order of the row's map, and the row's score
is tracked along the way. A faithful map makes the score fall fast under deletion and rise fast
under insertion. Orders come from one sort per map; every perturbed copy of every sample and
class goes through the model in chunks of rows, one forward pass per chunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..attribution import Attribution
from ..engine import parse_memory
from ..methods.baselines import make_baseline
from ._scores import (
    Tracked,
    check_explains,
    check_inputs,
    describe,
    generator,
    number,
    rows_per_chunk,
    tracked,
)
from .imputation import noisy_linear_imputation
from .records import MetricRecord

__all__ = ["PerturbationCurves", "deletion", "insertion", "road"]

Substrate = str | float | torch.Tensor | Callable[[torch.Tensor], torch.Tensor]
_LOWER_IS_BETTER = {"deletion": True, "insertion": False, "road_morf": True, "road_lerf": False}


@dataclass(frozen=True, eq=False)
class PerturbationCurves:
    """Score curves of every sample and class row as features are removed or inserted.

    Attributes
    ----------
    curves : torch.Tensor
        ``[B, K, S]``: row ``k``'s score (class ``classes[b, k]`` after ``output``) at each
        point, in the order of its map.
    random_curves : torch.Tensor or None
        ``[B, K, S]``: the same in a random order (one per sample, seeded), the reference a
        map has to beat; ``None`` with ``random_order=False``.
    fractions : torch.Tensor
        ``[S]``: the fraction of features removed (deletion, ROAD) or inserted (insertion) at
        each point.
    auc : torch.Tensor
        ``[B, K]``: the area under each curve, trapezoids over ``fractions`` divided by their
        span (the curve's mean height; for deletion and insertion the span is 1).
    random_auc : torch.Tensor or None
        ``[B, K]``: the same for ``random_curves``.
    normalized_auc : torch.Tensor
        ``[B, K]``: ``(auc - min) / (max - min)`` over each curve's points, in ``[0, 1]``:
        the area with the row's own score range taken out, comparable across classes and
        models (0: the curve sits at its lowest from the first step; 1: at its highest). NaN
        where the curve's range is below ``1e-3`` times the largest absolute score on the
        sample's curves (a class the perturbation does not move).
    is_top : torch.Tensor
        ``[B, K, S]`` bool: the row's class is still the model's top class at that point.
    classes : torch.Tensor
        ``[B, K]`` class ids of the rows.
    kind : str
        ``"deletion"``, ``"insertion"``, ``"road_morf"`` or ``"road_lerf"``.
    params : dict
        The settings that produced it (steps, substrate, features, output, seed, ...).
    """

    curves: torch.Tensor
    random_curves: torch.Tensor | None
    fractions: torch.Tensor
    auc: torch.Tensor
    random_auc: torch.Tensor | None
    normalized_auc: torch.Tensor
    is_top: torch.Tensor
    classes: torch.Tensor
    kind: str
    params: dict = field(default_factory=dict)

    @classmethod
    def from_curves(
        cls,
        curves: torch.Tensor,
        random_curves: torch.Tensor | None,
        fractions: torch.Tensor,
        is_top: torch.Tensor,
        classes: torch.Tensor,
        kind: str,
        params: dict,
    ) -> PerturbationCurves:
        """The result of ``curves`` at ``fractions``: their areas (trapezoids over the
        fractions, divided by their span) and the areas normalised by each curve's range."""
        span = fractions[-1] - fractions[0]
        frac = fractions.to(curves.device, curves.dtype)
        auc = torch.trapezoid(curves, frac, dim=-1) / span
        random_auc = None
        if random_curves is not None:
            random_auc = torch.trapezoid(random_curves, frac, dim=-1) / span
        # Min-max over the curve: bounded in [0, 1] even for curves that are not monotone.
        low, high = curves.amin(-1), curves.amax(-1)
        scale = curves.abs().flatten(1).amax(1)  # the sample's largest score along its curves
        flat = (high - low) < 1e-3 * scale[:, None]
        normalized = ((auc - low) / (high - low)).masked_fill(flat, math.nan)
        return cls(
            curves=curves,
            random_curves=random_curves,
            fractions=fractions,
            auc=auc,
            random_auc=random_auc,
            normalized_auc=normalized,
            is_top=is_top,
            classes=classes,
            kind=kind,
            params=params,
        )

    @property
    def lower_is_better(self) -> bool:
        """Whether a lower ``auc`` means a more faithful map (deletion, ROAD's MoRF)."""
        return _LOWER_IS_BETTER[self.kind]

    def summary(self) -> dict:
        """Means and medians of the areas, rows beating the random order, mean curves; JSON-safe.

        ``top_rate`` is, per point, the share of rows whose class was the top class at ``x``
        that still are (ROAD's accuracy curve, over those rows).
        """
        auc = self.auc.double().flatten()
        norm = self.normalized_auc.double().flatten()
        rows = self.curves.shape[0] * self.curves.shape[1]
        out: dict = {
            "metric": self.kind,
            "samples": int(self.classes.shape[0]),
            "classes_per_sample": int(self.classes.shape[1]),
            "lower_is_better": self.lower_is_better,
            "fractions": [float(f) for f in self.fractions],
            "mean": number(auc.mean()),
            "median": number(auc.median()),
            "normalized_mean": number(norm.nanmean()),
            "normalized_median": number(norm.nanmedian()),
            "undefined": int(norm.isnan().sum()),
            "mean_curve": [number(v) for v in self.curves.double().mean((0, 1))],
        }
        # The point at x: the first of deletion and ROAD, the last of insertion (which starts
        # from the substrate).
        at_x = self.is_top[..., -1 if self.kind == "insertion" else 0]
        kept = self.is_top[at_x].double()
        out["top_rate"] = [number(v) for v in kept.mean(0)] if kept.numel() else None
        if self.random_auc is not None:
            rand = self.random_auc.double().flatten()
            better = auc < rand if self.lower_is_better else auc > rand
            out["random_mean"] = number(rand.mean())
            out["random_mean_curve"] = [number(v) for v in self.random_curves.double().mean((0, 1))]
            out["beats_random"] = int(better.sum())
        out["rows"] = rows
        out["params"] = self.params
        return out


def deletion(
    model: Callable,
    x: torch.Tensor,
    attribution: Attribution,
    *,
    steps: int | None = None,
    substrate: Substrate = "zeros",
    features: str | None = None,
    abs: bool = False,
    random_order: bool = True,
    seed: int | None = None,
    output: str | Callable | None = None,
    max_memory: int | str | None = None,
    **forward_kwargs: object,
) -> PerturbationCurves:
    """Track every row's score as its most important features are replaced by a substrate.

    For each sample ``b`` and row ``k``, features are ranked by decreasing attribution (ties
    by position) and removed ``steps`` times in equal parts: point ``i`` replaces the first
    ``floor(i * D / steps)`` of the ``D`` features by ``substrate``, from ``x`` itself
    (``i = 0``) to the substrate (``i = steps``). Lower areas mean more faithful maps.

    Parameters
    ----------
    model, x, **forward_kwargs
        The model and inputs the attribution explains, as in :func:`saliency.class_jacobian`
        (per-sample forward arguments follow their sample's copies).
    attribution
        Any :class:`saliency.Attribution` of ``x`` (maps of ``x``'s shape).
    steps
        The number of equal parts the ``D`` features are removed in (``steps + 1`` points, at
        most ``D``; default 20, or ``D`` when smaller); ``steps=D`` removes one feature per
        step, as pixel flipping does.
    substrate
        What removed features become: ``"zeros"`` (or ``"zero"``), ``"mean"`` (each sample's
        mean, per channel for images), ``"blur"`` (a Gaussian blur of images, as
        :func:`saliency.integrated_gradients`'s baseline), ``"uniform"`` (seeded noise in
        each sample's range), a number, a tensor broadcastable to ``x``, or a callable of
        ``x`` returning one.
    features
        ``"pixels"`` (images ``[B, C, H, W]`` only: a pixel's channels are removed together,
        ranked by the map summed over channels; the default for images) or ``"elements"``
        (every value on its own; the default otherwise).
    abs
        Rank by absolute attribution (for maps whose sign carries no importance, e.g.
        gradients); default: signed, most positive first.
    random_order
        Also compute the curves in a random order, one per sample shared by its classes (one
        extra forward pass per sample and point, not per class).
    seed
        Seeds the random order and the ``"uniform"`` substrate (a private generator; ``None``
        draws a seed and records it in ``params``).
    output
        The score tracked: ``"logits"``, ``"softmax"``, ``"log_softmax"`` or a callable, as
        in :func:`saliency.class_jacobian`; default: what the attribution explained.
    max_memory
        A budget for the perturbed copies, the orders and the model's activations, as in
        :func:`saliency.class_jacobian`. ``None`` runs one forward pass per point with all
        ``B x K`` rows.

    Returns
    -------
    PerturbationCurves

    Examples
    --------
    >>> import torch, saliency
    >>> from saliency.audit import deletion
    >>> model = torch.nn.Linear(6, 3)
    >>> x = torch.randn(4, 6)
    >>> r = deletion(model, x, saliency.gradients(model, x, times_input=True), steps=6, seed=0)
    >>> r.curves.shape, r.auc.shape
    (torch.Size([4, 3, 7]), torch.Size([4, 3]))
    >>> bool((r.auc <= r.random_auc + 1e-6).all())    # exact for a linear model
    True
    """
    return _run(
        "deletion", model, x, attribution, steps=steps, substrate=substrate, features=features,
        abs=abs, random_order=random_order, seed=seed, output=output, max_memory=max_memory,
        forward_kwargs=forward_kwargs, noise=None,
    )  # fmt: skip


def insertion(
    model: Callable,
    x: torch.Tensor,
    attribution: Attribution,
    *,
    steps: int | None = None,
    substrate: Substrate = "zeros",
    features: str | None = None,
    abs: bool = False,
    random_order: bool = True,
    seed: int | None = None,
    output: str | Callable | None = None,
    max_memory: int | str | None = None,
    **forward_kwargs: object,
) -> PerturbationCurves:
    """Track every row's score as its most important features are put back into a substrate.

    The mirror of :func:`deletion` (same arguments): point ``i`` starts from ``substrate``
    and restores the first ``floor(i * D / steps)`` features in order of decreasing
    attribution, from the substrate (``i = 0``) to ``x`` (``i = steps``). Higher areas mean
    more faithful maps. RISE (Petsiuk et al. 2018) inserts into a blurred image
    (``substrate="blur"``), which hides detail without the sharp edges of a constant.

    Examples
    --------
    >>> import torch, saliency
    >>> from saliency.audit import insertion
    >>> model = torch.nn.Linear(6, 3)
    >>> x = torch.randn(4, 6)
    >>> a = saliency.gradients(model, x, times_input=True)
    >>> r = insertion(model, x, a, steps=3, substrate=0.0, random_order=False)
    >>> torch.allclose(r.curves[..., -1], model(x).detach())   # everything inserted: x itself
    True
    """
    return _run(
        "insertion", model, x, attribution, steps=steps, substrate=substrate, features=features,
        abs=abs, random_order=random_order, seed=seed, output=output, max_memory=max_memory,
        forward_kwargs=forward_kwargs, noise=None,
    )  # fmt: skip


def road(
    model: Callable,
    x: torch.Tensor,
    attribution: Attribution,
    *,
    order: str = "morf",
    steps: int | None = None,
    noise: float = 0.01,
    abs: bool = False,
    random_order: bool = True,
    seed: int | None = None,
    output: str | Callable | None = None,
    max_memory: int | str | None = None,
    **forward_kwargs: object,
) -> PerturbationCurves:
    """Remove pixels in the order of each map and fill them by ROAD's noisy linear imputation.

    ROAD (Rong et al. 2022) removes the most relevant (``order="morf"``) or the least relevant
    (``"lerf"``) pixels first and imputes them from the kept ones
    (:func:`saliency.audit.imputation.noisy_linear_imputation`), so that the shape of the
    removed set no longer tells the model which pixels were important. Points are at
    ``i / steps`` of the pixels removed, ``i = 0 .. steps - 1`` (``steps=10`` by default:
    0%, 10%, ..., 90%, as in the paper): removing every pixel would leave nothing to impute from.
    MoRF areas are lower, LeRF areas higher, for faithful maps. Images ``[B, C, H, W]`` only;
    pixels are ranked by the map summed over channels. Other arguments as in
    :func:`deletion`; ``noise`` is the standard deviation of the imputation noise, in input
    units (the paper's 0.01), drawn from the seeded generator.

    Examples
    --------
    >>> import torch, saliency
    >>> from saliency.audit import road
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> x = torch.randn(2, 1, 4, 4)
    >>> r = road(model, x, saliency.gradients(model, x, times_input=True), steps=4, seed=0)
    >>> r.fractions.tolist(), r.kind
    ([0.0, 0.25, 0.5, 0.75], 'road_morf')
    """
    if order not in ("morf", "lerf"):
        raise ValueError(
            f"order: expected 'morf' (most relevant first) or 'lerf' (least relevant first), "
            f"got {order!r}"
        )
    if isinstance(noise, bool) or not isinstance(noise, int | float) or not noise >= 0:
        raise ValueError(f"noise: expected a non-negative standard deviation, got {noise!r}")
    return _run(
        f"road_{order}", model, x, attribution, steps=steps, substrate=None, features="pixels",
        abs=abs, random_order=random_order, seed=seed, output=output, max_memory=max_memory,
        forward_kwargs=forward_kwargs, noise=float(noise),
    )  # fmt: skip


def _road_better(options: dict) -> dict[str, str | None]:
    better = "lower" if options.get("order", "morf") == "morf" else "higher"
    return {"auc": better, "random_auc": None, "normalized_auc": better}


RECORDS = (
    MetricRecord(
        name="deletion",
        function=deletion,
        result=PerturbationCurves,
        explanation="the class score as the features the map ranks first are removed: a "
        "faithful map makes it fall fast (area under the curve, against a random order)",
        doc="audit/deletion-insertion.md",
        columns={"auc": "lower", "random_auc": None, "normalized_auc": "lower"},
        random={"auc": "random_auc"},
        needs=("input_maps",),
        baseline="the same curve in a random order (random_auc): a faithful map falls faster",
        faithfulness=True,
    ),
    MetricRecord(
        name="insertion",
        function=insertion,
        result=PerturbationCurves,
        explanation="the class score as the features the map ranks first are put back into "
        "a blank input: a faithful map makes it rise fast (area under the curve, against a "
        "random order)",
        doc="audit/deletion-insertion.md",
        columns={"auc": "higher", "random_auc": None, "normalized_auc": "higher"},
        random={"auc": "random_auc"},
        needs=("input_maps",),
        baseline="the same curve in a random order (random_auc): a faithful map rises faster",
        faithfulness=True,
    ),
    MetricRecord(
        name="road",
        function=road,
        result=PerturbationCurves,
        explanation="deletion with removed pixels imputed from their neighbours, so that the "
        "shape of the removed set tells the model nothing (MoRF: lower is better)",
        doc="audit/road.md",
        columns={"auc": "lower", "random_auc": None, "normalized_auc": "lower"},
        random={"auc": "random_auc"},
        needs=("input_maps",),
        inputs="images",
        directions=_road_better,
        baseline="the same curve in a random order (random_auc): a faithful map falls faster",
        faithfulness=True,
    ),
)


# -- shared machinery ------------------------------------------------------------------------------


def _run(
    kind: str,
    model: Callable,
    x: torch.Tensor,
    attribution: Attribution,
    *,
    steps: int | None,
    substrate: Substrate | None,
    features: str | None,
    abs: bool,
    random_order: bool,
    seed: int | None,
    output: str | Callable | None,
    max_memory: int | str | None,
    forward_kwargs: dict,
    noise: float | None,
) -> PerturbationCurves:
    check_inputs(x, attribution)
    check_explains(model, x, attribution, output, forward_kwargs)
    for name, flag in (("abs", abs), ("random_order", random_order)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name}: expected True or False, got {flag!r}")
    is_road = kind.startswith("road")
    if is_road and x.ndim != 4:
        raise ValueError(
            f"x: ROAD imputes pixels from their neighbours and needs images [B, C, H, W], got "
            f"shape {list(x.shape)}"
        )
    features = _features(features, x)
    budget = parse_memory(max_memory)
    gen, seed = generator(seed, x.device)
    track = tracked(model, x, attribution, output, forward_kwargs)

    maps = attribution.values.detach().to(x.device)
    if features == "pixels":
        maps = maps.sum(2)  # channels of a pixel are removed together: rank them as one
    maps = maps.flatten(2)
    if abs:
        maps = maps.abs()
    d = maps.shape[-1]
    if steps is None:
        steps = min(10 if is_road else 20, d)
    n_points = _check_steps(steps, d, is_road)
    removed_counts = torch.arange(n_points) * d // steps  # features removed (inserted) at point i
    fractions = removed_counts.double() / d

    x = x.detach()
    if is_road:
        fill, unchanged = _road_fill(noise, gen), None
    else:
        sub = _substrate(substrate, x, gen)
        fill = _constant_fill(sub, features)
        same = x == sub
        unchanged = same.all(1).flatten(1) if features == "pixels" else same.flatten(1)
    per_map = d * (8 + 8 + 8 + maps.element_size())  # order, ranks, repeats, the map itself
    chunk = rows_per_chunk(
        track,
        x,
        budget,
        default=maps.shape[0] * maps.shape[1],
        fixed=0,
        per_row_extra=d + per_map,
        what="one perturbed input with its map's order",
    )
    curves, is_top, random_curves = _evaluate(
        track,
        x,
        maps,
        removed_counts,
        fill=fill,
        unchanged=unchanged,
        insertion=kind == "insertion",
        descending=kind != "road_lerf",
        generator=gen,
        random_order=random_order,
        chunk=chunk,
        budget=budget,
    )

    params = {
        "steps": steps,
        "substrate": describe(substrate) if not is_road else "noisy_linear_imputation",
        "features": features,
        "abs": abs,
        "random_order": random_order,
        "seed": seed,
        "output": describe(track.output),
        "max_memory": max_memory,
    }
    if is_road:
        params["noise"] = noise
    return PerturbationCurves.from_curves(
        curves, random_curves, fractions, is_top, attribution.classes, kind, params
    )


def _evaluate(
    track: Tracked,
    x: torch.Tensor,
    maps: torch.Tensor,
    counts: torch.Tensor,
    *,
    fill: Callable,
    unchanged: torch.Tensor | None,
    insertion: bool,
    descending: bool,
    generator: torch.Generator,
    random_order: bool,
    chunk: int,
    budget: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Curves ``[B, K, S]``, top-class flags and random-order curves for all rows and points.

    ``unchanged`` ``[B, D]`` marks the features whose substrate value equals their value in
    ``x``: a point that only removes (or inserts) such features repeats the previous input, so
    it takes the previous point's score instead of a forward pass (exact: same input, same
    output). ``None`` where every point changes the input (ROAD's noise).
    """
    n, k, d = maps.shape
    s = len(counts)
    device = x.device
    curves = torch.empty(n, k, s, dtype=x.dtype, device=device)
    is_top = torch.empty(n, k, s, dtype=torch.bool, device=device)
    random_curves = torch.empty_like(curves) if random_order else None
    samples = torch.arange(n, device=device)
    counts = counts.to(device)

    # Points where nothing or everything is removed do not depend on the order: once per sample.
    shared = (counts == 0) | (counts == d)
    for i in shared.nonzero().flatten().tolist():
        everything = bool(counts[i] == d) != insertion
        removed = torch.full((n, d), everything, dtype=torch.bool, device=device)
        out = track.outputs(fill(x, removed, samples), samples)
        curves[:, :, i] = track.scores(out, samples, None).to(curves.dtype)
        is_top[:, :, i] = track.is_top(out, samples, None).to(device)
        if random_curves is not None:
            random_curves[:, :, i] = curves[:, :, i]

    def evaluate(rank: torch.Tensor, owner: torch.Tensor, skip: torch.Tensor, write) -> None:
        # rank [G, D] of maps owned by samples owner [G]; skip [G, S]: points repeating the last.
        todo = (~skip & ~shared[None]).nonzero()  # [(map, point)], map-major
        for r0 in range(0, len(todo), chunk):
            g, i = todo[r0 : r0 + chunk].unbind(1)
            removed = rank[g] < counts[i][:, None]
            if insertion:
                removed = ~removed
            sb = owner[g]
            out = track.outputs(fill(x[sb], removed, sb), sb)
            write(g, i, sb, out)

    def repeats(order: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        # A point repeats the previous one when all features it adds are unchanged ones.
        skip = torch.zeros(len(order), s, dtype=torch.bool, device=device)
        if unchanged is None:
            return skip
        moved = (~unchanged[owner]).gather(1, order)  # in the map's order
        done = torch.nn.functional.pad(moved.long().cumsum(1), (1, 0))  # [G, D + 1]
        seen = done[:, counts]  # changed features among the first counts[i]
        skip[:, 1:] = seen[:, 1:] == seen[:, :-1]
        return skip

    m = n * k
    flat_maps = maps.reshape(m, d)
    group = m if budget is None else min(m, chunk)
    skip_all = torch.zeros(n, k, s, dtype=torch.bool, device=device)
    for g0 in range(0, m, group):
        rows = torch.arange(g0, min(m, g0 + group), device=device)
        order, rank = _ranks(flat_maps[rows], descending)
        b, kk = rows // k, rows % k
        skip = repeats(order, b)
        del order
        skip_all[b, kk] = skip

        def write(g, i, sb, out, kk=kk):
            curves[sb, kk[g], i] = track.scores(out, sb, kk[g]).to(curves.dtype)
            is_top[sb, kk[g], i] = track.is_top(out, sb, kk[g]).to(device)

        evaluate(rank, b, skip, write)
    _carry_forward(curves, skip_all, shared)
    _carry_forward(is_top, skip_all, shared)

    if random_curves is not None:
        keys = torch.rand(n, d, generator=generator, device=device)
        order, rank = _ranks(keys, descending=True)
        skip = repeats(order, samples)

        def write_random(g, i, sb, out):
            random_curves[sb, :, i] = track.scores(out, sb, None).to(curves.dtype)

        evaluate(rank, samples, skip, write_random)
        _carry_forward(random_curves, skip[:, None, :].expand(n, k, s), shared)
    return curves, is_top, random_curves


def _carry_forward(values: torch.Tensor, skip: torch.Tensor, shared: torch.Tensor) -> None:
    """Give every skipped point the value of the point before it, in place."""
    skip = skip & ~shared
    for i in range(1, values.shape[-1]):
        values[..., i] = torch.where(skip[..., i], values[..., i - 1], values[..., i])


def _ranks(maps: torch.Tensor, descending: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Each map's order (feature at each position) and ranks (position of each feature).

    One stable sort per map: ties keep their index order.
    """
    order = torch.sort(maps, dim=1, descending=descending, stable=True).indices
    positions = torch.arange(maps.shape[1], device=maps.device).expand_as(order)
    return order, torch.empty_like(order).scatter_(1, order, positions)


def _constant_fill(substrate: torch.Tensor, features: str) -> Callable:
    def fill(xs: torch.Tensor, removed: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        if features == "pixels":
            mask = removed.reshape(xs.shape[0], 1, *xs.shape[2:])
        else:
            mask = removed.reshape(xs.shape)
        return torch.where(mask, substrate[samples], xs)

    return fill


def _road_fill(noise: float, generator: torch.Generator) -> Callable:
    def fill(xs: torch.Tensor, removed: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        mask = removed.reshape(xs.shape[0], *xs.shape[2:])
        if not bool(mask.any()):
            return xs  # 0% removed: the input itself, without noise
        return noisy_linear_imputation(xs, mask, noise=noise, generator=generator)

    return fill


def _substrate(substrate: Substrate, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """What removed features become: read like an Integrated Gradients baseline, plus "mean"."""
    if substrate == "blur" and x.ndim != 4:
        raise ValueError(
            f"substrate='blur': expected images [B, C, H, W], got x of shape "
            f"{list(x.shape)}; pass 'zeros', 'mean', a number, a tensor or a callable"
        )
    return make_baseline(
        substrate, x, generator, name="substrate", extra={"zero": torch.zeros_like, "mean": _mean}
    )


def _mean(x: torch.Tensor) -> torch.Tensor:
    """Each sample's mean (per channel for images)."""
    dims = tuple(range(2, x.ndim)) if x.ndim == 4 else tuple(range(1, x.ndim))
    return x.mean(dims, keepdim=True).expand_as(x)


def _features(features: str | None, x: torch.Tensor) -> str:
    if features is None:
        return "pixels" if x.ndim == 4 else "elements"
    if features not in ("pixels", "elements"):
        raise ValueError(f"features: expected 'pixels' or 'elements', got {features!r}")
    if features == "pixels" and x.ndim != 4:
        raise ValueError(
            f"features='pixels': expected images [B, C, H, W], got x of shape {list(x.shape)}; "
            "use features='elements'"
        )
    return features


def _check_steps(steps: object, d: int, is_road: bool) -> int:
    low = 2 if is_road else 1
    if isinstance(steps, bool) or not isinstance(steps, int) or not low <= steps <= d:
        raise ValueError(
            f"steps: expected an int from {low} to the number of features ({d}), got {steps!r}"
        )
    return steps if is_road else steps + 1
