"""Integrated Gradients for every requested class, sharing the path points across classes."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from .. import targets
from ..attribution import Attribution
from . import _stream
from ._adaptive import refine
from ._quadrature import quadrature
from ._request import Request, describe, generator
from .baselines import make_baseline, make_layer_baseline
from .records import MethodRecord, Option

__all__ = ["integrated_gradients"]


def integrated_gradients(
    model: Callable,
    x: torch.Tensor,
    classes: targets.Classes = None,
    *,
    baseline: float | str | torch.Tensor | Callable = 0.0,
    steps: int | str = 50,
    rule: str | None = None,
    tol: float = 0.01,
    max_steps: int = 16385,
    seed: int | None = None,
    output: str | Callable = "logits",
    strategy: str = "auto",
    max_memory: int | str | None = None,
    layer: nn.Module | str | None = None,
    allow_random: bool = False,
    **forward_kwargs,
) -> Attribution:
    """Integrated Gradients ``(x - b) * integral_0^1 dF_k/dx (b + t (x - b)) dt`` for all classes.

    Every path point is one engine call's worth of rows for all ``K`` classes at once; the points
    are streamed in chunks under ``max_memory`` and summed with the rule's weights.

    Parameters
    ----------
    model, x, classes, output, strategy, max_memory, layer, allow_random, **forward_kwargs
        As in :func:`saliency.class_jacobian`. ``top_k`` picks classes at ``x``, not at the path
        points. Per-sample forward kwargs follow their sample along its path. With ``layer``
        the path runs in the layer's output space, from the layer's output at the baseline to
        its output at ``x`` (Captum's ``LayerIntegratedGradients``), while the model keeps
        running on ``x``.
    baseline
        Where the paths start: a number, a tensor broadcastable to ``x``, a callable of ``x``,
        ``"zeros"``, ``"blur"`` (Gaussian blur of images ``[B, C, H, W]``, sigma ``max(H, W) / 10``,
        see :func:`saliency.methods.baselines.blur`) or ``"uniform"`` (noise uniform in each
        sample's ``[min, max]``, drawn with ``seed``). With ``layer`` these are inputs whose
        layer output starts the path (for token ids: a pad id, or a tensor of ids), or a
        floating tensor of the layer output's shape (embeddings) used as the start itself.
    steps
        Points on the path, or ``"auto"``: start with 33 points of the trapezoid rule and halve
        the spacing only for the (sample, class) rows whose relative completeness gap
        ``|delta| / |F(x) - F(b)|`` exceeds ``tol``, reusing every point computed so far, up to
        ``max_steps`` points; ``params["steps_used"]`` records each row's count. A row whose
        change ``|F(x) - F(b)|`` is below a thousandth of the sample's largest score is held to
        that floor instead (as :func:`saliency.audit.completeness` measures). A row that its
        rate of convergence shows cannot reach ``tol`` within ``max_steps`` is stopped early;
        rows left above ``tol`` are counted in ``params["unconverged"]`` (``None`` when all
        converged), with a warning.
    rule
        ``"gausslegendre"`` (Captum's default, the default here for a fixed ``steps``),
        ``"riemann_left"``, ``"riemann_right"``, ``"riemann_middle"`` or ``"riemann_trapezoid"``
        (the only nested rule, and the one ``steps="auto"`` uses).
    tol, max_steps
        The relative gap ``steps="auto"`` aims at, and its cap (``2^j + 1`` points).
    seed
        Seeds the ``"uniform"`` baseline (``None`` draws a seed, recorded in ``params``).

    Returns
    -------
    Attribution
        ``values`` ``[B, K, *x.shape[1:]]`` (with ``layer``: ``[B, K, *layer_output]``), and
        ``delta`` ``[B, K]``, the completeness gap ``sum(values) - (F(x) - F(baseline))`` with
        ``F`` the transformed output of the row's class (the contrast's difference for
        contrasts). Captum's convergence delta has the same sign.

    Notes
    -----
    Porting from Captum: the rule names and defaults are Captum's, with one deliberate
    difference. Captum's ``riemann_trapezoid`` weights its ``n`` points on ``linspace(0, 1, n)``
    by ``1 / n`` (halved at the ends), which sums to ``1 - 1 / n``, so its attributions fall short
    by that factor (0.75x at 4 steps); this uses the textbook weights ``1 / (n - 1)``, so it
    equals Captum's result times ``n / (n - 1)``. A Captum per-sample ``target`` list is a
    ``[B, 1]`` long tensor here. With ``layer``, ``F(baseline)`` is the model on ``x`` with the
    layer's output set to the path's start, so ``delta`` measures the path integral's own error
    even when the model also reads ``x`` elsewhere (attention masks from token ids).

    Examples
    --------
    >>> import torch, saliency
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> x = torch.randn(4, 5, dtype=torch.float64)
    >>> a = saliency.integrated_gradients(model.double(), x, steps=32)
    >>> a.values.shape, a.delta.shape
    (torch.Size([4, 3, 5]), torch.Size([4, 3]))
    >>> bool(a.delta.abs().max() < 1e-6)
    True
    """
    adaptive = _check_steps(steps, rule, tol, max_steps)
    rule = rule or ("riemann_trapezoid" if adaptive else "gausslegendre")
    alphas, weights = quadrature(rule, 33 if adaptive else steps)
    req = Request(
        model, x, classes, output, strategy, max_memory, forward_kwargs,
        layer=layer, allow_random=allow_random,
    )  # fmt: skip
    rng = None
    if isinstance(baseline, str) and baseline == "uniform":
        rng, seed = generator(seed, x.device)
    end = req.point()
    if layer is None:
        start = make_baseline(baseline, req.x, rng)
        at_start = req.forward(start)
    else:
        start = make_layer_baseline(baseline, req, end, rng)
        at_start = req.forward(req.x, layer_value=start.contiguous())
    gap = req.scores(req.outputs) - req.scores(at_start)
    path = _Path(req, start, end)
    integral = path.integral(alphas, weights)  # [B, K, *shape]: the mean gradient on the path
    params = {"baseline": describe(baseline), "steps": steps, "rule": rule, "seed": seed}
    if adaptive:
        used, missed = refine(path, integral, gap, tol=tol, first=33, cap=max_steps)
        params.update(tol=tol, max_steps=max_steps, steps_used=used.tolist(), unconverged=missed)
        if missed is not None:
            _warn_unconverged(missed, tol)
    values = integral.mul_(path.diff.unsqueeze(1))
    delta = values.flatten(2).sum(-1) - gap
    return Attribution(
        values,
        req.rows.ids,
        req.outputs,
        "integrated_gradients",
        req.params(**params),
        delta,
        negatives=req.rows.neg,
    )


RECORDS = (
    MethodRecord(
        name="integrated_gradients",
        aliases=("ig",),
        function=integrated_gradients,
        summary="gradients integrated along a path from a baseline (Integrated Gradients)",
        doc="methods/integrated-gradients.md",
        options=(Option(name="steps", type=int, default=50, minimum=1, help="path points"),),
        provides=("input_maps", "delta"),
        loses={"layer": ("input_maps",)},
        seed=True,
    ),
)


class _Path:
    """Straight paths ``start + t (end - start)`` of every sample, and gradients along them."""

    def __init__(self, req: Request, start: torch.Tensor, end: torch.Tensor) -> None:
        self.req, self.start = req, start
        self.diff = end - start
        self.shape = end.shape[1:]

    def integral(
        self,
        alphas,
        weights,
        samples: torch.Tensor | None = None,
        ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``sum_i w_i J(start + a_i diff)``: ``[B, K, *shape]``, or for ``samples`` only (a
        1-D index) and their per-sample class ``ids`` ``[b, k]``."""
        req, x = self.req, self.start
        alphas = torch.as_tensor(alphas, dtype=x.dtype, device=x.device)
        weights = torch.as_tensor(weights, dtype=x.dtype, device=x.device)
        start, diff = self.start, self.diff
        if samples is not None:
            start, diff = start[samples], diff[samples]
        b, k = start.shape[0], (req.k if ids is None else ids.shape[1])
        total = torch.zeros(b, k, *self.shape, dtype=x.dtype, device=x.device)
        held = total.numel() * total.element_size()
        rows, budget = _stream.plan_rows(req.budget, held, start, k, len(alphas) * b)
        for points, part in _stream.chunks(len(alphas), b, rows):
            m = points.stop - points.start
            a = alphas[points].view(m, 1, *[1] * len(self.shape))
            values = (start[part] + a * diff[part]).reshape(-1, *self.shape)
            g = self._jacobian(values, part, m, budget, held, samples, ids)
            # weighted sum over the chunk's points: [m] x [m, rows, K * D] -> [rows, K * D]
            total[part] += torch.tensordot(weights[points], g.reshape(m, -1), dims=1).view_as(
                total[part]
            )
            del g
        return total

    def _jacobian(self, values, part, m, budget, held, samples, ids) -> torch.Tensor:
        which = part if samples is None else samples[part]
        ids = None if ids is None else ids[part]
        if self.req.layer is None:
            return self.req.jacobian(which, m, budget, held, inputs=values, ids=ids)
        return self.req.jacobian(which, m, budget, held, layer_value=values, ids=ids)


def _warn_unconverged(missed: dict, tol: float) -> None:
    early = missed["stopped_early"]
    why = (
        f"; {early} stopped early, their gap shrinking too slowly to reach tol within "
        "max_steps (a jump or a singular gradient along the path)"
        if early
        else ""
    )
    warnings.warn(
        f"integrated_gradients: steps='auto' left {missed['rows']} of {missed['of']} "
        f"(sample, class) rows above tol={tol} (worst relative gap "
        f"{missed['worst_relative_gap']:.3g}{why}). Their attributions do not add up to "
        "F(x) - F(baseline): try another baseline (a zero input is a singular point of "
        "scale-invariant models), or more points with a fixed steps=. params['unconverged'] "
        "records this; delta and params['steps_used'] give each row.",
        stacklevel=3,
    )


def _check_steps(steps: int | str, rule: str | None, tol: float, max_steps: int) -> bool:
    if isinstance(steps, str):
        if steps != "auto":
            raise ValueError(f"steps: expected a positive int or 'auto', got {steps!r}")
        if rule not in (None, "riemann_trapezoid"):
            raise ValueError(
                f"rule: steps='auto' refines the trapezoid rule, whose points nest when the "
                f"spacing halves; got rule={rule!r} (leave rule out)"
            )
        if isinstance(tol, bool) or not isinstance(tol, int | float) or not tol > 0:
            raise ValueError(f"tol: expected a positive relative gap such as 0.01, got {tol!r}")
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 33:
            raise ValueError(f"max_steps: expected an int >= 33, got {max_steps!r}")
        return True
    return False
