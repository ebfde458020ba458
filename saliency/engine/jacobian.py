"""``class_jacobian`` and ``iter_class_jacobian``: the per-sample, per-class Jacobian."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from .. import targets
from . import auto
from .budget import Plan, Sizes, plan
from .forward import GuardError, refuse_unconnected, run
from .identity import key_of
from .probe import forget as forget_probes
from .probe import identify, keep, probe, ran, refuse_coupling
from .problem import Problem, make_problem
from .strategies import STRATEGIES, Chunk, Strategy, quiet_fallbacks

__all__ = [
    "JacobianChunk",
    "JacobianResult",
    "class_jacobian",
    "evaluate",
    "forget_strategy_choices",
    "iter_class_jacobian",
    "layer_name",
    "layer_output",
    "outputs",
]


class JacobianChunk(NamedTuple):
    """A streamed piece: ``class_ids`` ``[B, k]`` and their Jacobian ``values`` ``[B, k, *in]``."""

    class_ids: torch.Tensor
    values: torch.Tensor


@dataclass(frozen=True)
class JacobianResult:
    """The Jacobian with what produced it: target ids and the (transformed) outputs at ``x``."""

    values: torch.Tensor  # [B, K, *shape]
    classes: torch.Tensor  # [B, K] long
    outputs: torch.Tensor  # [B, C], detached
    strategy: str
    point: torch.Tensor  # [B, *shape], detached: where it was taken (x, or the layer's output)


def class_jacobian(
    model: Callable,
    x: torch.Tensor,
    classes: targets.Classes = None,
    *,
    output: str | Callable = "logits",
    strategy: str = "auto",
    max_memory: int | str | None = None,
    create_graph: bool = False,
    layer: nn.Module | str | None = None,
    allow_random: bool = False,
    **forward_kwargs,
) -> torch.Tensor:
    """Gradients of every requested class for every sample, ``[B, K, *x.shape[1:]]``.

    ``J[b, k] = d out[b, class_k] / d x[b]``, for all ``K`` classes in one call, at the cost of one
    shared forward pass plus the cheapest exact way to get ``K`` vector-Jacobian products.

    Parameters
    ----------
    model
        An ``nn.Module`` or any callable (a lambda, a ``functools.partial``, a bound method,
        TorchScript) mapping ``[B, ...]`` to scores ``[B, C]`` (``[B]`` counts as ``C = 1``). It
        may return a tensor, a HuggingFace output object or mapping with ``logits``, or a tuple
        whose first element is the scores. Samples must be independent and the model
        deterministic: BatchNorm using batch statistics and dropout in training mode are refused
        before they run.
    x
        The batch, never modified. Floating, of rank >= 2 (``[B, D]``, ``[B, C, H, W]``,
        ``[B, T, E]``, ...); with ``layer``, any tensor the model takes (token ids included).
    classes
        ``None`` (all ``C``), an int, a list or 1-D tensor of ids shared by all samples (each
        once; a 1-D tensor as long as the batch is refused as Captum-style labels), a
        ``[B, K]`` long tensor of per-sample ids, :func:`saliency.top_k` or
        :func:`saliency.contrast`.
    output
        ``"logits"`` (the scores as returned), ``"softmax"``, ``"log_softmax"``, or a callable
        applied to the model's raw output (an output object included) that returns ``[B, C]``.
    strategy
        ``"auto"`` (decide once per model and situation, on the real work, then reuse), or the
        name of a strategy of ``saliency.engine.STRATEGIES`` (``"loop"``, ``"vmap"``, ...; the
        engine page describes each).
    max_memory
        Peak extra memory allowed, result included: bytes or a string like ``"512MB"``. Rows and
        classes are chunked to fit; a ``MemoryError`` is raised before any work if nothing fits.
    create_graph
        Return a differentiable Jacobian (for gradient penalties in training).
    layer
        Differentiate the output of this module of the model (or its dotted name) instead of
        ``x``: the result is ``[B, K, *layer_output.shape[1:]]``.
    allow_random
        Explain a random model (dropout in training mode) anyway: one random draw per forward
        pass, shared by every class of a row (only strategies with one forward per row chunk).
    **forward_kwargs
        Passed to the model, not differentiated. Tensors whose first dimension is ``B`` are
        treated as per-sample and follow the rows when the batch is chunked.

    Returns
    -------
    torch.Tensor
        ``[B, K, *shape]`` in the dtype and on the device of what is differentiated.

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
    >>> saliency.class_jacobian(model, x, layer=model[1]).shape  # w.r.t. the Tanh's output
    torch.Size([4, 3, 8])
    """
    return evaluate(
        model,
        x,
        classes,
        output=output,
        strategy=strategy,
        max_memory=max_memory,
        create_graph=create_graph,
        layer=layer,
        allow_random=allow_random,
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
    layer: nn.Module | str | None = None,
    layer_value: torch.Tensor | None = None,
    allow_random: bool = False,
    **forward_kwargs,
) -> JacobianResult:
    """:func:`class_jacobian` together with the resolved class ids and the outputs at ``x``.

    The engine's entry for methods. ``layer_value`` (with ``layer``) replaces the layer's output
    by a given ``[B, *layer_output]`` tensor, for example a point on a path in the layer's space;
    the Jacobian is then taken there.
    """
    p = _problem(
        model, x, classes, output, strategy, max_memory, create_graph, forward_kwargs,
        layer, layer_value, allow_random,
    )  # fmt: skip
    with _grad_mode():
        engine, pieces, values = _attempt(lambda: _whole(p), p)
    ids = _joined([piece.ids for piece in pieces])
    outs = _joined([piece.outputs for piece in pieces])
    point = _joined([piece.point for piece in pieces])
    return JacobianResult(values, ids, outs, engine.strategy, point)


def _whole(p: Problem):
    engine = _Engine(p, stream=False)
    if p.create_graph or engine.single_block:
        pieces = list(engine.row_chunks())
        return engine, pieces, _joined([piece.values for piece in pieces])
    # Fill one preallocated result block by block: the budget counts it once.
    values = engine.new_result()
    return engine, list(engine.row_chunks(into=values)), values


def _attempt(work: Callable, p: Problem):
    """``work()``, measured again once if the model's outputs changed since it was measured."""
    try:
        return work()
    except _Stale:
        forget_strategy_choices(p.model)
        return work()


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
    layer: nn.Module | str | None = None,
    allow_random: bool = False,
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
    p = _problem(
        model, x, classes, output, strategy, max_memory, create_graph, forward_kwargs,
        layer, None, allow_random,
    )  # fmt: skip
    return _stream(p)


