"""ROAD's noisy linear imputation: fill removed pixels from their neighbours, plus a little noise.

Rong et al. 2022 ("A Consistent and Efficient Evaluation Strategy for Attribution Methods")
replace removed pixels by the solution of a sparse linear system in which every removed pixel is
the weighted mean of its eight neighbours (direct neighbours 1/6, diagonal ones 1/12; at the
border, of those inside the image), then add Gaussian noise. Unlike a constant substrate, the
result does not reveal the shape of the removed set, which a model could otherwise read.

Many masks are solved at once: their systems are blocks of one sparse matrix, factorised once.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import csc_matrix
from scipy.sparse.linalg import splu

__all__ = ["noisy_linear_imputation"]

# (dy, dx, weight): the eight neighbours of a pixel and their weights in its mean.
_NEIGHBOURS = tuple(
    (dy, dx, 1 / 6 if dy == 0 or dx == 0 else 1 / 12)
    for dy in (-1, 0, 1)
    for dx in (-1, 0, 1)
    if (dy, dx) != (0, 0)
)


def noisy_linear_imputation(
    x: torch.Tensor,
    removed: torch.Tensor,
    *,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Replace the ``removed`` pixels of images by ROAD's noisy linear imputation.

    Each removed pixel becomes the weighted mean of its neighbours inside the image (weight
    1/6 for the four direct neighbours, 1/12 for the four diagonal ones, renormalised at the
    border), solved jointly for all removed pixels of an image (one linear system per image;
    every channel is a right-hand side), plus Gaussian noise of standard deviation ``noise``.
    Kept pixels are returned unchanged.

    Parameters
    ----------
    x
        Images ``[R, C, H, W]``.
    removed
        ``[R, H, W]`` bool: the pixels to impute. An image must keep at least one pixel: with
        every pixel removed there is nothing to impute from (the system is singular).
    noise
        Standard deviation of the noise added to imputed pixels, in input units (ROAD's
        default 0.01); 0 gives the plain linear imputation.
    generator
        The random generator for the noise (default: a fresh, randomly seeded one).

    Returns
    -------
    torch.Tensor
        ``[R, C, H, W]``, a new tensor of ``x``'s dtype and device.

    Examples
    --------
    >>> import torch
    >>> x = torch.arange(9.0).reshape(1, 1, 3, 3)     # a linear ramp
    >>> removed = torch.zeros(1, 3, 3, dtype=torch.bool)
    >>> removed[0, 1, 1] = True
    >>> noisy_linear_imputation(x, removed, noise=0.0)[0, 0, 1, 1]   # the mean of the ramp
    tensor(4.)
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        what = f"{x.dtype} {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected floating images [R, C, H, W], got {what}")
    r, c, h, w = x.shape
    if (
        not isinstance(removed, torch.Tensor)
        or removed.dtype != torch.bool
        or tuple(removed.shape) != (r, h, w)
    ):
        what = (
            f"{removed.dtype} {list(removed.shape)}"
            if isinstance(removed, torch.Tensor)
            else type(removed).__name__
        )
        raise ValueError(f"removed: expected a bool mask [R, H, W] = [{r}, {h}, {w}], got {what}")
    if isinstance(noise, bool) or not isinstance(noise, int | float) or not noise >= 0:
        raise ValueError(f"noise: expected a non-negative standard deviation, got {noise!r}")
    flat = removed.reshape(r, h * w)
    everything = flat.all(1)
    if bool(everything.any()):
        raise ValueError(
            f"removed: images {everything.nonzero().flatten().tolist()[:8]} remove every pixel; "
            "the imputation needs at least one kept pixel to impute from"
        )
    out = x.detach().clone(memory_format=torch.contiguous_format)
    if not bool(flat.any()):
        return out

    m = flat.cpu().numpy()
    values = x.detach().reshape(r, c, h * w).to("cpu", torch.float64).numpy()
    # Number the removed pixels of all images consecutively: image blocks of one system.
    var = np.cumsum(m.ravel()).reshape(r, h * w) - 1
    unknowns = int(m.sum())
    rows_i, rows_p = np.nonzero(m)  # image and pixel of every unknown, in numbering order
    own = var[rows_i, rows_p]

    diag = np.zeros(unknowns)
    rhs = np.zeros((unknowns, c))
    ii, jj, vv = [], [], []
    py, px = np.divmod(rows_p, w)
    for dy, dx, weight in _NEIGHBOURS:
        qy, qx = py + dy, px + dx
        inside = (qy >= 0) & (qy < h) & (qx >= 0) & (qx < w)
        src = own[inside]
        img = rows_i[inside]
        q = (qy * w + qx)[inside]
        diag[src] += weight
        gone = m[img, q]
        ii.append(src[gone])
        jj.append(var[img[gone], q[gone]])
        vv.append(np.full(int(gone.sum()), -weight))
        kept = ~gone
        # One neighbour per offset: no unknown appears twice here, so += does not drop terms.
        rhs[src[kept]] += weight * values[img[kept], :, q[kept]]
    ii.append(own)
    jj.append(own)
    vv.append(diag)
    a = csc_matrix(
        (np.concatenate(vv), (np.concatenate(ii), np.concatenate(jj))), shape=(unknowns, unknowns)
    )
    solved = splu(a).solve(rhs)  # [unknowns, C]

    filled = torch.from_numpy(solved).to(device=x.device, dtype=x.dtype)
    if noise > 0:
        g = generator
        if g is None:
            g = torch.Generator(device=x.device)
            g.seed()
        filled = filled + noise * torch.randn(
            filled.shape, generator=g, device=x.device, dtype=x.dtype
        )
    image = torch.from_numpy(rows_i).to(x.device)
    pixel = torch.from_numpy(rows_p).to(x.device)
    view = out.view(r, c, h * w)
    view[image, :, pixel] = filled
    return out
