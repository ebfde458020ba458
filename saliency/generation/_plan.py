"""Which steps go together: chunks of consecutive steps, each run on the prefix it needs.

A chunk of ``c`` steps costs one forward pass on its prefix (plus the engine's fixed costs per
call: on a model's first call, a probe of every new input length, about two more forward passes
of one sample) and ``c`` backward passes on that prefix, where a loop over steps pays a forward
and a backward pass per step, each on the step's own prefix. Longer chunks share the forward
pass among more steps but run the early steps' backward passes on a longer prefix than they
need (``c / 2`` positions per step on average). With ``F`` forward passes' worth of fixed cost per
chunk and a prefix of ``L``, the total is least near ``c = sqrt(2 F L)``: ``F = 1`` for a later
call, about 3 for a first one; ``steps_per_chunk`` takes ``F = 4``, which keeps a first call
near 1.3x a later one (measured on the tiny GPT-2 at 64 tokens) and a later call within a few
percent of its own optimum. Memory bounds it too: a chunk's values ``[B, c, L, E]`` (with
Integrated Gradients and SmoothGrad, their running sums as well) must leave room under
``max_memory`` for the engine's own working set.
"""

from __future__ import annotations

import math

import torch

__all__ = ["chunks", "steps_per_chunk"]

DEFAULT_BLOCK = 256 * 10**6  # bytes of a chunk's values without max_memory
_SHARE = 4  # a chunk's values take at most this fraction of max_memory
# Copies of a chunk's values a method holds at once: its result, running sums, a block.
_COPIES = {"gradients": 1, "x_input": 1, "integrated_gradients": 2, "smoothgrad": 2}


def steps_per_chunk(prefix: int, steps: int) -> int:
    """Steps per chunk: about ``sqrt(8 * prefix)`` (see the module), at least 8, and no chunk
    much shorter than the others.

    >>> steps_per_chunk(52, 64), steps_per_chunk(148, 256), steps_per_chunk(30, 16)
    (16, 32, 16)
    """
    c = max(8, math.ceil(math.sqrt(8 * max(prefix, 1))))
    if c >= steps:
        return steps
    n = math.ceil(steps / c)
    return math.ceil(steps / n)


def chunks(ctx, method: str, options: dict, budget: int | None, width: int,
           dtype: torch.dtype, source: int, kind: str) -> list[tuple[int, int, int]]:  # fmt: skip
    """``(first step, stop, prefix length)`` for every chunk, in order."""
    t = ctx.out
    whole = method == "smoothgrad"  # one noise draw per copy of the whole context
    itemsize = torch.empty((), dtype=dtype).element_size()
    copies = _COPIES[method] * (2 if options.get("variant") == "var" else 1)
    cap = DEFAULT_BLOCK if budget is None else budget // _SHARE
    last = ctx.steps.amax(0)  # [T_out]: the last column any sample needs for each step

    def length(s0: int, s1: int) -> int:
        return ctx.length if whole else int(last[s0:s1].max()) + 1

    def fits(s0: int, s1: int) -> bool:
        n = ctx.batch * (s1 - s0) * (source + length(s0, s1)) * width * itemsize * copies
        return n <= cap

    c = steps_per_chunk(int(last.float().mean()) + 1, t)
    out, s0 = [], 0
    while s0 < t:
        s1 = min(s0 + c, t)
        while s1 - s0 > 1 and not fits(s0, s1):  # one step at least: the engine says if not
            s1 -= 1
        out.append((s0, s1, length(s0, s1)))
        s0 = s1
    return out
