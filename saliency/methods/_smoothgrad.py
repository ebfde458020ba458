"""SmoothGrad, SmoothGrad² and VarGrad over any method, sharing the noisy samples across classes."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator

import torch

from .. import targets
from ..attribution import Attribution
from . import _stream
from ._gradients import gradients
from ._request import Request, describe, generator
from .records import MethodRecord, Option

__all__ = ["smoothgrad"]

VARIANTS = ("mean", "squared", "var")
_SHARED = ("classes", "output", "strategy", "max_memory")


def smoothgrad(
    model: Callable,
    x: torch.Tensor,
    classes: targets.Classes = None,
    *,
    n_samples: int = 50,
    noise: float | None = None,
    noise_std: float | torch.Tensor | None = None,
    variant: str = "mean",
    seed: int | None = None,
    method: Callable[..., Attribution] | None = None,
    output: str | Callable = "logits",
    strategy: str = "auto",
    max_memory: int | str | None = None,
    layer: torch.nn.Module | str | None = None,
    allow_random: bool = False,
    **forward_kwargs,
) -> Attribution:
    """Average a method's attributions over noisy copies of ``x``, for all classes at once.

    The ``n_samples`` noisy copies of the batch are shared by every class and streamed through
    ``method`` in chunks under ``max_memory``, keeping only running sums.

    Parameters
    ----------
    model, x, classes, output, strategy, max_memory, layer, allow_random, **forward_kwargs
        As in :func:`saliency.class_jacobian`. ``top_k`` picks classes at ``x``, not at the noisy
        copies. Per-sample forward kwargs follow their sample into its copies. With ``layer``
        the noise is added to the layer's output (where the gradient is taken, so token ids
        work), and the model keeps running on ``x``; to smooth a method of your own over noisy
        *inputs*, give it the layer instead: ``method=partial(saliency.gradcam, layer=...)``.
    n_samples
        Noisy copies per sample.
    noise
        Standard deviation of the Gaussian noise as a fraction of each sample's value range
        ``max - min`` (the SmoothGrad paper's convention; it recommends 0.1 to 0.2). Default 0.15
        when ``noise_std`` is not given. A sample with a zero range gets no noise (with a
        warning).
    noise_std
        An absolute standard deviation instead of ``noise`` (Captum's ``stdevs``): a number, or
        one per sample (a tensor ``[B]``).
    variant
        ``"mean"`` (SmoothGrad), ``"squared"`` (SmoothGrad², the mean of squares) or ``"var"``
        (VarGrad, the variance over the copies, dividing by ``n_samples`` like Captum). All
        three come from the same passes.
    seed
        Seeds a private generator (the global RNG is untouched): copy ``j`` of the batch is
        ``x + std * torch.randn(x.shape, generator=g)``, drawn for ``j = 0, 1, ...`` in order, so
        a seed reproduces the result bit for bit on the same device and the same chunking.
        ``None`` draws a seed and records it in ``params``.
    method
        The method to smooth, :func:`saliency.gradients` by default; any callable following
        :class:`saliency.methods.Method` (Grad-CAM and :func:`saliency.from_captum` included).
        Give it arguments of its own with :func:`functools.partial`, e.g.
        ``method=partial(saliency.integrated_gradients, steps=20)`` (it gets ``classes``,
        ``output``, ``strategy``, ``max_memory`` and the forward kwargs from here).

    Returns
    -------
    Attribution
        ``values`` of the smoothed method's shape (``[B, K, *x.shape[1:]]`` for gradients),
        method ``"smoothgrad"``; ``params["method"]`` and ``params["method_params"]`` record the
        smoothed method.

    Notes
    -----
    Porting from Captum: ``NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad",
    stdevs=s, target=t, abs=False)`` is ``smoothgrad(model, x, t_tensor, noise_std=s)`` for one
    class, where a per-sample ``target`` list becomes a ``[B, 1]`` long tensor;
    ``"smoothgrad_sq"`` and ``"vargrad"`` are ``variant="squared"`` and ``"var"``. Captum's
    ``stdevs`` is absolute, ``noise`` here is relative to each sample's range.

    Examples
    --------
    >>> import torch, saliency
    >>> model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> x = torch.randn(4, 5)
    >>> a = saliency.smoothgrad(model, x, n_samples=20, seed=0)
    >>> a.values.shape
    torch.Size([4, 3, 5])
    >>> b = saliency.smoothgrad(model, x, n_samples=20, seed=0)
    >>> torch.equal(a.values, b.values)
    True
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples: expected a positive int, got {n_samples!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {list(VARIANTS)}, got {variant!r}")
    if method is not None and not callable(method):
        raise TypeError(
            f"method: expected None or a method such as saliency.integrated_gradients, "
            f"got {type(method).__name__}"
        )
    if noise is not None and noise_std is not None:
        raise ValueError(
            f"noise and noise_std: give one, not both (got noise={noise!r}, "
            f"noise_std={noise_std!r}); noise is relative to each sample's range, noise_std "
            "absolute"
        )
    if layer is not None and method is not None:
        raise ValueError(
            "layer: smoothgrad(layer=...) adds the noise to the layer's output for its own "
            "gradients; to smooth another method over noisy inputs, give that method the layer, "
            "e.g. method=functools.partial(saliency.gradcam, layer=...)"
        )
    req = Request(
        model, x, classes, output, strategy, max_memory, forward_kwargs,
        layer=layer, allow_random=allow_random,
    )  # fmt: skip
    point = req.point()  # where the noise goes: x, or the layer's output at x
    std = _std(point, noise, noise_std)
    rng, seed = generator(seed, point.device)
    inner = gradients if method is None else method
    inner_info = ("gradients", {}) if layer is not None else None

    b, k, shape, n = req.batch, req.k, point.shape[1:], n_samples
    block = b * k * point[0].numel() * point.element_size()
    held = block * (3 if variant == "var" else 1)
    rows, budget = _stream.plan_rows(req.budget, held, point, k, n * b)

    def attribute(values: torch.Tensor, samples: slice, m: int) -> torch.Tensor:
        nonlocal inner_info
        if layer is not None:
            return req.jacobian(samples, m, budget, held, layer_value=values)
        a = req.call(inner, values, samples, m, budget, held)
        inner_info = inner_info or (a.method, a.params)
        return a.values

    # VarGrad sums deviations from the attribution at x, not raw values: sum-of-squares minus
    # squared sum would cancel catastrophically where the noise changes little.
    shift = attribute(point, slice(0, b), 1) if variant == "var" else None
    sums = squares = None
    draws = _Draws(point, std, rng)
    for points, samples in _stream.chunks(n, b, rows):
        m = points.stop - points.start
        values = (point[samples] + draws(points)[:, samples]).reshape(-1, *shape)
        g = _stream.writable(attribute(values, samples, m))
        g = g.reshape(m, -1, k, *g.shape[2:])
        if sums is None:  # the method's own shape (Grad-CAM maps are not input-shaped)
            sums = g.new_zeros(b, k, *g.shape[3:])
            squares = torch.zeros_like(sums) if variant == "var" else None
        if variant == "mean":
            sums[samples] += g.sum(0)
        elif variant == "squared":
            sums[samples] += g.square_().sum(0)
        else:
            g -= shift[samples]
            sums[samples] += g.sum(0)
            squares[samples] += g.square_().sum(0)
        del g
    values = sums.div_(n)
    if variant == "var":
        values = squares.div_(n).sub_(values.square_()).clamp_(min=0)
    params = req.params(
        n_samples=n,
        noise=None if noise_std is not None else (0.15 if noise is None else noise),
        noise_std=describe(noise_std),
        variant=variant,
        seed=seed,
        method=inner_info[0],
        method_params={k: v for k, v in inner_info[1].items() if k not in _SHARED},
    )
    return Attribution(
        values, req.rows.ids, req.outputs, "smoothgrad", params, negatives=req.rows.neg
    )


RECORDS = (
    MethodRecord(
        name="smoothgrad",
        function=smoothgrad,
        summary="gradients averaged over noisy copies of each input (SmoothGrad)",
        doc="methods/smoothgrad.md",
        options=(
            Option(
                name="n_samples", type=int, default=50, minimum=1, help="noisy copies per input"
            ),
            Option(
                name="noise",
                type=float,
                default=0.15,
                minimum=0,
                help="noise standard deviation, a fraction of each input's value range",
            ),
        ),
        loses={"layer": ("input_maps",)},
        seed=True,
    ),
)


def _std(
    x: torch.Tensor, noise: float | None, noise_std: float | torch.Tensor | None
) -> torch.Tensor:
    """The noise standard deviation of every sample, ``[B]``."""
    if isinstance(noise_std, torch.Tensor):
        if noise_std.shape not in ((), (x.shape[0],)) or not noise_std.is_floating_point():
            raise ValueError(
                f"noise_std: expected a number or a floating tensor [B] = [{x.shape[0]}], got "
                f"{noise_std.dtype} of shape {list(noise_std.shape)}"
            )
        if not bool(torch.isfinite(noise_std).all()) or bool((noise_std < 0).any()):
            raise ValueError("noise_std: expected finite, non-negative standard deviations")
        return noise_std.detach().to(x.device, x.dtype).expand(x.shape[0]).clone()
    if noise_std is not None:
        _check_amount("noise_std", noise_std)
        return torch.full((x.shape[0],), float(noise_std), dtype=x.dtype, device=x.device)
    noise = 0.15 if noise is None else noise
    _check_amount("noise", noise)
    flat = x.flatten(1)
    span = flat.max(1).values - flat.min(1).values
    flat_samples = (span == 0).nonzero().flatten().tolist()
    if flat_samples and noise > 0:
        warnings.warn(
            f"x: samples {flat_samples[:10]} have a zero value range (max == min), so "
            f"noise={noise} relative to the range adds no noise to them; pass noise_std= for an "
            "absolute standard deviation",
            stacklevel=3,
        )
    return noise * span


def _check_amount(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{name}: expected a finite number, got {value!r}")
    if value < 0:
        raise ValueError(f"{name}: a standard deviation cannot be negative, got {value!r}")


class _Draws:
    """Noise for copy ``j`` of the batch, drawn in order ``j = 0, 1, ...`` whatever the chunking."""

    def __init__(self, x: torch.Tensor, std: torch.Tensor, rng: torch.Generator) -> None:
        self.x, self.rng = x, rng
        self.std = std.view(-1, *[1] * (x.ndim - 1))
        self.last: tuple[int, torch.Tensor] | None = None

    def __call__(self, points: slice) -> torch.Tensor:
        """Noise ``[m, B, *input]`` for the copies ``points``."""
        return torch.stack(list(self._each(points)))

    def _each(self, points: slice) -> Iterator[torch.Tensor]:
        for j in range(points.start, points.stop):
            if self.last is None or self.last[0] != j:
                eps = torch.randn(
                    self.x.shape, generator=self.rng, dtype=self.x.dtype, device=self.x.device
                )
                self.last = (j, eps.mul_(self.std))
            yield self.last[1]
