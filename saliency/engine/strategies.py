"""The exact strategies: each turns one chunk of rows and targets into a Jacobian block.

A block is ``[r, k, *input]`` for ``r`` rows and ``k`` targets. Strategies differ only in how they
spend reverse- or forward-mode passes:

- ``loop``: one shared forward, then one backward per target (the cost floor of reverse mode).
- ``vmap``: one shared forward, then all targets' backward passes batched with vmap.
- ``replicate``: the rows repeated once per target, one forward and one backward.
- ``forward``: forward mode, one JVP per input feature (wins when features < targets).
- ``head``: through a final linear layer of width ``F < K``: the ``F`` feature Jacobians times the
  head's weight, so ``F`` backward passes instead of ``K``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from ..targets import Rows

__all__ = ["SHARED_FORWARD", "STRATEGIES", "Chunk"]


@dataclass
class Chunk:
    """One row chunk: its inputs, shared forward (when the strategy uses one) and targets."""

    x: torch.Tensor  # [r, *input], part of the graph being differentiated
    rows: Rows  # targets for these rows, all K of them
    forward: Callable[[torch.Tensor, int], torch.Tensor]  # (inputs, repeats) -> outputs [n, C]
    transform: Callable[[torch.Tensor], torch.Tensor]
    create_graph: bool
    out: torch.Tensor | None = None  # shared forward's outputs [r, C], graph attached
    head_input: torch.Tensor | None = None  # what entered the linear head, graph attached
    head: nn.Linear | None = None
    outputs: torch.Tensor | None = None  # the outputs at these rows, detached, for the caller
    cache: dict = field(default_factory=dict)


def loop(c: Chunk, cols: slice) -> torch.Tensor:
    cot = c.rows.columns(cols).cotangents(c.out)
    if c.create_graph:
        grad = torch.autograd.grad
        rows = [grad(c.out, c.x, v, retain_graph=True, create_graph=True)[0] for v in cot]
        return torch.stack(rows, 1)
    return _rows_of(c.out, c.x, cot)


def _rows_of(out: torch.Tensor, x: torch.Tensor, cot: torch.Tensor) -> torch.Tensor:
    """``[r, k, *x.shape[1:]]``: one backward per cotangent row, each written straight into place.

    Filling one preallocated block (rather than stacking a list of gradients) keeps the peak at
    one block, not two, which matters when a memory budget sizes the blocks.
    """
    block = x.new_empty(x.shape[0], cot.shape[0], *x.shape[1:])
    for i, v in enumerate(cot):
        block[:, i] = torch.autograd.grad(out, x, v, retain_graph=True)[0]
    return block


def vmap(c: Chunk, cols: slice) -> torch.Tensor:
    cot = c.rows.columns(cols).cotangents(c.out)
    (g,) = torch.autograd.grad(
        c.out, c.x, cot, retain_graph=True, create_graph=c.create_graph, is_grads_batched=True
    )
    return g.transpose(0, 1)


def replicate(c: Chunk, cols: slice) -> torch.Tensor:
    rows = c.rows.columns(cols)
    r, k = rows.ids.shape
    xr = c.x.unsqueeze(0).expand(k, *c.x.shape).reshape(k * r, *c.x.shape[1:])
    out = c.forward(xr, k)
    # Replica j holds every row, differentiated for its j-th target.
    flat = Rows(rows.ids.T.reshape(-1, 1), None if rows.neg is None else rows.neg.T.reshape(-1, 1))
    (g,) = torch.autograd.grad(flat.select(out).sum(), xr, create_graph=c.create_graph)
    return g.view(k, r, *c.x.shape[1:]).transpose(0, 1)


def forward(c: Chunk, step: int) -> torch.Tensor:
    """All targets at once from JVPs over ``step`` input features at a time."""
    x = c.x.detach()
    r, shape = x.shape[0], x.shape[1:]
    d = x[0].numel()

    def scores(xi: torch.Tensor) -> torch.Tensor:
        return c.rows.select(c.forward(xi, 1))

    def column(t: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(scores, (x,), (t,))[1]

    parts = []
    for d0 in range(0, d, step):
        n = min(step, d - d0)
        tangents = torch.zeros(n, r, d, dtype=x.dtype, device=x.device)
        tangents[torch.arange(n), :, torch.arange(d0, d0 + n)] = 1
        parts.append(torch.func.vmap(column)(tangents.view(n, r, *shape)))
    return torch.cat(parts).permute(1, 2, 0).reshape(r, -1, *shape)


def head(c: Chunk, cols: slice) -> torch.Tensor:
    """``d s / d h`` (cheap, through the head alone) times the feature Jacobian ``d h / d x``."""
    h = c.head_input
    r, width = h.shape
    jh = c.cache.get("jh")
    if jh is None:
        basis = torch.eye(width, dtype=h.dtype, device=h.device).unsqueeze(1).expand(-1, r, -1)
        jh = c.cache["jh"] = _rows_of(h, c.x, basis).view(r, width, -1)  # [r, F, D]
    hd = h.detach().requires_grad_()
    with torch.enable_grad():
        z = c.transform(F.linear(hd, c.head.weight, c.head.bias))
        cot = c.rows.columns(cols).cotangents(z)
        k = cot.shape[0]
        (u,) = torch.autograd.grad(z, hd, cot, is_grads_batched=True)  # [k, r, F]
    return torch.bmm(u.transpose(0, 1).detach(), jh).view(r, k, *c.x.shape[1:])


STRATEGIES: dict[str, Callable] = {
    "loop": loop,
    "vmap": vmap,
    "replicate": replicate,
    "forward": forward,
    "head": head,
}
# Strategies that differentiate one forward pass shared by all targets of a row chunk.
SHARED_FORWARD = frozenset({"loop", "vmap", "head"})
