"""Memory budgets: parse ``max_memory`` and split rows and classes into chunks that fit it.

The cost model counts bytes, not seconds. ``act`` is what one sample's forward pass keeps for the
backward pass (measured by :mod:`saliency.engine.probe`), ``row`` the bytes of one sample of the
differentiated tensor. Each strategy's record gives its working set as a simple polynomial in the
chunk sizes ``r`` (rows) and ``k`` (classes, or tangent features for forward mode); the planner
keeps rows whole when it can (one forward per row chunk is what every strategy shares) and then
takes the largest class chunk.
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass

import torch

__all__ = ["Plan", "Sizes", "parse_memory", "plan"]

# Allocators keep some freed blocks resident, so chunks are planned for 90% of the budget.
_HEADROOM = 0.9
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def parse_memory(value: int | float | str | None) -> int | None:
    """Bytes from ``max_memory``: an int, or a string such as ``"512MB"``, ``"2GB"``, ``"1.5GiB"``.

    Examples
    --------
    >>> parse_memory("512MB"), parse_memory("1GiB"), parse_memory(4096)
    (512000000, 1073741824, 4096)
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"max_memory: expected bytes or a string like '2GB', got {value!r}")
    if isinstance(value, int | float):
        number, unit = float(value), ""
        if not math.isfinite(number):
            raise ValueError(f"max_memory: must be a finite size, got {value!r}")
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        if not m or m.group(2).upper() not in _UNITS:
            raise ValueError(
                f"max_memory: could not read {value!r}; expected bytes or a size such as "
                "'512MB', '2GB' or '1.5GiB'"
            )
        number, unit = float(m.group(1)), m.group(2).upper()
    else:
        raise TypeError(f"max_memory: expected bytes or a string like '2GB', got {value!r}")
    total = int(number * _UNITS[unit])
    if total <= 0:
        raise ValueError(f"max_memory: must be positive, got {value!r}")
    return total


def default_cap(device: torch.device) -> int:
    """A soft working-memory cap used to size batched chunks when no budget is given."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    return _host_cap()


@functools.cache
def _host_cap() -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 * 2**30
    return int(min(total * 0.25, 4 * 2**30))


@dataclass(frozen=True)
class Sizes:
    """Per-sample byte counts the cost model needs."""

    act: int  # saved activations of one sample's forward pass
    row: int  # one sample of the differentiated tensor
    features: int  # its elements
    classes: int  # targets K asked for
    width: int = 0  # features entering a linear head, when there is one


@dataclass(frozen=True)
class Plan:
    """Chunk sizes: ``rows`` samples per forward, ``cols`` classes (or features) per pass."""

    rows: int
    cols: int


@functools.lru_cache(maxsize=256)
def plan(
    strategy: object,
    sizes: Sizes,
    batch: int,
    n_cols: int,
    budget: int | None,
    fixed: int,
    *,
    per_col: int = 0,
    device: torch.device,
) -> Plan:
    """The largest chunks that fit ``budget`` for ``strategy`` (a record with ``name`` and
    ``working_set(sizes, rows, cols)``); remembered, since repeated calls ask the same.

    Besides a chunk's working set, ``fixed`` bytes are held throughout (a result being filled)
    and ``per_col`` bytes per class of the chunk (a streamed chunk that holds every row).
    Raises ``MemoryError`` naming ``max_memory`` when not even one row and one class fit.
    """

    def need(r: int, k: int) -> float:
        return fixed + per_col * k + strategy.working_set(sizes, r, k)

    if budget is None:
        # No budget: batched strategies are still sized, by a soft cap on their working set.
        cap = default_cap(device)
        k = _largest(lambda k: strategy.working_set(sizes, batch, k) <= cap, n_cols)
        return Plan(batch, max(k, 1))
    r = batch
    while r >= 1:
        k = _largest(lambda k, r=r: need(r, k) <= _HEADROOM * budget, n_cols)
        if k:
            return Plan(r, k)
        r //= 2
    raise MemoryError(
        f"max_memory={_human(budget)} is too small for strategy {strategy.name!r}: one sample "
        f"and one class need about {_human(need(1, 1))} (activations {_human(sizes.act)} per "
        f"sample, input {_human(sizes.row)} per sample, {_human(fixed + per_col)} held for the "
        "result). Raise max_memory; class_jacobian users can also stream with iter_class_jacobian."
    )


def _largest(ok, n: int) -> int:
    """The largest ``k`` in ``1..n`` with ``ok(k)`` (``ok`` is monotone), or 0 if none."""
    if not ok(1):
        return 0
    lo, hi = 1, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _human(n: float | None) -> str:
    if n is None:
        return "None"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"