def _stream(p: Problem) -> Iterator[JacobianChunk]:
    def begin():
        chunks = _Engine(p, stream=True).class_chunks()
        return chunks, next(chunks, None)

    with _grad_mode():
        chunks, piece = _attempt(begin, p)
    while piece is not None:
        yield piece
        with _grad_mode():
            try:
                piece = next(chunks, None)
            except _Stale:
                raise RuntimeError(
                    "model: its number of outputs changed while the Jacobian was streamed"
                ) from None


def outputs(
    model: Callable,
    x: torch.Tensor,
    *,
    output: str | Callable = "logits",
    layer: nn.Module | str | None = None,
    layer_value: torch.Tensor | None = None,
    allow_random: bool = False,
    **forward_kwargs,
) -> torch.Tensor:
    """The model's scores ``[B, C]`` at ``x`` after ``output``, detached, with the engine's checks.

    What the engine would differentiate, computed without a graph: methods that need the scores
    at ``x`` (to resolve ``top_k``, for a completeness gap) get them here, with the same guards
    and the same reading of model outputs and ``output`` as :func:`class_jacobian`. ``x`` may be
    any tensor the model takes (token ids included). With ``layer`` and ``layer_value``, the
    layer's output is replaced by ``layer_value``.

    Examples
    --------
    >>> import torch
    >>> from saliency.engine import outputs
    >>> model = torch.nn.Linear(4, 3)
    >>> outputs(model, torch.randn(2, 4), output="softmax").sum(1)
    tensor([1.0000, 1.0000])
    """
    p = _problem(
        model, x, None, output, "auto", None, False, forward_kwargs,
        layer, layer_value, allow_random, differentiate=False,
    )  # fmt: skip
    with torch.no_grad(), torch.inference_mode(False):
        # A copy: the model may write into what it is given, and x is the caller's.
        return run(p, p.x.detach().clone(), slice(0, p.batch), value=p.layer_value).scores.detach()


