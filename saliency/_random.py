"""Private random generators: the global RNG is never touched, and every seed is recorded."""

from __future__ import annotations

import torch

__all__ = ["generator"]


def generator(seed: int | None, device: torch.device) -> tuple[torch.Generator, int]:
    """A private generator and its seed.

    ``seed=None`` draws fresh entropy; the drawn seed is returned so that the caller can record it
    and the result can be reproduced.

    Examples
    --------
    >>> g, seed = generator(7, torch.device("cpu"))
    >>> again, _ = generator(7, torch.device("cpu"))
    >>> seed, torch.equal(torch.rand(2, generator=g), torch.rand(2, generator=again))
    (7, True)
    """
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed: expected None or a non-negative int, got {seed!r}")
    g = torch.Generator(device=device)
    if seed is None:
        return g, g.seed()
    g.manual_seed(seed)
    return g, seed
