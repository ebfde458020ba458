"""Find the samples of a batch that cannot be explained, so that the rest of the batch can be.

One sample with NaN pixels, or one on which the model's output is NaN or inf, would stop the
engine for the whole batch. Screening finds such samples (non-finite inputs first, then, only when
the batch's forward pass fails, each sample on its own) and says why each one was left out.

Examples
--------
>>> import torch
>>> model = torch.nn.Linear(3, 2)
>>> x = torch.randn(4, 3)
>>> x[1, 0] = float("nan")
>>> keep, problems = screen(model, x, output="logits")
>>> keep.tolist(), problems
([True, False, True, True], {1: 'the input holds NaN or inf'})
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import torch

from saliency.engine import outputs

from .sources import Samples

__all__ = ["finite_inputs", "screen"]


def screen(
    model: Callable,
    x: torch.Tensor,
    *,
    output: object,
    whole_batch_may_fail: bool = False,
    index: Sequence[int] | None = None,
    forward: Mapping[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[int, str]]:
    """Which samples of ``x`` to explain (bool ``[B]``), and why each other one is left out.

    When every sample fails on its own, the fault is the model's or the data's form, not a few
    samples': the batch's error is raised, unless ``whole_batch_may_fail`` (some sample of the
    data is known to pass, so this batch is merely all bad). ``index`` holds the data set's
    number of each sample of ``x``: a raised error names those, not positions in the batch.
    ``forward`` holds the per-sample arguments of the model, which follow their samples.
    """
    keep, problems = finite_inputs(x)
    rows = keep.nonzero().flatten().tolist()
    if not rows:
        return keep, problems
    batch = Samples(x, None, dict(forward or {}))

    def run(picked: list[int]) -> None:
        part = batch.take(picked)
        outputs(model, part.x, output=output, **part.forward)

    try:
        run(rows)
        return keep, problems
    except ValueError as batch_error:
        failed = {}
        for i in rows:
            try:
                run([i])
            except ValueError as e:
                failed[i] = _reason(e)
        if not failed or (len(failed) == len(rows) and not whole_batch_may_fail):
            if index is None:
                raise batch_error
            raise ValueError(_renumbered(str(batch_error), rows, index)) from batch_error
    for i, reason in failed.items():
        keep[i] = False
        problems[i] = reason
    return keep, dict(sorted(problems.items()))


def finite_inputs(x: torch.Tensor) -> tuple[torch.Tensor, dict[int, str]]:
    """The samples whose inputs are finite (bool ``[B]``), and why each other one is left out:
    the part of :func:`screen` that needs no forward pass."""
    keep = torch.isfinite(x.detach().reshape(x.shape[0], -1)).all(1).cpu()
    return keep, {i: "the input holds NaN or inf" for i in (~keep).nonzero().flatten().tolist()}


def _renumbered(message: str, rows: list[int], index: Sequence[int]) -> str:
    """``message`` about the batch ``x[rows]``, its sample numbers made the data set's."""
    numbers = [int(index[r]) for r in rows]

    def replace(found: re.Match) -> str:
        positions = [int(p) for p in found.group(1).split(",") if p.strip()]
        if not all(0 <= p < len(numbers) for p in positions):
            return found.group(0)
        return "samples [" + ", ".join(str(numbers[p]) for p in positions) + "]"

    renamed, count = re.subn(r"samples \[([\d, ]+)\]", replace, message)
    if count:
        return renamed
    span = f"{numbers[0]}-{numbers[-1]}" if len(numbers) > 1 else str(numbers[0])
    return f"data: samples {span}: {message}"


def _reason(error: Exception) -> str:
    text = str(error)
    if "NaN" in text or "inf" in text:
        return "the model's output holds NaN or inf"
    return f"the model failed on it: {text}"