def layer_output(
    model: Callable,
    x: torch.Tensor,
    layer: nn.Module | str,
    *,
    output: str | Callable = "logits",
    allow_random: bool = False,
    **forward_kwargs,
) -> torch.Tensor:
    """The output of ``layer`` when the model runs on ``x``, ``[B, *layer_output]``, detached.

    ``output`` is the call's own (see :func:`class_jacobian`): the pass is checked like every
    other, so a model whose raw output is not ``[B, C]`` (a language model's ``[B, T, V]``
    logits) needs the same ``output=`` here as in the Jacobian it serves.

    Examples
    --------
    >>> import torch
    >>> from saliency.engine import layer_output
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
    >>> layer_output(model, torch.randn(3, 4), model[1]).shape
    torch.Size([3, 6])
    """
    if layer is None:
        raise ValueError("layer: expected an nn.Module of the model or its dotted name, got None")
    p = _problem(
        model, x, None, output, "auto", None, False, forward_kwargs,
        layer, None, allow_random,
    )  # fmt: skip
    with torch.no_grad(), torch.inference_mode(False):
        return run(p, p.x.detach().clone(), slice(0, p.batch)).value.detach()


def layer_name(model: Callable, layer: nn.Module | str) -> str:
    """The dotted name of ``layer`` in ``model`` (its class name when it is not found there).

    Examples
    --------
    >>> import torch
    >>> from saliency.engine import layer_name
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU())
    >>> layer_name(lambda t: model(t), model[1])
    '1'
    """
    from .identity import owners

    if isinstance(layer, str):
        return layer
    for root in owners(model):
        for name, m in root.named_modules():
            if m is layer:
                return name or type(layer).__name__
    return type(layer).__name__


def forget_strategy_choices(model: Callable | None = None) -> None:
    """Forget what the engine measured and decided (for ``model``, or for every model).

    Needed only to measure again after changing something the engine cannot see (say, moving
    the machine's load); changes to the model itself are seen on the next call.
    """
    if model is None:
        auto.forget()
        forget_probes()
        return
    from .identity import owners

    found = key_of(model, owners(model))
    if found is not None:
        auto.forget(found[0])
        forget_probes(model)


def _problem(
    model,
    x,
    classes,
    output,
    strategy,
    max_memory,
    create_graph,
    kwargs,
    layer,
    value,
    random,
    differentiate: bool = True,
) -> Problem:
    with torch.inference_mode(False):
        return make_problem(
            model, x, classes, output, strategy, max_memory, create_graph, kwargs,
            tuple(STRATEGIES), layer=layer, layer_value=value, allow_random=random,
            differentiate=differentiate,
        )  # fmt: skip


class _grad_mode:
    """Gradients on, whatever the caller's mode (``torch.no_grad``, ``torch.inference_mode``)."""

    def __enter__(self) -> None:
        self._modes = (torch.inference_mode(False), torch.enable_grad())
        for mode in self._modes:
            mode.__enter__()

    def __exit__(self, *exc: object) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)


