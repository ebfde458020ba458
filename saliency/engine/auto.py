"""``strategy="auto"``: measure the candidate strategies once, then remember the fastest.

The decision is cached per model (weakly), input shape, dtype, device, number of targets, output
transform and budget. The first call times every candidate that fits the budget on the first row
chunk; when there are many targets it times a sample of them and extrapolates, counting the shared
forward pass once. Later calls with the same key go straight to the winner.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable

import torch

__all__ = ["choose", "forget"]

_DECISIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TRIAL_TARGETS = 32  # at most this many targets are timed per candidate
_SLOW = 1.0  # seconds: a candidate this slow is timed once, not best-of-two


def cached(model: Callable, key: tuple) -> str | None:
    """The remembered winner for ``key``, if any."""
    try:
        return _DECISIONS.get(model, {}).get(key)
    except TypeError:
        return None


def remember(model: Callable, key: tuple, name: str) -> None:
    try:
        _DECISIONS.setdefault(model, {})[key] = name
    except TypeError:  # not weak-referenceable: decide again next time
        pass


def forget(model: Callable | None = None) -> None:
    """Drop remembered decisions (for ``model``, or for every model)."""
    if model is None:
        _DECISIONS.clear()
    else:
        _DECISIONS.pop(model, None)


def choose(runs: dict[str, Callable[[int], None]], forward: Callable[[], None], k: int) -> str:
    """The name of the fastest candidate.

    ``runs[name](k_t)`` computes ``k_t`` targets (with its own forward pass where it has one);
    ``forward()`` runs one shared forward pass alone, so that its cost is counted once, not
    ``k / k_t`` times, when extrapolating from ``k_t`` to ``k`` targets.
    """
    if len(runs) == 1:
        return next(iter(runs))
    k_t = min(k, _TRIAL_TARGETS)
    t_fwd = _time(forward) if k_t < k else 0.0
    costs = {}
    for name, run in runs.items():
        try:
            t = _time(lambda run=run: run(k_t))
        except (RuntimeError, NotImplementedError):
            continue  # e.g. an op without a vmap or forward-mode rule: not a candidate
        if k_t < k:
            if name in ("loop", "vmap"):
                t = t_fwd + (t - t_fwd) * k / k_t
            elif name == "replicate":
                t = t * k / k_t
            # forward mode always computes every target; the head's cost is its feature
            # Jacobian, which does not grow with the number of targets.
        costs[name] = t
    if not costs:
        raise RuntimeError("strategy='auto': every candidate strategy failed on this model")
    return min(costs, key=costs.get)


def _time(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()  # warm-up, and the only run for a slow candidate
    first = time.perf_counter() - start
    if first > _SLOW:
        return first
    best = first
    for _ in range(2):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        best = min(best, time.perf_counter() - start)
    return best


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
