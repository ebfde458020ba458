"""Similarity of attribution maps, batched: Spearman rank correlation, cosine and SSIM in torch.

Every function compares maps along their trailing dimensions and broadcasts over the leading
ones, so one call compares all samples, classes and randomisation steps at once; the ``*_matrix``
forms compare every pair of maps in a stack (``[..., K, D]`` to ``[..., K, K]``) without a loop
over pairs. An undefined similarity (a constant map for Spearman, an all-zero map for cosine, two
equal constant maps for SSIM) is NaN, never a made-up number.

Examples
--------
>>> import torch
>>> a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
>>> spearman(a, torch.tensor([1.0, 5.0, 7.0, 9.0]))
tensor([ 1., -1.], dtype=torch.float64)
>>> spearman_matrix(a)
tensor([[ 1., -1.],
        [-1.,  1.]], dtype=torch.float64)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "SIMILARITIES",
    "check_similarity",
    "compare",
    "compare_matrix",
    "cosine",
    "cosine_matrix",
    "prepare_maps",
    "ranks",
    "spearman",
    "spearman_matrix",
    "ssim",
    "ssim_matrix",
]

SIMILARITIES = ("spearman", "ssim", "cosine")

# Wang et al. (2004)'s constants, as in scikit-image's structural_similarity.
_K1, _K2 = 0.01, 0.03


def ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks along the last dimension, ties given their average rank (SciPy's rankdata).

    Examples
    --------
    >>> ranks(torch.tensor([3.0, 1.0, 3.0, 2.0]))
    tensor([3.5000, 1.0000, 3.5000, 2.0000], dtype=torch.float64)
    """
    ordered, order = x.sort(dim=-1)
    n = x.shape[-1]
    pos = torch.arange(n, device=x.device).expand_as(ordered)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    ends = torch.ones_like(starts)
    ends[..., :-1] = starts[..., 1:]
    # A tie group runs from its first to its last sorted position; every member gets the mean.
    first = torch.where(starts, pos, 0).cummax(-1).values
    last = torch.where(ends, pos, n - 1).flip(-1).cummin(-1).values.flip(-1)
    mean_rank = (first + last).to(_work_dtype(x)) / 2 + 1
    return torch.empty_like(mean_rank).scatter_(-1, order, mean_rank)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of ``a`` and ``b`` along their last dimension (broadcast).

    The Pearson correlation of the average ranks, as :func:`scipy.stats.spearmanr`; NaN where
    either map is constant.
    """
    return _pearson(_standard(ranks(a)), _standard(ranks(b)))


def spearman_matrix(maps: torch.Tensor) -> torch.Tensor:
    """Spearman correlation of every pair of maps: ``[..., K, D]`` to ``[..., K, K]``.

    Each map is ranked once; the ``K x K`` correlations are one batched matrix product.
    """
    return _pearson_matrix(_standard(ranks(maps)))


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of ``a`` and ``b`` along their last dimension (broadcast); NaN for a
    zero map."""
    dtype = _work_dtype(a)
    return _pearson(a.to(dtype), b.to(dtype))