class _RowPiece(NamedTuple):
    rows: slice
    ids: torch.Tensor  # [r, K]
    values: torch.Tensor | None  # [r, K, *shape], None when written into the result
    outputs: torch.Tensor  # [r, C]
    point: torch.Tensor  # [r, *shape]


class _Stale(Exception):
    """The model's number of outputs changed since it was measured."""


class _Engine:
    """Plans one call and walks its chunks."""

    def __init__(self, p: Problem, *, stream: bool) -> None:
        self.p = p
        self.stream = stream
        self.ident = identify(p)
        self.facts, self.fresh, self._alone = probe(p, self.ident)
        # Guards can only object to what they see run. When every module behind the callable
        # is in a state they accept (checked just now), and the probe saw nothing run beyond
        # those modules, their verdict is known: the forward passes run without the hooks.
        self.guard = not (
            self.ident is not None and self.ident.quiet and self.facts.within and not self.fresh
        )
        self.k = targets.count(p.classes, self.facts.classes, p.batch)
        self.sizes = Sizes(
            act=self.facts.act,
            row=self.facts.row,
            features=self.facts.features,
            classes=self.k,
            width=self.facts.width,
        )
        self.head_module = self.facts.head_module()
        self.base = next(s.name for s in STRATEGIES.values() if s.role == "base")
        batched = [s.name for s in STRATEGIES.values() if s.role == "batched"]
        self.fallback = auto.prior(p.x.device, self.base, batched)
        self.head_reason: str | None = None
        self.race: auto.Race | None = None
        self.raced: list[torch.Tensor] = []  # blocks of the first targets, from the race
        self._checked = False  # whether a forward pass of this call was checked against facts
        self._plans: dict[str, Plan] = {}
        self.first_chunk: Chunk | None = None  # the raced row chunk, kept for the winner
        self.strategy = self._decide()
        self.plan = self._plan(self.strategy)

    # -- deciding ---------------------------------------------------------------------------
    def _refusal(self, s: Strategy) -> str | None:
        return s.refuses(
            create_graph=self.p.create_graph,
            allow_random=self.p.allow_random,
            head=self.head_module is not None,
        )

    def _decide(self) -> str:
        p = self.p
        if p.strategy != "auto":
            reason = self._refusal(STRATEGIES[p.strategy])
            if reason:
                raise ValueError(f"strategy: {reason}; use {_others(p.strategy)} or 'auto'")
            return p.strategy
        self._key = None
        if self.ident is not None:
            self._anchor = self.ident.anchor
            self._key = (*self.ident.key, p.batch.bit_length(), self.k, _kind(p.classes))
            self._key += (p.create_graph, p.budget, self.stream)
            name = auto.cached(self._anchor, self._key)
            if name is not None:
                return name
        usable = [s for s in STRATEGIES.values() if self._refusal(s) is None and self._fits(s.name)]
        if not usable:
            self._plan(self.base)  # raises the budget error of the leanest strategy
        preferred = [s for s in usable if s.preferred is not None and s.preferred(self.sizes)]
        if preferred:  # far fewer passes than K: the cheapest of them, without timing
            return self._remember(min(preferred, key=lambda s: s.passes(self.sizes)).name)
        names = [s.name for s in usable]
        batched = [
            n
            for role in ("batched", "stand-in")
            for n in names
            if STRATEGIES[n].role == role and self._plan(n).cols >= 2  # room to batch at all
        ]
        if self.k < 4 or self.base not in names:
            return self._remember(self.fallback if self.fallback in names else names[0])
        self.race = auto.Race(self.base, batched, self.k, lambda n: min(self._plan(n).cols, self.k))
        return self.base  # provisional: the race on the first chunk decides

    def _remember(self, name: str) -> str:
        if self._key is not None:
            auto.remember(self._anchor, self._key, name)
        return name

    def _fits(self, name: str) -> bool:
        try:
            self._plan(name)
        except MemoryError:
            return False
        return True

    def _plan(self, name: str) -> Plan:
        if name not in self._plans:
            self._plans[name] = self._plan_of(name)
        return self._plans[name]

    def _plan_of(self, name: str) -> Plan:
        s = STRATEGIES[name]
        cols = self.sizes.features if s.columns == "features" else self.k
        whole = self.p.batch * self.sizes.row  # one class for every row
        if not self.stream or s.columns == "features":
            held, per_col = whole * self.k, 0  # the result (forward mode: all classes at once)
        else:
            held, per_col = 0, whole  # the chunk handed out holds every row of its classes
        return plan(
            s, self.sizes, self.p.batch, cols, self.p.budget, held, per_col=per_col,
            device=self.p.x.device,
        )  # fmt: skip

    # -- chunks -----------------------------------------------------------------------------
    def _chunk(self, name: str, rows: slice) -> Chunk:
        """The differentiated tensor, the forward pass (shared, for strategies that use one) and
        the targets for ``rows``."""
        p, s = self.p, STRATEGIES[name]
        x = p.x[rows]
        value = None if p.layer_value is None else p.layer_value[rows]
        if p.layer is not None:
            x = x.clone()  # the model may write into what it is given: never the caller's x
        elif not (p.create_graph and x.requires_grad):
            x = x.detach().requires_grad_()  # a leaf: writing into it is refused by autograd
        if value is not None and not (p.create_graph and value.requires_grad):
            value = value.detach().requires_grad_()
        head = self.head_module if s.needs_head else None
        if s.shared_forward:
            f = run(p, x, rows, value=value, head=head, leaf=not p.create_graph, guard=self.guard)
        elif p.create_graph and p.layer is not None:
            # The layer's value stays attached to everything before it, as for the input.
            f = run(p, x, rows, value=value, leaf=False, guard=self.guard)
        else:
            with torch.no_grad():
                inputs = x.detach().clone() if p.layer is None else x
                f = run(
                    p,
                    inputs,
                    rows,
                    value=None if value is None else value.detach(),
                    guard=self.guard,
                )
        self._check_facts(f)
        if self._alone is not None and rows.start == 0:
            # The probe's first sample alone against the same sample in this batch: coupling
            # is seen on the real work (a pass on two samples serves when this chunk holds one).
            in_batch = f.scores.detach()[:1] if rows.stop - rows.start > 1 else None
            refuse_coupling(p, self._alone, in_batch)
            self._alone = None
            keep(self.ident, self.facts)
        if p.layer is None:
            diff = x
        elif s.shared_forward or p.create_graph:
            diff = f.value
        else:
            diff = _leaf(f.value)
        if s.shared_forward:
            refuse_unconnected(f.scores, p)
        classes = p.classes
        if targets.is_per_sample(classes) and len(classes) == p.batch:
            classes = classes[rows]  # per-sample ids follow their rows into the chunk
        chunk = Chunk(
            x=diff,
            rows=targets.resolve(classes, f.scores.detach()),
            rerun=self._rerun(rows),
            transform=p.transform if p.transform is not None else _identity,
            create_graph=p.create_graph,
            out=f.scores if s.shared_forward else None,
            outputs=f.scores.detach(),
            where=rows,
        )
        if f.head is not None:
            self.head_reason = f.head.exact(f.pre, f.scores, builtin=p.transform is not None)
            chunk.head = f.head if self.head_reason is None else None
        return chunk

    def _check_facts(self, f) -> None:
        """The facts still describe the model as it runs; cached ones are measured again if not."""
        shape = None if self.p.layer is None else tuple(f.value.shape[1:])
        if f.scores.shape[1] != self.facts.classes or shape not in (None, self.facts.shape):
            if not self.fresh:
                raise _Stale()
            raise RuntimeError(
                f"model: its output changed between two passes of one call ({self.facts.classes} "
                f"classes, then {f.scores.shape[1]}; layer output {self.facts.shape}, then "
                f"{shape}); per-sample Jacobians need a model that maps every batch alike"
            )
        if not self._checked and not self.fresh and self.guard:  # once: the modes of what ran
            self._checked = True
            before = dict(self.facts.modules)
            for key, training in ran(f.watch):
                if before.get(key, False) != training and (training or key in before):
                    raise _Stale()

    def _rerun(self, rows: slice) -> Callable[[torch.Tensor, int], torch.Tensor]:
        p = self.p

        def again(value: torch.Tensor, repeats: int) -> torch.Tensor:
            if p.layer is None:
                return run(p, value, rows, repeats, guard=self.guard).scores
            x = p.x[rows]
            x = x.repeat(repeats, *([1] * (x.ndim - 1))) if repeats > 1 else x.clone()
            return run(p, x, rows, repeats, value=value, guard=self.guard).scores

        return again

    def _block(self, name: str, chunk: Chunk, cols: slice) -> torch.Tensor:
        s = STRATEGIES[name]
        if s.shared_forward and chunk.out is None:  # a chunk made for a strategy given up on
            if "shared" not in chunk.cache:
                chunk.cache["shared"] = self._chunk(name, chunk.where)
            chunk = chunk.cache["shared"]
        if s.needs_head and chunk.head is None:
            if self.p.strategy == name:
                raise ValueError(
                    f"strategy={name!r} is not exact for this model: {self.head_reason}; use "
                    f"{_others(name)} or 'auto' (auto falls back by itself)"
                )
            return self._block(self.base, chunk, cols)
        try:
            if s.columns == "features":
                block = s.run(chunk, self.plan.cols)[:, cols]
            else:
                block = s.run(chunk, cols)
        except (RuntimeError, NotImplementedError) as error:
            if self.p.strategy == "auto" and self.race is None and name != self.base:
                # auto took it by its cost model, and it cannot run this model (an operator
                # without a forward-mode rule, say): the base strategy serves, now and later.
                self.strategy = self._remember(self.base)
                self.plan = self._plan(self.base)
                return self._block(self.base, chunk, cols)
            raise _explained(error, name, self.p) from error
        if not self.p.create_graph:
            block = block.detach()
        # One layout whatever the strategy (vmap's blocks are transposed views): a reduction
        # over the result then adds in the same order, so the bits do not depend on the chunks.
        block = block.contiguous()
        _check_gradients(block, cols, self.p)
        return block

    # -- the race on the first row chunk ----------------------------------------------------
    def _first_rows(self) -> tuple[slice, int]:
        """The first row chunk and how many of its targets are done: when the strategy is not
        decided yet, the candidates race on its first targets, and their blocks are kept.

        Strategies may agree only to rounding, and a call's bits must not depend on whether it
        was the first. So the batched strategy's first block covers the base strategy's last
        target again: when the two agree bit for bit there, every block of the race is kept;
        when not, the loser's blocks are computed again by the winner (the column done twice
        serves when the batched strategy wins).
        """
        if self.race is None:
            return self._row_slices()[0], 0
        race, done = self.race, 0
        rows = min(self._plan(n).rows for n in [race.base, *race.batched])
        first = slice(0, min(rows, self.p.batch))
        chunk, seconds = auto.timed(lambda: self._chunk(race.base, first))
        race.small_work(seconds * self.p.batch / (first.stop - first.start))
        raced, overlap = [], None  # (name, cols, block) of new targets; the column done twice
        while (step := race.next()) is not None:
            name, width = step
            again = overlap is None and name != race.base and 0 < done and width > 1
            start = done - 1 if again else done  # the batched block's first column: done twice
            cols = slice(start, start + width)
            try:
                with quiet_fallbacks():
                    block, seconds = auto.timed(lambda n=name, c=cols: self._block(n, chunk, c))
            except (RuntimeError, NotImplementedError):
                if name == race.base:
                    raise
                race.failed(name)  # e.g. an operator without a batching rule
                continue
            race.record(name, width, seconds)
            if again:
                overlap = block[:, :1]
                block, cols = block[:, 1:], slice(start + 1, cols.stop)
            raced.append((name, cols, block))
            done = cols.stop
        self.strategy = self._remember(race.winner)
        self.plan = self._plan(self.strategy)
        self.race = None
        self.raced = self._agreed(raced, overlap, chunk)
        self.first_chunk = chunk  # every strategy but head can go on from its forward pass
        return first, done

    def _agreed(self, raced: list, overlap: torch.Tensor | None, chunk: Chunk) -> list:
        """The race's blocks, each as the winner computes it (``overlap``: the batched
        strategy's block for the base strategy's last target)."""
        if overlap is not None:
            last = next(i for i, (n, _, _) in enumerate(raced) if n != self.base) - 1
            name, cols, block = raced[last]
            if torch.equal(block[:, -1:], overlap):  # the two agree bit for bit on this model
                return [b for _, _, b in raced]
            if self.strategy != self.base:  # the batched column replaces the base's
                raced[last] = (self.strategy, slice(cols.stop - 1, cols.stop), overlap)
                if cols.stop - cols.start > 1:
                    raced.insert(last, (name, slice(cols.start, cols.stop - 1), block[:, :-1]))
        return [
            block if name == self.strategy else self._block(self.strategy, chunk, cols)
            for name, cols, block in raced
        ]

    # -- walking the plan -------------------------------------------------------------------
    def _row_slices(self) -> list[slice]:
        return _cover(0, self.p.batch, self.plan.rows)

    def _col_slices(self, start: int = 0) -> list[slice]:
        if STRATEGIES[self.strategy].columns == "features":
            return [slice(start, self.k)] if start < self.k else []
        return _cover(start, self.k, self.plan.cols)

    @property
    def single_block(self) -> bool:
        return self.race is None and len(self._row_slices()) == 1 and len(self._col_slices()) == 1

    def new_result(self) -> torch.Tensor:
        shape, dtype = self.facts.shape, self.facts.dtype
        return torch.empty(self.p.batch, self.k, *shape, dtype=dtype, device=self.p.x.device)

    def row_chunks(self, into: torch.Tensor | None = None) -> Iterator[_RowPiece]:
        """One :class:`_RowPiece` for each row chunk, all classes at once.

        With ``into``, blocks are written into that ``[B, K, *shape]`` tensor and ``values`` is
        ``None``.
        """
        first, start = self._first_rows()
        for rows in [first, *_cover(first.stop, self.p.batch, self.plan.rows)]:
            chunk, blocks, begin = self.first_chunk, self.raced, start
            self.first_chunk, self.raced, start = None, [], 0
            if chunk is None:
                chunk = self._chunk(self.strategy, rows)
            values = None
            if into is not None:  # each block straight into place: one block alive at a time
                col = 0
                for b in blocks:
                    into[rows, col : col + b.shape[1]] = b
                    col += b.shape[1]
                blocks.clear()
                for c in self._col_slices(begin):
                    into[rows, c] = self._block(self.strategy, chunk, c)
            else:
                blocks += [self._block(self.strategy, chunk, c) for c in self._col_slices(begin)]
                values = blocks[0] if len(blocks) == 1 else torch.cat(blocks, 1)
            yield _RowPiece(rows, chunk.rows.ids, values, chunk.outputs, chunk.x.detach())

    def class_chunks(self) -> Iterator[JacobianChunk]:
        """Chunks over classes holding every row (rows re-run per class chunk when split)."""
        first, start = self._first_rows()
        rest = _cover(first.stop, self.p.batch, self.plan.rows)
        chunk, raced = self.first_chunk, self.raced
        self.first_chunk, self.raced = None, []
        if not rest:
            chunk = chunk or self._chunk(self.strategy, first)
            col = 0
            for block in raced:  # the race's blocks first, then the winner's
                cols = slice(col, col + block.shape[1])
                col = cols.stop
                yield JacobianChunk(chunk.rows.ids[:, cols], block)
            for c in self._col_slices(start):
                yield JacobianChunk(chunk.rows.ids[:, c], self._block(self.strategy, chunk, c))
            return
        if start:  # rows are split: finish the raced targets on the other rows first
            first_ids, done = chunk.rows.ids, torch.cat(raced, 1)
            del chunk, raced
            for cols in _cover(0, start, self.plan.cols):
                parts, ids = [done[:, cols]], [first_ids[:, cols]]
                for rows in rest:
                    c = self._chunk(self.strategy, rows)
                    parts.append(self._block(self.strategy, c, cols))
                    ids.append(c.rows.ids[:, cols])
                yield JacobianChunk(torch.cat(ids), torch.cat(parts))
            del done
        for c in self._col_slices(start):
            parts, ids = [], []
            for rows in [first, *rest]:
                chunk = self._chunk(self.strategy, rows)
                parts.append(self._block(self.strategy, chunk, c))
                ids.append(chunk.rows.ids[:, c])
            yield JacobianChunk(torch.cat(ids), torch.cat(parts))


