"""The strategies, each one record beside its code: how it runs, what it holds, when it is exact.

A strategy turns one chunk of ``r`` rows and ``k`` targets into a Jacobian block
``[r, k, *shape]`` (``shape``: the input's, or the layer output's). They differ only in how they
spend reverse- or forward-mode passes, and all of them are exact where their record's conditions
hold; the planner, the budget and ``auto`` read these records, and nothing else names a strategy.

- ``loop``: one shared forward, then one backward per target (the cost floor of reverse mode).
- ``vmap``: one shared forward, then all targets' backward passes batched with vmap.
- ``replicate``: the rows repeated once per target, one forward and one backward.
- ``forward``: forward mode, one JVP per input feature (wins when features < targets).
- ``head``: through a final linear layer of width ``F < K``: the ``F`` feature Jacobians times the
  head's weight, so ``F`` backward passes instead of ``K``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..targets import Rows
from .budget import Sizes
from .forward import HeadCall

__all__ = ["STRATEGIES", "Chunk", "Strategy"]

# Estimates are rough; keep a margin so that the real peak stays under the budget.
_SAFETY = 1.5


@dataclass
class Chunk:
    """One row chunk: the differentiated tensor, the shared forward pass and the targets."""

    x: torch.Tensor  # [r, *shape], what is differentiated, part of the graph
    rows: Rows  # targets for these rows, all K of them
    rerun: Callable[[torch.Tensor, int], torch.Tensor]  # (value, repeats) -> scores [n, C]
    transform: Callable[[torch.Tensor], torch.Tensor] | None  # head output -> scores
    create_graph: bool
    out: torch.Tensor | None = None  # shared forward's scores [r, C], graph attached
    head: HeadCall | None = None
    outputs: torch.Tensor | None = None  # the scores at these rows, detached, for the caller
    where: slice | None = None  # which rows of the call
    cache: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Strategy:
    """One strategy's record.

    ``columns`` is what one pass's width counts (``"classes"``, or ``"features"`` for forward
    mode, which computes every class at once). ``working_set(sizes, r, k)`` estimates the extra
    bytes of one chunk of ``r`` rows and ``k`` columns, block included. ``exact`` states when the
    strategy is exact; conditions that can be checked before running are in :meth:`refuses`,
    and ``head`` is also verified on the forward pass of every chunk it serves.
    """

    name: str
    run: Callable[[Chunk, slice | int], torch.Tensor]
    shared_forward: bool  # differentiates the chunk's one forward pass
    columns: str
    create_graph: bool  # can return a differentiable Jacobian
    one_draw: bool  # every target of a row sees the same forward pass (random models)
    working_set: Callable[[Sizes, int, int], float]
    cost: str  # how the cost grows, for the docs
    exact: str
    # How auto uses it: "base" races one target at a time; "batched" races against it;
    # "stand-in" races only when the batched strategy cannot run; "cost model" is taken when
    # ``preferred(sizes)`` holds, without timing.
    role: str = "cost model"
    preferred: Callable[[Sizes], bool] | None = None
    passes: Callable[[Sizes], int] | None = None  # the passes a row chunk costs (cost model)
    needs_head: bool = False  # factorises through the linear head (verified on every pass)

    def refuses(self, *, create_graph: bool, allow_random: bool, head: bool) -> str | None:
        """Why this strategy cannot serve a call, or ``None``."""
        if create_graph and not self.create_graph:
            return f"strategy={self.name!r} does not support create_graph=True"
        if allow_random and not self.one_draw:
            return (
                f"strategy={self.name!r} would draw the model's randomness once per target, "
                "not once per forward pass shared by all targets (allow_random=True)"
            )
        if self.needs_head and not head:
            return (
                f"strategy={self.name!r} needs a model whose scores are exactly the output of its "
                "last nn.Linear layer, called once"
            )
        return None


# -- loop -----------------------------------------------------------------------------------------


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


def _loop_bytes(s: Sizes, r: int, k: int) -> float:
    # The graph, the backward's temporaries, one input gradient; the block is filled in place.
    return _SAFETY * (r * (3 * s.act + 2 * s.row)) + r * k * s.row


# -- vmap -----------------------------------------------------------------------------------------


def vmap(c: Chunk, cols: slice) -> torch.Tensor:
    cot = c.rows.columns(cols).cotangents(c.out)
    (g,) = torch.autograd.grad(
        c.out, c.x, cot, retain_graph=True, create_graph=c.create_graph, is_grads_batched=True
    )
    return g.transpose(0, 1)


_QUIET = {"depth": 0}
_QUIET_LOCK = threading.Lock()


@contextmanager
def quiet_fallbacks() -> Iterator[None]:
    """PyTorch warns when an operator has no batching rule; that is auto's business while it
    times the strategies on the real work (and forward mode's, which always vmaps).

    PyTorch's own switch for that one warning is used, not ``warnings.catch_warnings``, which
    replaces the filters of every thread and loses those another thread adds meanwhile. It is
    off while any engine call in any thread needs it off.
    """
    with _QUIET_LOCK:
        _QUIET["depth"] += 1
        if _QUIET["depth"] == 1:
            torch._C._functorch._set_vmap_fallback_warning_enabled(False)
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _QUIET["depth"] -= 1
            if _QUIET["depth"] == 0:
                torch._C._functorch._set_vmap_fallback_warning_enabled(True)


def _vmap_bytes(s: Sizes, r: int, k: int) -> float:
    return _SAFETY * (r * s.act + k * r * (s.act + s.row)) + 2 * r * k * s.row


# -- replicate ------------------------------------------------------------------------------------


def replicate(c: Chunk, cols: slice) -> torch.Tensor:
    rows = c.rows.columns(cols)
    r, k = rows.ids.shape
    xr = c.x.unsqueeze(0).expand(k, *c.x.shape).reshape(k * r, *c.x.shape[1:])
    out = c.rerun(xr, k)
    # Replica j holds every row, differentiated for its j-th target.
    flat = Rows(rows.ids.T.reshape(-1, 1), None if rows.neg is None else rows.neg.T.reshape(-1, 1))
    (g,) = torch.autograd.grad(flat.select(out).sum(), xr, create_graph=c.create_graph)
    return g.view(k, r, *c.x.shape[1:]).transpose(0, 1)


def _replicate_bytes(s: Sizes, r: int, k: int) -> float:
    return _SAFETY * (k * r * (2 * s.act + 2 * s.row)) + 2 * r * k * s.row


# -- forward mode ---------------------------------------------------------------------------------


def forward(c: Chunk, step: int) -> torch.Tensor:
    """All targets at once from JVPs over ``step`` features at a time."""
    x = c.x.detach()
    r, shape = x.shape[0], x.shape[1:]
    d = x[0].numel()

    def scores(xi: torch.Tensor) -> torch.Tensor:
        return c.rows.select(c.rerun(xi, 1))

    def column(t: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(scores, (x,), (t,))[1]

    parts = []
    for d0 in range(0, d, step):
        n = min(step, d - d0)
        tangents = torch.zeros(n, r, d, dtype=x.dtype, device=x.device)
        tangents[torch.arange(n), :, torch.arange(d0, d0 + n)] = 1
        with quiet_fallbacks():
            parts.append(torch.func.vmap(column)(tangents.view(n, r, *shape)).detach())
    return torch.cat(parts).permute(1, 2, 0).reshape(r, -1, *shape)


def _forward_bytes(s: Sizes, r: int, k: int) -> float:
    # k counts tangent features here; the block holds every class for every feature.
    return _SAFETY * (r * s.act + k * r * (s.act + s.row)) + 2 * r * s.classes * s.row


# -- head -----------------------------------------------------------------------------------------


def head(c: Chunk, cols: slice) -> torch.Tensor:
    """``d s / d h`` (cheap, through the head alone) times the feature Jacobian ``d h / d x``."""
    h = c.head.h
    r, width = h.shape
    jh = c.cache.get("jh")
    if jh is None:
        basis = torch.eye(width, dtype=h.dtype, device=h.device).unsqueeze(1).expand(-1, r, -1)
        jh = c.cache["jh"] = _rows_of(h, c.x, basis).view(r, width, -1)  # [r, F, D]
    hd = h.detach().requires_grad_()
    with torch.enable_grad():
        z = c.transform(c.head.recompute(hd))
        cot = c.rows.columns(cols).cotangents(z)
        k = cot.shape[0]
        (u,) = torch.autograd.grad(z, hd, cot, is_grads_batched=True)  # [k, r, F]
    return torch.bmm(u.transpose(0, 1).detach(), jh).view(r, k, *c.x.shape[1:])


# auto's cost model: head when its F backward passes are clearly fewer than K, forward mode when
# its D JVPs are at most half the K VJPs (a JVP costs about what a VJP does).
HEAD_RATIO = 0.8
FORWARD_RATIO = 0.5


def _head_bytes(s: Sizes, r: int, k: int) -> float:
    return _SAFETY * (r * (3 * s.act + 2 * s.row)) + r * s.width * s.row + 2 * r * k * s.row


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            "loop",
            loop,
            shared_forward=True,
            columns="classes",
            create_graph=True,
            one_draw=True,
            working_set=_loop_bytes,
            cost="t_forward + K t_backward: the cost floor of reverse mode",
            exact="always",
            role="base",
        ),
        Strategy(
            "vmap",
            vmap,
            shared_forward=True,
            columns="classes",
            create_graph=True,
            one_draw=True,
            working_set=_vmap_bytes,
            cost="t_forward + one batched backward of K cotangents",
            exact="always (an operator without a batching rule raises, and auto drops vmap)",
            role="batched",
        ),
        Strategy(
            "replicate",
            replicate,
            shared_forward=False,
            columns="classes",
            create_graph=True,
            one_draw=False,
            working_set=_replicate_bytes,
            cost="K forwards and one batched backward: vmap's work plus K - 1 forward passes",
            exact="for deterministic models (each replica draws its own randomness)",
            role="stand-in",
        ),
        Strategy(
            "forward",
            forward,
            shared_forward=False,
            columns="features",
            create_graph=False,
            one_draw=False,
            working_set=_forward_bytes,
            cost="D JVPs (D features of the differentiated tensor), whatever K is",
            exact="for deterministic models; not with create_graph",
            preferred=lambda s: s.features <= FORWARD_RATIO * s.classes,
            passes=lambda s: s.features,
        ),
        Strategy(
            "head",
            head,
            shared_forward=True,
            columns="classes",
            create_graph=False,
            one_draw=True,
            working_set=_head_bytes,
            cost="t_forward + F t_backward (F: the head's input width) + a [K, F] x [F, D] product",
            exact=(
                "when the scores are the very tensor nn.Linear returned, unmodified, from a head "
                "called once; verified on every forward pass, else the next strategy serves"
            ),
            preferred=lambda s: 0 < s.width <= HEAD_RATIO * s.classes,
            passes=lambda s: s.width,
            needs_head=True,
        ),
    )
}
