"""``strategy="auto"``: measure the candidate strategies once, then remember the fastest.

The decision is cached per model (weakly), per-sample input shape, batch size (within a factor of
two, so the chunks of SmoothGrad and IG share one decision), dtype, device, number of targets,
output transform and budget. The first call times every candidate that fits the budget on up to
128 rows of the first row chunk; when there are many targets it times a sample of them and
extrapolates, counting the shared forward pass once. Later calls with the same key go straight
to the winner.
"""

from __future__ import annotations

import statistics
import time
import weakref
from collections.abc import Callable

import torch

__all__ = ["choose", "forget"]

_DECISIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TRIAL_TARGETS = 32  # at most this many targets are timed per candidate
_ROUNDS = 3  # timed rounds after the warm-up, at least, when the candidates are quick
# Quick candidates get more rounds, until each has run this long: a millisecond-scale candidate
# is the size of one burst of load on a shared machine, so three rounds are not enough there.
_SPEND = 0.05
_MAX_ROUNDS = 25
_SLOW = 2.0  # seconds: when all warm-ups together take longer, their times are used as they are


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
    jobs = {name: (lambda run=run: run(k_t)) for name, run in runs.items()}
    if k_t < k:
        jobs["_forward"] = forward
    times: dict[str, list[float]] = {}
    failure: Exception | None = None
    for name, job in jobs.items():  # warm-up, and drop candidates this model cannot run
        try:
            warm = _once(job)
        except (RuntimeError, NotImplementedError) as error:
            failure = error  # e.g. an op without a vmap or forward-mode rule
            continue
        times[name] = [warm]
    if not any(name in times for name in runs):
        raise RuntimeError(
            "strategy='auto': every candidate strategy failed on this model; the last error "
            "follows. Name a strategy to see its own error."
        ) from failure
    # Interleave the timed rounds so that a burst of load on a shared machine hits every
    # candidate alike, and compare medians: what a caller sees call after call.
    if sum(t[0] for t in times.values()) < _SLOW:
        for name in times:
            times[name] = []
        for done in range(_MAX_ROUNDS):
            if done >= _ROUNDS and min(sum(t) for t in times.values()) >= _SPEND:
                break
            for name in times:
                times[name].append(_once(jobs[name]))
    best = {name: statistics.median(t) for name, t in times.items()}
    t_fwd = best.pop("_forward", 0.0)
    costs = {}
    for name, t in best.items():
        if k_t < k:
            if name in ("loop", "vmap"):
                t = t_fwd + (t - t_fwd) * k / k_t
            elif name == "replicate":
                t = t * k / k_t
            # forward mode always computes every target; the head's cost is its feature
            # Jacobian, which does not grow with the number of targets.
        costs[name] = t
    return min(costs, key=costs.get)


def _once(fn: Callable[[], None]) -> float:
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - start


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
