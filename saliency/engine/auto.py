"""``strategy="auto"``: pick the fastest exact strategy without wasting the first call.

The decision is made once per model and situation and remembered (the engine builds the key). Two
steps, both reading the strategies' records (:mod:`.strategies`):

1. **Cost model.** Where a strategy's record says it needs far fewer passes (``preferred``), the
   one with the fewest is taken without timing: ``head`` when its width ``F`` is at most 0.8 of the
   ``K`` targets (``F`` backward passes instead of ``K``), ``forward`` when the differentiated
   tensor has at most ``K / 2`` features (``D`` JVPs instead of ``K`` VJPs, and a JVP costs about
   what a VJP does). ``replicate`` (role "stand-in") repeats the forward pass ``K`` times to do
   ``vmap``'s batched backward, so it only races when ``vmap`` cannot run.
2. **A race on the real work.** Otherwise the "base" strategy (``loop``) and the "batched" one
   (``vmap``), each differentiating a shared forward pass, split the first targets of the first
   row chunk between them: the base computes two targets, the batched one two (the first of them
   the base's last again), and, when that is promising, four more. The blocks are part of the
   result and the winner computes the rest. Since a call's bits must not depend on whether it was
   the first, the target done twice is compared: strategies that agree bit for bit there keep
   every block; otherwise the loser's blocks are computed again by the winner. The batched
   strategy's time per target at its full width is extrapolated from its two widths.

With fewer than four targets there is nothing worth racing: the base strategy on a CPU, the
batched one elsewhere.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable

import torch

__all__ = ["Race", "cached", "forget", "remember"]

_DECISIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_HOPELESS = 1.5  # batched, per target at its first width, this much slower: no wider trial
_BASE_TARGETS = 2  # one pass each for the base strategy; the faster one counts
_QUICK = 0.005  # seconds: a call estimated below this is not raced


def cached(anchor: object, key: tuple) -> str | None:
    """The remembered winner for ``key``, if any."""
    try:
        return _DECISIONS.get(anchor, {}).get(key)
    except TypeError:
        return None


def remember(anchor: object, key: tuple, name: str) -> None:
    try:
        _DECISIONS.setdefault(anchor, {})[key] = name
    except TypeError:  # not weakly referenceable: decide again next time
        pass


def forget(anchor: object | None = None) -> None:
    """Drop remembered decisions (for ``anchor``, or for every model)."""
    if anchor is None:
        _DECISIONS.clear()
    else:
        _DECISIONS.pop(anchor, None)


def prior(device: torch.device, base: str, batched: list[str]) -> str:
    """The strategy to use when there is nothing to race: one pass at a time on a CPU, batched
    passes on an accelerator."""
    return base if device.type == "cpu" or not batched else batched[0]


class Race:
    """The base strategy (one target per pass) against a batched one, on the first targets of
    the real work.

    :meth:`next` gives ``(name, width)``: the strategy to run on the next ``width`` targets,
    which the caller runs, times and reports with :meth:`record` (or :meth:`failed`); ``None``
    once the winner is known (:attr:`winner`).
    """

    def __init__(
        self, base: str, batched: list[str], k: int, full_width: Callable[[str], int]
    ) -> None:
        self.base = base
        self.batched = list(batched)  # the batched strategy, then its stand-in
        self.left = k
        self.full_width = full_width  # the width the strategy would run at after the race
        self.times: dict[tuple[str, int], list[float]] = {}
        self.winner: str | None = None
        # The base strategy runs two targets (one pass each: the faster counts); the batched one
        # two small widths. The loser's targets are computed again by the winner, so they stay
        # few whatever K.
        rest = k - _BASE_TARGETS
        widths = (2, min(4, rest - 2))
        cap = full_width(batched[0]) if batched else 2  # never wider than max_memory allows
        self.widths = (min(widths[0], cap), min(widths[1], cap))

    def small_work(self, seconds_forward: float) -> None:
        """Decide without racing when the whole call is too quick for a race to pay off (its
        fixed costs would outweigh the gap): batched passes, whose fixed cost is paid once."""
        if seconds_forward * (1 + 2 * self.left) < _QUICK:
            self._decide(self.batched[0] if self.batched else self.base)

    def next(self) -> tuple[str, int] | None:
        if self.winner is not None:
            return None
        base = self.base
        if len(self.times.get((base, 1), [])) < _BASE_TARGETS:
            return self._ask(base, 1)
        if not self.batched:
            return self._decide(base)
        other, (a, b) = self.batched[0], self.widths
        if (other, a) not in self.times:
            return self._ask(other, a)
        t_base, t_a = min(self.times[base, 1]), self.times[other, a][0]
        if t_a / a >= _HOPELESS * t_base:
            return self._decide(base)
        if (other, b) not in self.times and b > a and self.left >= b:
            return self._ask(other, b)
        per = t_a / a
        if b > a and (other, b) in self.times:
            c1 = max((self.times[other, b][0] - t_a) / (b - a), 0.0)
            c0 = max(t_a - a * c1, 0.0)
            per = c0 / max(self.full_width(other), 1) + c1
        return self._decide(other if per < t_base else base)

    def _ask(self, name: str, width: int) -> tuple[str, int] | None:
        if self.left < width:
            return self._decide(self._best())
        return name, width

    def _best(self) -> str:
        """The better of what was timed so far (per target)."""
        a = self.widths[0]
        if not self.batched or (self.batched[0], a) not in self.times:
            return self.base
        other = self.batched[0]
        return other if self.times[other, a][0] / a < min(self.times[self.base, 1]) else self.base

    def _decide(self, name: str) -> None:
        self.winner = name
        return None

    def record(self, name: str, width: int, seconds: float) -> None:
        self.times.setdefault((name, width), []).append(seconds)
        self.left -= width

    def failed(self, name: str) -> None:
        """``name`` cannot run on this model: race without it."""
        self.batched = [b for b in self.batched if b != name]
        self.times = {key: t for key, t in self.times.items() if key[0] != name}


def timed(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    """Run ``fn`` and return its result and wall time (device work included)."""
    _sync()
    start = time.perf_counter()
    out = fn()
    _sync()
    return out, time.perf_counter() - start


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