def cosine_matrix(maps: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pair of maps: ``[..., K, D]`` to ``[..., K, K]``."""
    return _pearson_matrix(maps.to(_work_dtype(maps)))


def ssim(a: torch.Tensor, b: torch.Tensor, *, dims: int = 2, window: int = 7) -> torch.Tensor:
    """Mean structural similarity (SSIM) of ``a`` and ``b`` over their last ``dims`` dimensions.

    Wang et al. (2004) with scikit-image's defaults: a uniform ``window``-wide window (narrowed
    to the largest odd size that fits a smaller map), sample covariances, ``K1 = 0.01``,
    ``K2 = 0.03``, averaged over the windows that lie inside the map. The data range is that of
    the two maps together (``max - min`` over both), as Quantus passes it. ``dims`` is 1 for
    signals ``[..., D]`` and 2 for images ``[..., H, W]``; leading dimensions broadcast.

    Examples
    --------
    >>> img = torch.rand(8, 8)
    >>> round(float(ssim(img, img)), 6), bool(ssim(img, 1 - img) < 0)
    (1.0, True)
    """
    a, b = torch.broadcast_tensors(a, b)
    dtype = _work_dtype(a)
    a, b = a.to(dtype), b.to(dtype)
    w = _window(a.shape, dims, window)
    lead = a.shape[: a.ndim - dims]
    pool = _pool(a.shape[a.ndim - dims :], w)
    mu_a, mu_b = pool(a), pool(b)
    var_a, var_b = pool(a * a) - mu_a * mu_a, pool(b * b) - mu_b * mu_b
    cov = pool(a * b) - mu_a * mu_b
    reduce = tuple(range(len(lead), len(lead) + dims))
    hi = torch.maximum(a.amax(reduce), b.amax(reduce))
    span = (hi - torch.minimum(a.amin(reduce), b.amin(reduce))).reshape(*lead, *([1] * dims))
    s = _ssim_map(mu_a, mu_b, var_a, var_b, cov, span, w**dims)
    return s.mean(reduce)


def ssim_matrix(maps: torch.Tensor, *, dims: int = 2, window: int = 7) -> torch.Tensor:
    """SSIM of every pair of maps: ``[..., K, *spatial]`` to ``[..., K, K]``, as :func:`ssim`.

    Window means and variances are computed once per map; only the cross terms are per pair.
    """
    dtype = _work_dtype(maps)
    maps = maps.to(dtype)
    w = _window(maps.shape, dims, window)
    pool = _pool(maps.shape[maps.ndim - dims :], w)
    spatial = tuple(range(maps.ndim - dims, maps.ndim))
    mu = pool(maps)
    var = pool(maps * maps) - mu * mu
    i, j = maps.unsqueeze(-dims - 1), maps.unsqueeze(-dims - 2)  # [..., K, 1, *s], [..., 1, K, *s]
    mu_i, mu_j = mu.unsqueeze(-dims - 1), mu.unsqueeze(-dims - 2)
    cov = pool(i * j) - mu_i * mu_j
    hi, lo = maps.amax(spatial), maps.amin(spatial)
    span = torch.maximum(hi.unsqueeze(-1), hi.unsqueeze(-2)) - torch.minimum(
        lo.unsqueeze(-1), lo.unsqueeze(-2)
    )
    span = span.reshape(*span.shape, *([1] * dims))
    s = _ssim_map(
        mu_i, mu_j, var.unsqueeze(-dims - 1), var.unsqueeze(-dims - 2), cov, span, w**dims
    )
    return s.mean(tuple(range(s.ndim - dims, s.ndim)))


def prepare_maps(
    values: torch.Tensor, map_ndim: int, *, abs: bool, sum_channels: bool = True
) -> tuple[torch.Tensor, int]:
    """The maps that are compared, and their rank: channels summed, ``|.|``, scaled to max 1.

    ``values`` is ``[..., *map]`` with maps of rank ``map_ndim``. A map of rank 3 is an image
    ``[C, H, W]``: its channels are summed (signed, as Quantus's explanation functions and
    Captum's pictures do) into ``[H, W]`` when ``sum_channels``. Then absolute values are taken
    when ``abs``, and each map is divided by its largest absolute value (an all-zero map stays
    zero). The scaling changes nothing for Spearman and cosine; SSIM then compares structure,
    not scale.
    """
    maps = values.detach()
    if sum_channels and map_ndim == 3:
        maps, map_ndim = maps.sum(-3), 2
    if abs:
        maps = maps.abs()
    peak = maps.abs().amax(tuple(range(maps.ndim - map_ndim, maps.ndim)), keepdim=True)
    return maps / torch.where(peak > 0, peak, torch.ones_like(peak)), map_ndim


def compare(a: torch.Tensor, b: torch.Tensor, similarity: str, map_ndim: int) -> torch.Tensor:
    """``similarity`` of maps ``a`` and ``b`` whose last ``map_ndim`` dimensions are one map."""
    if similarity == "ssim":
        return ssim(a, b, dims=_ssim_dims(map_ndim))
    fn = spearman if similarity == "spearman" else cosine
    return fn(a.flatten(-map_ndim), b.flatten(-map_ndim))


def compare_matrix(maps: torch.Tensor, similarity: str, map_ndim: int) -> torch.Tensor:
    """``similarity`` of every pair in a stack ``[..., K, *map]`` of maps, ``[..., K, K]``."""
    if similarity == "ssim":
        return ssim_matrix(maps, dims=_ssim_dims(map_ndim))
    fn = spearman_matrix if similarity == "spearman" else cosine_matrix
    return fn(maps.flatten(-map_ndim))


def check_similarity(value: object, name: str = "similarity") -> str:
    """``value`` if it names a known similarity, else a ValueError naming ``name``."""
    if not isinstance(value, str) or value not in SIMILARITIES:
        raise ValueError(f"{name}: expected one of {list(SIMILARITIES)}, got {value!r}")
    return value


# -- internals ---------------------------------------------------------------------------------
def _work_dtype(x: torch.Tensor) -> torch.dtype:
    # Sums of squared ranks reach D^3 / 12: float64 keeps them exact where the device has it.
    return torch.float32 if x.device.type == "mps" else torch.float64


def _standard(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(-1, keepdim=True)


# A correlation is a . b / sqrt((a . a)(b . b)), clamped into [-1, 1]: rounding can step past
# either end (1.0000000000000002 for a map against itself), and sqrt(s * s) == s exactly in IEEE
# arithmetic, so a map compared with an equal one gives exactly 1. 0 / 0 = NaN on purpose: an
# undefined similarity stays visible (clamp keeps NaN).
def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = torch.broadcast_tensors(a, b)
    return _correlation((a * b).sum(-1), (a * a).sum(-1), (b * b).sum(-1))


def _pearson_matrix(maps: torch.Tensor) -> torch.Tensor:
    gram = maps @ maps.transpose(-1, -2)
    own = gram.diagonal(dim1=-2, dim2=-1)
    return _correlation(gram, own[..., :, None], own[..., None, :])


def _correlation(ab: torch.Tensor, aa: torch.Tensor, bb: torch.Tensor) -> torch.Tensor:
    return (ab / (aa * bb).sqrt()).clamp(-1.0, 1.0)


def _ssim_dims(map_ndim: int) -> int:
    if map_ndim not in (1, 2):
        raise ValueError(
            f"similarity: 'ssim' compares signals [D] or images [H, W] (channels summed), got "
            f"maps with {map_ndim} dimensions; use 'spearman' or 'cosine'"
        )
    return map_ndim


def _window(shape: torch.Size, dims: int, window: int) -> int:
    if dims not in (1, 2):
        raise ValueError(f"dims: expected 1 (signals) or 2 (images), got {dims!r}")
    side = min(shape[len(shape) - dims :])
    w = min(window, side)
    w -= 1 - w % 2  # odd, so that every window has a centre pixel as in scikit-image
    if w < 3:
        raise ValueError(
            f"ssim: maps of shape {tuple(shape[len(shape) - dims :])} are too small for a "
            "3-wide window; use 'spearman' or 'cosine'"
        )
    return w


def _pool(spatial: torch.Size, w: int):
    """A mean over every ``w``-wide window lying inside the map (scikit-image's cropped filter)."""
    dims = len(spatial)
    fn = F.avg_pool1d if dims == 1 else F.avg_pool2d

    def pool(t: torch.Tensor) -> torch.Tensor:
        lead = t.shape[: t.ndim - dims]
        out = fn(t.reshape(-1, 1, *t.shape[t.ndim - dims :]), w, stride=1)
        return out.reshape(*lead, *out.shape[2:])

    return pool


def _ssim_map(mu_a, mu_b, var_a, var_b, cov, span, n):
    unbiased = n / (n - 1)
    c1, c2 = (_K1 * span) ** 2, (_K2 * span) ** 2
    num = (2 * mu_a * mu_b + c1) * (2 * unbiased * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (unbiased * (var_a + var_b) + c2)
    return num / den