def _others(name: str) -> str:
    """The strategies to suggest instead of ``name``: those that serve every model (the base and
    the batched ones, by their records)."""
    fits = [s.name for s in STRATEGIES.values() if s.role in ("base", "batched") and s.name != name]
    return ", ".join(repr(n) for n in fits)


def _cover(start: int, end: int, step: int) -> list[slice]:
    return [slice(i, min(i + step, end)) for i in range(start, end, step)]


def _leaf(value: torch.Tensor) -> torch.Tensor:
    return value.detach().requires_grad_()


def _identity(out: torch.Tensor) -> torch.Tensor:
    return out


def _check_gradients(block: torch.Tensor, cols: slice, p: Problem) -> None:
    """Refuse non-finite gradients of finite outputs (say, sqrt at 0), naming the rows."""
    if math.isfinite(block.detach().sum().item()):
        return
    bad = ~torch.isfinite(block.detach().flatten(2)).all(-1)  # [r, k]
    if not bool(bad.any()):
        return
    rows, ks = bad.nonzero(as_tuple=True)
    pairs = sorted({(int(r), int(k) + (cols.start or 0)) for r, k in zip(rows, ks, strict=True)})
    raise ValueError(
        f"model: the gradient is infinite or NaN although the output is finite, for (row in the "
        f"chunk, target) {pairs[:6]}{' ...' if len(pairs) > 6 else ''}: the model has an "
        "infinite derivative there (e.g. sqrt or log at 0, or a division by ~0). Move the input "
        "off that point, or change the model"
    )


def _explained(error: RuntimeError, name: str, p: Problem) -> Exception:
    text = str(error)
    if "scaled_dot_product" in text or "_efficient_attention" in text or "flash_attention" in text:
        what = "create_graph=True" if p.create_graph else f"strategy={name!r}"
        return RuntimeError(
            f"{what}: PyTorch's fused scaled-dot-product attention has no rule for this (a "
            "PyTorch limitation). Use strategy='loop' (without create_graph), or build the model "
            "with plain attention: for HuggingFace models, attn_implementation='eager'"
        )
    if "appears to not have been used in the graph" in text:  # the graph reaches x, no gradient
        return ValueError(
            "model: its output has no gradient with respect to what is differentiated (a "
            "custom autograd Function returning None for it, say), so there is nothing to explain"
        )
    return error


def _kind(classes: targets.Classes) -> str:
    if targets.is_per_sample(classes):
        return "per-sample"
    return type(classes).__name__


__all__ += ["GuardError"]
