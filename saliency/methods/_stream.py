"""Stream ``n`` points per sample (noisy copies, path points) through the engine in chunks.

Rows are laid out point-major: a chunk is a rectangle of ``m`` points times a slice of samples,
``m * len(samples)`` rows in one engine call, so that only one ``[rows, K, *input]`` block is alive
while the caller adds it into its running sums.

Chunk size. With ``max_memory``, the running sums (``held`` bytes) are set aside first; each engine
call gets the rest as its own budget, and a chunk holds as many rows as keep its result block under
a quarter of that (the engine also needs the block twice over and the activations; it splits a
call further when they do not fit). Without ``max_memory``, a chunk holds at most
``DEFAULT_ROWS`` rows, ``DEFAULT_BLOCK`` bytes of result and ``DEFAULT_INPUT`` bytes of input.
The input bound stands in for the saved activations, which grow with it: on a CPU, small chunks
keep them in cache for the ``K`` backward passes that reread them (a 3x32x32 CNN ran its
backward passes about 1.5x faster per image at 32 rows than at 512); a GPU wants large chunks.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = ["DEFAULT_BLOCK", "DEFAULT_INPUT", "DEFAULT_ROWS", "chunks", "plan_rows", "writable"]

DEFAULT_ROWS = 1024
DEFAULT_BLOCK = 64 * 10**6
DEFAULT_INPUT = {"cpu": 10**6, "other": 64 * 10**6}


def plan_rows(
    budget: int | None, held: int, x: torch.Tensor, k: int, total: int
) -> tuple[int, int | None]:
    """Rows per engine call and each call's ``max_memory``, for ``total`` rows of ``x``-like
    inputs and ``k`` classes."""
    input_bytes = x[0].numel() * x.element_size()
    row_bytes = k * input_bytes  # one row of the result
    if budget is None:
        cap = DEFAULT_INPUT["cpu" if x.device.type == "cpu" else "other"]
        rows = min(DEFAULT_ROWS, DEFAULT_BLOCK // row_bytes, cap // input_bytes)
        return max(1, min(rows, total)), None
    per_call = budget - held
    if per_call <= 0:
        raise MemoryError(
            f"max_memory={budget} bytes is too small: the running sums alone need {held} bytes "
            "(copies of [B, K, *input]); raise max_memory or explain fewer samples or classes "
            "per call"
        )
    return max(1, min(total, per_call // (4 * row_bytes))), per_call


def chunks(n_points: int, batch: int, rows: int) -> Iterator[tuple[slice, slice]]:
    """``(points, samples)`` rectangles of at most ``rows`` rows covering every point and sample.

    Whole batches of points while ``rows >= batch``, else slices of samples one point at a time.

    Examples
    --------
    >>> [(p.start, p.stop, s.start, s.stop) for p, s in chunks(3, 2, 4)]
    [(0, 2, 0, 2), (2, 3, 0, 2)]
    >>> [(p.start, s.start, s.stop) for p, s in chunks(2, 3, 2)]
    [(0, 0, 2), (0, 2, 3), (1, 0, 2), (1, 2, 3)]
    """
    if rows >= batch:
        m = rows // batch
        for j in range(0, n_points, m):
            yield slice(j, min(j + m, n_points)), slice(0, batch)
        return
    for j in range(n_points):
        for b in range(0, batch, rows):
            yield slice(j, j + 1), slice(b, min(b + rows, batch))


def writable(block: torch.Tensor) -> torch.Tensor:
    """``block`` itself when it can be updated in place, else a copy.

    Engine results are fresh tensors, but a constant Jacobian may come back as a broadcast view
    (a zero stride), which in-place arithmetic refuses.
    """
    if any(s == 0 and n > 1 for s, n in zip(block.stride(), block.shape, strict=True)):
        return block.clone()
    return block
