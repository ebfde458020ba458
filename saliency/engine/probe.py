"""What the engine learns about a model from one tiny forward pass, cached per model and state.

The probe runs the model on the first sample, guarded, under saved-tensor hooks and with random
draws seen (:mod:`.draws`: a model that draws random numbers is refused, naming the module). It
measures the bytes one sample's forward pass saves for the backward pass (planning needs them
before any real chunk runs), the number of outputs, the shape of the differentiated tensor (the
input, or a layer's output), and which ``nn.Linear`` produced the scores (the ``head`` strategy's
candidate). Whether a sample's scores change with its batch (coupling, which would make
per-sample gradients meaningless) is checked on the call's real work: the first sample's scores
alone, from this pass, against the same sample in the call's first row chunk (a pass on two
samples serves when that chunk holds one sample); when they differ, the sample alone once more
tells coupling from randomness drawn outside torch (NumPy's, say), which no operator shows. Only
then are the facts cached. Whether the scores depend on what is differentiated at all is read off
the graph, without a backward pass.

The cache is keyed on the modules behind the callable (see :mod:`.identity`), the shapes, dtypes
and devices, the output, the layer, and the state of every module (object and train/eval
flag), so switching a model to training mode or swapping a layer measures again. Nothing
cached here is trusted for correctness: the head is verified on every pass that uses it, and the
number of outputs is checked on every real forward pass.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.autograd.graph import get_gradient_edge
from torch.nn.modules.batchnorm import _BatchNorm

from . import draws
from .forward import GuardError, Pass, refuse_unconnected, run
from .identity import key_of
from .problem import Problem, Shared

__all__ = ["Probe", "forget", "keep", "probe", "refuse_coupling"]

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Probe:
    """Facts about a model at one input shape and state."""

    act: int  # bytes saved for backward per sample
    classes: int  # outputs C after the output transform
    shape: tuple[int, ...]  # per-sample shape of the differentiated tensor
    dtype: torch.dtype  # its dtype
    head: weakref.ref | None  # the nn.Linear whose output the scores were, if any
    width: int = 0  # features entering that layer
    modules: tuple = ()  # what ran and in which mode: a later pass that differs measures again
    within: bool = False  # every module that ran is one the callable holds (found statically)

    @property
    def row(self) -> int:
        """Bytes of one sample of the differentiated tensor."""
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()

    @property
    def features(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def head_module(self) -> nn.Linear | None:
        return None if self.head is None else self.head()


def state(p: Problem) -> tuple[tuple, bool]:
    """Everything about the call that the probe's facts depend on, and whether every module
    behind the callable is in a state no guard could object to (eval mode, with running
    statistics where it normalises, no TorchScript to look inside)."""
    modules, quiet = [], bool(p.owners)
    for root in p.owners:
        for m in _walk(root):
            modules.append((id(m), m.training))
            if quiet and (
                m.training
                or isinstance(m, torch.jit.ScriptModule)
                or (isinstance(m, _BatchNorm) and m.running_mean is None)
            ):
                quiet = False
    kwargs = tuple((k, value_key(v)) for k, v in p.kwargs.items())
    return (
        tuple(p.x.shape[1:]),
        p.x.dtype,
        p.x.device,
        p.output if isinstance(p.output, str) else "callable",
        None if p.layer is None else id(p.layer),
        p.layer_value is not None,
        p.allow_random,
        tuple(modules),
        kwargs,
    ), quiet


def value_key(v: object) -> object:
    """What of a forward argument the facts may depend on: tensors by shape and dtype, plain
    values by value (a flag that switches on noise or batch statistics), other objects by
    identity."""
    if isinstance(v, Shared):
        v = v.value
    if isinstance(v, torch.Tensor):
        return ("tensor", tuple(v.shape[1:]), v.dtype)
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, tuple) and all(
        x is None or isinstance(x, bool | int | float | str) for x in v
    ):
        return v
    return (type(v).__name__, id(v))


def ran(watch) -> tuple:
    """The modules a forward pass ran and their modes, each once, in order."""
    seen: dict[int, bool] = {}
    for m in watch.modules:
        seen.setdefault(id(m), m.training)
    return tuple(seen.items())


class Identity(NamedTuple):
    """What the caches know a call by (see :func:`identify`)."""

    anchor: object  # held weakly by the caches
    key: tuple  # everything else that identifies the model and the situation
    quiet: bool  # every module behind the callable is in a state no guard objects to


def identify(p: Problem) -> Identity | None:
    """The call's identity for the caches (``None``: nothing can be cached)."""
    found = key_of(p.model, p.owners)
    if found is None:
        return None
    key, quiet = state(p)
    return Identity(found[0], (found[1], key), quiet)


