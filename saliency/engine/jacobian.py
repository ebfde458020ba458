"""``class_jacobian`` and ``iter_class_jacobian``: the per-sample, per-class input Jacobian."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .. import targets
from . import auto
from .budget import Plan, Sizes, plan
from .probe import Probe, probe
from .problem import Problem, make_problem
from .strategies import SHARED_FORWARD, STRATEGIES, Chunk

__all__ = [
    "JacobianChunk",
    "JacobianResult",
    "class_jacobian",
    "evaluate",
    "iter_class_jacobian",
    "outputs",
]


# Candidates are timed on at most this many rows: enough to rank them, cheap on a first call.
_TRIAL_ROWS = 128


class JacobianChunk(NamedTuple):
    """A streamed piece: ``class_ids`` ``[B, k]`` and their Jacobian ``values`` ``[B, k, *in]``."""

    class_ids: torch.Tensor
    values: torch.Tensor


@dataclass(frozen=True)
class JacobianResult:
    """The Jacobian with what produced it: target ids and the (transformed) outputs at ``x``."""

    values: torch.Tensor  # [B, K, *input]
    classes: torch.Tensor  # [B, K] long
    outputs: torch.Tensor  # [B, C], detached
    strategy: str


def class_jacobian(
    model: Callable,
    x: torch.Tensor,
    classes: targets.Classes = None,
    *,
    output: str | Callable = "logits",
    strategy: str = "auto",
    max_memory: int | str | None = None,
    create_graph: bool = False,
    **forward_kwargs,
) -> torch.Tensor:
    """Input gradients of every requested class for every sample, ``[B, K, *x.shape[1:]]``.

    ``J[b, k] = d out[b, class_k] / d x[b]``, for all ``K`` classes in one call, at the cost of one
    shared forward pass plus the cheapest exact way to get ``K`` vector-Jacobian products.

    Parameters
    ----------
    model
        An ``nn.Module`` or any callable mapping ``[B, ...]`` to scores ``[B, C]`` (``[B]`` counts
        as ``C = 1``). Samples must be independent: BatchNorm in training mode is refused.
    x
        Floating input of rank >= 2 (``[B, D]``, ``[B, C, H, W]``, ``[B, T, E]``, ...). It is
        never modified; with ``create_graph=True`` the result is differentiable with respect to it.
    classes
        ``None`` (all ``C``), an int, a list or 1-D tensor of ids shared by all samples, a
        ``[B, K]`` long tensor of per-sample ids, :func:`saliency.top_k` or
        :func:`saliency.contrast`.
    output
        ``"logits"`` (raw outputs), ``"softmax"``, ``"log_softmax"``, or a callable applied to the
        ``[B, C]`` output before the classes are selected.
    strategy
        ``"auto"`` (time the candidates once per model and shape, then reuse the fastest),
        ``"loop"``, ``"vmap"``, ``"replicate"``, ``"forward"`` or ``"head"``.
    max_memory
        Peak extra memory allowed, result included: bytes or a string like ``"512MB"``. Rows and
        classes are chunked to fit; a ``MemoryError`` is raised before any work if nothing fits.
    create_graph
        Return a differentiable Jacobian (for gradient penalties in training).
    **forward_kwargs
        Passed to the model, not differentiated. Tensors whose first dimension is ``B`` are
        treated as per-sample and follow the rows when the batch is chunked.

    Returns
    -------
    torch.Tensor
        ``[B, K, *x.shape[1:]]``, in ``x``'s dtype and on its device.

    Examples
    --------
    >>> import torch, saliency
    >>> model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> x = torch.randn(4, 5)
    >>> J = saliency.class_jacobian(model, x)
    >>> J.shape
    torch.Size([4, 3, 5])
    >>> ref = torch.func.vmap(torch.func.jacrev(model))(x)
    >>> torch.allclose(J, ref, atol=1e-6)
    True
    """
    return evaluate(
        model,
        x,
        classes,
        output=output,
        strategy=strategy,
        max_memory=max_memory,
        create_graph=create_graph,
        **forward_kwargs,
    ).values


def evaluate(
    model: Callable,
    x: torch.Tensor,
    classes: targets.Classes = None,
    *,
    output: str | Callable = "logits",
    strategy: str = "auto",
    max_memory: int | str | None = None,
    create_graph: bool = False,
    **forward_kwargs,
) -> JacobianResult:
    """:func:`class_jacobian` together with the resolved class ids and the outputs at ``x``."""
    p = _problem(model, x, classes, output, strategy, max_memory, create_graph, forward_kwargs)
    engine = _Engine(p, stream=False)
    if p.create_graph or engine.single_block:
        pieces = list(engine.row_chunks())
        values = _joined([v for _, _, v, _ in pieces])
    else:
        # Fill one preallocated result block by block: the budget counts it once.
        values = x.new_empty(x.shape[0], engine.k, *x.shape[1:])
        pieces = list(engine.row_chunks(into=values))
    ids, outs = _joined([i for _, i, _, _ in pieces]), _joined([o for _, _, _, o in pieces])
    return JacobianResult(values, ids, outs, engine.strategy)


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def iter_class_jacobian(
    model: Callable,
    x: torch.Tensor,
    classes: targets.Classes = None,
    *,
    output: str | Callable = "logits",
    strategy: str = "auto",
    max_memory: int | str | None = None,
    create_graph: bool = False,
    **forward_kwargs,
) -> Iterator[JacobianChunk]:
    """Stream the Jacobian as ``(class_ids, values)`` chunks over classes, every sample in each.

    The same arguments as :func:`class_jacobian`; ``max_memory`` bounds the peak while one chunk
    is alive, so 1000-class Jacobians of large images can be reduced or saved piece by piece.

    Examples
    --------
    >>> import torch, saliency
    >>> model = torch.nn.Linear(6, 100)
    >>> x = torch.randn(2, 6)
    >>> chunks = saliency.iter_class_jacobian(model, x, max_memory=8000)
    >>> norms = [values.norm(dim=-1) for ids, values in chunks]
    >>> len(norms) > 1, torch.cat(norms, dim=1).shape
    (True, torch.Size([2, 100]))
    """
    p = _problem(model, x, classes, output, strategy, max_memory, create_graph, forward_kwargs)
    return _Engine(p, stream=True).class_chunks()


def outputs(
    model: Callable,
    x: torch.Tensor,
    *,
    output: str | Callable = "logits",
    **forward_kwargs,
) -> torch.Tensor:
    """The model's outputs ``[B, C]`` at ``x`` after ``output``, detached, with the engine's checks.

    What the engine would differentiate, computed without a graph: methods that need the
    outputs at ``x`` (to resolve ``top_k``, or for a completeness gap) get them here, with the
    same guards and the same handling of ``output`` as :func:`class_jacobian`.

    Examples
    --------
    >>> import torch
    >>> from saliency.engine import outputs
    >>> model = torch.nn.Linear(4, 3)
    >>> outputs(model, torch.randn(2, 4), output="softmax").sum(1)
    tensor([1.0000, 1.0000])
    """
    p = _problem(model, x, None, output, "auto", None, False, forward_kwargs)
    with torch.no_grad():
        return p.forward(p.x.detach(), slice(0, p.batch)).detach()


def _problem(model, x, classes, output, strategy, max_memory, create_graph, kwargs) -> Problem:
    return make_problem(
        model, x, classes, output, strategy, max_memory, create_graph, kwargs, tuple(STRATEGIES)
    )


class _Engine:
    """Plans one call and walks its chunks."""

    def __init__(self, p: Problem, *, stream: bool) -> None:
        self.p = p
        self.stream = stream
        self.info: Probe = probe(p.model, p.scores, p.x)
        self.k = targets.count(p.classes, self.info.outputs(p.transform), p.batch)
        self._head = None
        one = p.x[0]
        self.sizes = Sizes(
            act=self.info.act,
            row=one.numel() * one.element_size(),
            features=one.numel(),
            classes=self.k,
            width=self.info.width,
        )
        if p.strategy == "head" and self.info.head is None:
            raise ValueError(
                "strategy='head' needs a model whose output is exactly the output of its last "
                "nn.Linear layer (called once); use 'loop', 'vmap' or 'auto' for this model"
            )
        self.strategy = p.strategy if p.strategy != "auto" else self._choose()
        self.plan = self._plan(self.strategy)

    # -- planning ---------------------------------------------------------------------------
    def _plan(self, name: str) -> Plan:
        cols = self.sizes.features if name == "forward" else self.k
        whole = self.p.batch * self.sizes.row  # one class for every row
        if not self.stream or name == "forward":
            held, per_col = whole * self.k, 0  # the result (forward mode: all classes at once)
        else:
            held, per_col = 0, whole  # the chunk handed out holds every row of its classes
        return plan(
            name,
            self.sizes,
            self.p.batch,
            cols,
            self.p.budget,
            held,
            per_col=per_col,
            device=self.p.x.device,
        )

    def _candidates(self) -> list[str]:
        names = ["loop", "vmap", "replicate"]
        if self.sizes.features <= self.k and not self.p.create_graph:
            names.append("forward")
        if self.info.head is not None and self.sizes.width < self.k and not self.p.create_graph:
            names.append("head")
        fitting = []
        for name in names:
            try:
                self._plan(name)
            except MemoryError:
                continue
            fitting.append(name)
        if not fitting:
            self._plan("loop")  # raises the budget error for the cheapest strategy
        return fitting

    def _choose(self) -> str:
        p = self.p
        key = (
            tuple(p.x.shape[1:]),
            p.batch.bit_length(),  # batch sizes within a factor of two share a decision
            p.x.dtype,
            str(p.x.device),
            self.k,
            _kind(p.classes),
            p.output if isinstance(p.output, str) else id(p.output),
            p.create_graph,
            p.budget,
            self.stream,
        )
        name = auto.cached(p.model, key)
        if name is None:
            name = self._trial(self._candidates())
            auto.remember(p.model, key, name)
        return name

    def _trial(self, names: list[str]) -> str:
        plans = {name: self._plan(name) for name in names}  # planned once, not per timed round
        rows = slice(0, min(_TRIAL_ROWS, *(plan.rows for plan in plans.values())))
        runs = {}
        for name in names:

            def run(k_t: int, name: str = name) -> None:
                chunk, fn, step = self._chunk(name, rows), STRATEGIES[name], plans[name].cols
                if name == "forward":
                    fn(chunk, step)  # every target at once, ``step`` features per pass
                    return
                for c0 in range(0, k_t, step):
                    fn(chunk, slice(c0, min(c0 + step, k_t)))

            runs[name] = run

        def shared_forward() -> None:
            self._chunk("loop", rows)

        return auto.choose(runs, shared_forward, self.k)

    @property
    def head(self) -> torch.nn.Linear:
        """The model's linear head (looked up only when the head strategy runs)."""
        if self._head is None:
            self._head = self.info.head_module(self.p.model)
        return self._head

    # -- execution ---------------------------------------------------------------------------
    def _chunk(self, name: str, rows: slice) -> Chunk:
        """Inputs, the shared forward pass (if ``name`` uses one) and targets for ``rows``."""
        p = self.p
        x = p.x[rows]
        if not (p.create_graph and x.requires_grad):
            x = x.detach().requires_grad_()
        chunk = Chunk(
            x=x,
            rows=None,
            forward=lambda xi, n: p.forward(xi, rows, n),
            transform=p.transform,
            create_graph=p.create_graph,
            head=self.head if name == "head" else None,
        )
        if name in SHARED_FORWARD:
            captured = {}
            hook = None
            if name == "head":

                def grab(_m, inputs, _o):
                    captured["h"] = inputs[0]

                hook = self.head.register_forward_hook(grab)
            try:
                with torch.enable_grad():
                    chunk.out = p.forward(x, rows)
            finally:
                if hook is not None:
                    hook.remove()
            chunk.head_input = captured.get("h")
            out = chunk.out
        else:
            with torch.no_grad():
                out = p.forward(x.detach(), rows)
        classes = p.classes
        if targets.is_per_sample(classes) and len(classes) == p.batch:
            classes = classes[rows]  # per-sample ids follow their rows into the chunk
        chunk.rows = targets.resolve(classes, out.detach())
        chunk.outputs = out.detach()
        return chunk

    def _blocks(self, chunk: Chunk, cols: list[slice]) -> Iterator[torch.Tensor]:
        fn = STRATEGIES[self.strategy]
        with torch.enable_grad():
            if self.strategy == "forward":
                full = fn(chunk, self.plan.cols)
                for c in cols:
                    yield full[:, c]
                return
            for c in cols:
                yield fn(chunk, c)

    def _row_slices(self) -> list[slice]:
        b, r = self.p.batch, self.plan.rows
        return [slice(i, min(i + r, b)) for i in range(0, b, r)]

    def _col_slices(self) -> list[slice]:
        step = self.k if self.strategy == "forward" else self.plan.cols
        return [slice(i, min(i + step, self.k)) for i in range(0, self.k, step)]

    @property
    def single_block(self) -> bool:
        return len(self._row_slices()) == 1 and len(self._col_slices()) == 1

    def row_chunks(
        self, into: torch.Tensor | None = None
    ) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor | None, torch.Tensor]]:
        """``(rows, class_ids, values, outputs)`` for each row chunk, all classes at once.

        With ``into``, blocks are written into that ``[B, K, *input]`` tensor and ``values`` is
        ``None``.
        """
        cols = self._col_slices()
        for rows in self._row_slices():
            chunk = self._chunk(self.strategy, rows)
            values = None
            if into is not None:
                for c, block in zip(cols, self._blocks(chunk, cols), strict=True):
                    into[rows, c] = block
            else:
                blocks = [self._finish(b) for b in self._blocks(chunk, cols)]
                values = blocks[0] if len(blocks) == 1 else torch.cat(blocks, 1)
            yield rows, chunk.rows.ids, values, chunk.outputs

    def class_chunks(self) -> Iterator[JacobianChunk]:
        """Chunks over classes holding every row (rows re-run per class chunk when split)."""
        cols, row_slices = self._col_slices(), self._row_slices()
        if len(row_slices) == 1:
            chunk = self._chunk(self.strategy, row_slices[0])
            for c, block in zip(cols, self._blocks(chunk, cols), strict=True):
                yield JacobianChunk(chunk.rows.ids[:, c], self._finish(block))
            return
        for c in cols:
            parts, ids = [], []
            for rows in row_slices:
                chunk = self._chunk(self.strategy, rows)
                parts.append(next(self._blocks(chunk, [c])))
                ids.append(chunk.rows.ids[:, c])
            yield JacobianChunk(torch.cat(ids), self._finish(torch.cat(parts)))

    def _finish(self, block: torch.Tensor) -> torch.Tensor:
        return block if self.p.create_graph else block.detach()


def _kind(classes: targets.Classes) -> str:
    if targets.is_per_sample(classes):
        return "per-sample"
    return type(classes).__name__