def _walk(root: nn.Module) -> list[nn.Module]:
    """Every module under ``root`` (a cheaper walk than ``modules()``, which builds names)."""
    out, stack = [], [root]
    while stack:
        m = stack.pop()
        out.append(m)
        stack.extend(c for c in m._modules.values() if c is not None)
    return out


def probe(p: Problem, ident: Identity | None) -> tuple[Probe, bool, torch.Tensor | None]:
    """The facts for ``p``, whether they were measured just now (on its first one or two
    samples) rather than taken from the cache under ``ident`` (from :func:`identify`), and the
    first sample's scores alone when the coupling check is left to the call's first row chunk
    (see :func:`refuse_coupling`; ``None`` when it was done, or is not needed).

    Facts measured just now are cached by :func:`keep`, once that check has passed.
    """
    per_model = _per_model(ident)
    if per_model is not None and ident.key in per_model:
        return per_model[ident.key], False, None
    facts, alone = _measure(p)
    if alone is None:
        keep(ident, facts)
    return facts, True, alone


def keep(ident: Identity | None, facts: Probe) -> None:
    """Cache facts measured by :func:`probe` under ``ident``."""
    per_model = _per_model(ident)
    if per_model is not None:
        per_model[ident.key] = facts


def _per_model(ident: Identity | None) -> dict | None:
    if ident is None:
        return None
    try:
        return _CACHE.setdefault(ident.anchor, {})
    except TypeError:  # not weakly referenceable: measured every time
        return None


def refuse_coupling(p: Problem, alone: torch.Tensor, in_batch: torch.Tensor | None) -> None:
    """Refuse a model whose first sample scores differently alone (``alone``, from the probe)
    and inside a batch (``in_batch``: its scores in the call's first row chunk; ``None`` when
    that chunk holds it alone, and a pass on the first two samples serves instead).

    When they differ, the sample alone once more tells coupling from randomness drawn outside
    torch (NumPy's, Python's), which no operator shows.
    """
    with _fresh_draws(p.x.device), _failures_explained(p):
        if in_batch is None:
            in_batch = _look(p, 2).scores[:1]
        gap = _differs(alone, in_batch)
        if gap is None:
            return
        again = _look(p, 1)
        changed = _differs(alone, again.scores)
        if changed is None:
            _refuse_coupled(gap)
        w = again.watch
        _refuse_random(changed, [w.name(m) for m in dict.fromkeys(w.modules) if m.training])


def forget(model: object | None = None) -> None:
    """Drop cached facts (for the modules behind ``model``, or for every model)."""
    if model is None:
        _CACHE.clear()
        return
    from .identity import owners

    found = key_of(model, owners(model))
    if found is not None:
        _CACHE.pop(found[0], None)


def _measure(p: Problem) -> tuple[Probe, torch.Tensor | None]:
    held = [m for root in p.owners for m in _walk(root)]
    exclude = {
        _ptr(t)
        for m in held
        for t in (*m._parameters.values(), *m._buffers.values())
        if t is not None
    }
    with _fresh_draws(p.x.device):  # the caller's random state is left as it was
        state = _rng_state(p.x.device)
        with _failures_explained(p):
            one, act, calls, leaf, drawn = _pass(p, 1, exclude)
        # What the scores are made of first: a model refused for that needs no comparison.
        refuse_unconnected(one.scores, p)
        _refuse_unused(one.scores, leaf, p)
        if drawn:
            raise GuardError(draws.message(drawn, one.watch.name))
        alone = one.scores.detach()
        if p.allow_random and p.batch > 1:
            # The call's passes draw other random numbers than this one: compare here, on a pair
            # drawing the same ones, so that a difference can only be coupling.
            _set_rng_state(p.x.device, state)
            with _failures_explained(p):
                gap = _differs(alone, _look(p, 2).scores[:1])
            if gap is not None:
                _refuse_coupled(gap)
        if p.allow_random or p.batch == 1:
            alone = None  # compared above, or nothing to compare with
    head, width = None, 0
    lin = _head_of(one, calls, builtin=p.transform is not None)
    if lin is not None:
        head, width = weakref.ref(lin), lin.in_features
    diff = one.value if p.layer is not None else p.x
    modules = ran(one.watch)
    facts = Probe(
        act=act,
        classes=one.scores.shape[1],
        shape=tuple(diff.shape[1:]),
        dtype=diff.dtype,
        head=head,
        width=width,
        modules=modules,
        within=bool(held) and {key for key, _ in modules} <= {id(m) for m in held},
    )
    return facts, alone


def _pass(p: Problem, n: int, exclude: set[int]) -> tuple[Pass, int, list, torch.Tensor, list]:
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = _ptr(t)
        if ptr not in exclude:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    linears = _Linears()
    # A copy, so that a saved input counts its own rows, not the whole batch's storage.
    xs = p.x[:n].detach().clone()
    if p.layer is None:
        xs.requires_grad_()
    value = None if p.layer_value is None else p.layer_value[:n].detach().requires_grad_()
    # Every pass checks that the default generators did not move (microseconds). A model with a
    # module in training mode, or one the engine cannot see, has every random operator of this
    # pass watched too, so that draws from a private generator are seen as well (watching costs
    # a Python call per operator, so eval-mode models are spared it).
    watched = not p.allow_random and (not p.owners or _training(p.owners))
    drawn = draws.Draws() if watched else contextlib.nullcontext()
    with (
        torch.enable_grad(),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        linears,
        drawn,
    ):
        result = run(p, xs, slice(0, n), value=value, draws_seen=watched)
    leaf = xs if p.layer is None else result.value
    found = drawn.found if watched else []
    return result, sum(seen.values()), linears.calls, leaf, found


def _training(roots: tuple[nn.Module, ...]) -> bool:
    return any(m.training for root in roots for m in _walk(root))


def _look(p: Problem, n: int) -> Pass:
    """The first ``n`` samples' scores, guarded, without a graph (for comparisons only)."""
    value = None if p.layer_value is None else p.layer_value[:n]
    with torch.no_grad():
        return run(p, p.x[:n].detach().clone(), slice(0, n), value=value)


class _Linears:
    """Records every ``nn.Linear`` call of a forward pass and its output tensor."""

    def __init__(self) -> None:
        self.calls: list[tuple[nn.Linear, torch.Tensor]] = []

    def __enter__(self) -> _Linears:
        from torch.nn.modules.module import register_module_forward_hook

        mine = threading.get_ident()  # another thread's Linear calls are not this pass's

        def hook(m: nn.Module, _args: object, out: object) -> None:
            if isinstance(m, nn.Linear) and threading.get_ident() == mine:
                self.calls.append((m, out))

        self._handle = register_module_forward_hook(hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


def _head_of(
    one: Pass, calls: list[tuple[nn.Linear, torch.Tensor]], builtin: bool
) -> nn.Linear | None:
    target = one.pre if builtin else one.scores
    if not calls or calls[-1][1] is not target or target.ndim != 2:
        return None
    mod = calls[-1][0]
    if sum(m is mod for m, _ in calls) != 1 or type(mod).forward is not nn.Linear.forward:
        return None
    return mod


def _refuse_coupled(gap: float) -> None:
    raise GuardError(
        f"model: a sample's output changes with the other samples in its batch (largest "
        f"difference {gap:.3g} between the sample alone and in a batch, while alone it gives the "
        "same output twice), so per-sample Jacobian rows would mix samples. Batch statistics "
        "(BatchNorm in training mode, or computed by hand) do this; call model.eval() first."
    )


def _refuse_random(gap: float, training: list[str]) -> None:
    listed = ""
    if training:
        listed = f" Modules in training mode that ran: {', '.join(training[:6])}."
    raise GuardError(
        f"model: two forward passes on the same sample gave different outputs (largest "
        f"difference {gap:.3g}): the model is random, so its gradients would be too (random "
        f"numbers from outside torch, such as NumPy's or Python's, which the engine cannot "
        f"watch).{listed} Call model.eval() first, or pass allow_random=True to explain one "
        "random draw per forward pass."
    )


def _refuse_unused(scores: torch.Tensor, leaf: torch.Tensor, p: Problem) -> None:
    """A clear error when the scores have a graph, but not to what is differentiated."""
    if not _reaches(scores, leaf):
        what = "x"
        if p.layer is not None:
            what = (
                f"the output of layer {p.layer_name} (of a tuple output, only the first element "
                "is differentiated)"
            )
        raise ValueError(
            f"model: its output does not depend on {what} through differentiable operations "
            "(for example argmax, one-hot, .detach(), or torch.no_grad inside the model), so "
            "there is no gradient to explain"
        )


def _reaches(out: torch.Tensor, leaf: torch.Tensor) -> bool:
    """Whether ``out``'s graph leads to ``leaf``: exactly when a backward pass would give it a
    gradient rather than ``None``, found by walking the graph instead of running one."""
    if out is leaf:  # an identity model, or a layer whose output is the scores
        return leaf.requires_grad
    if out.grad_fn is None or not leaf.requires_grad:
        return False
    target = get_gradient_edge(leaf).node
    stack, seen = [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is target:
            return True
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(n for n, _ in node.next_functions)
    return False


@contextmanager
def _fresh_draws(device: torch.device) -> Iterator[None]:
    """Random numbers drawn inside do not advance the caller's generators."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


def _rng_state(device: torch.device) -> torch.Tensor:
    # (torch.manual_seed would do too, but it costs a fifth of a millisecond.)
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return torch.get_rng_state()


def _set_rng_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def _differs(a: torch.Tensor, b: torch.Tensor) -> float | None:
    a, b = a.detach(), b.detach()
    gap = float((a - b).abs().max())
    scale = max(float(a.abs().max()), float(b.abs().max()), 1e-30)
    return gap if gap > 1e-4 * scale + 1e-6 else None


@contextmanager
def _failures_explained(p: Problem) -> Iterator[None]:
    """A model's own error on the probe's samples, explained on the caller's batch."""
    try:
        yield
    except GuardError:
        raise
    except Exception as error:
        _explain_failure(p, error)
        raise


def _explain_failure(p: Problem, error: Exception) -> None:
    """Re-raise a model's error on the caller's own batch, not on the probe's one sample."""
    if "in-place operation" in str(error) and "leaf Variable" in str(error):
        raise RuntimeError(
            "model: writes into its input in place (e.g. x.sub_(mean)); the engine differentiates "
            "the input, so the model must leave it alone: write x = x - mean, or clone it first"
        ) from error
    # The same conditions as the probe (a copy that requires grad), on the caller's batch.
    xs = p.x.detach().clone()
    if p.layer is None:
        xs.requires_grad_()
    try:
        with torch.enable_grad():
            run(p, xs, slice(0, p.batch), value=p.layer_value)
    except Exception as on_batch:
        raise on_batch from None
    raise RuntimeError(
        f"model: works on the whole batch but fails on its first sample alone "
        f"({type(error).__name__}: {error}); the engine runs a sample on its own to measure the "
        "model, so the model must accept any batch size. Per-sample tensors the model needs "
        "(masks, token ids) go in as keyword arguments, which follow the rows, not in a closure"
    ) from error


def _ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()
