"""Ranks for a run: the caller's process group, one made from torchrun's variables, or none.

Launched with ``torchrun --nproc-per-node=N`` (``WORLD_SIZE`` and friends set), a run joins a
process group (gloo on CPU, nccl on CUDA) and leaves it when done; a group the caller made is used
and left alone. Without either, the run is one rank and every call here is a no-op.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Ranks", "ranks"]


@dataclass(frozen=True)
class Ranks:
    """This process's rank among ``world`` ranks, and how to wait for and hear from the others."""

    rank: int
    world: int
    device: torch.device  # where collective tensors live (CPU for gloo, this rank's GPU for nccl)

    @property
    def leader(self) -> bool:
        """Whether this is rank 0, which writes the manifest and the summary."""
        return self.rank == 0

    def share(self, value: object) -> object:
        """Rank 0's ``value`` on every rank (pickled; small values only)."""
        if self.world == 1:
            return value
        box = [value if self.leader else None]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def agree_ok(self, ok: bool) -> bool:
        """Wait for every rank; True when every rank reports ``ok`` (a barrier carrying news)."""
        if self.world == 1:
            return ok
        flag = torch.tensor([0 if ok else 1], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) == 0


# Ranks wait for each other at the end of their shards and while rank 0 writes the summary and
# report, which can take long on a big run; torchrun ends every rank when one fails, so a long
# timeout does not leave a failed run hanging.
TIMEOUT = datetime.timedelta(hours=4)


@contextlib.contextmanager
def ranks(device: torch.device, timeout: datetime.timedelta = TIMEOUT) -> Iterator[Ranks]:
    """The ranks of this run, joining torchrun's group when launched by it (and leaving it after).

    ``device`` is where the model runs: a CUDA device selects nccl, anything else gloo. A group
    the caller initialised keeps its own timeout.
    """
    made = False
    if not dist.is_available() or (not dist.is_initialized() and _env_world() <= 1):
        yield Ranks(0, 1, torch.device("cpu"))
        return
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl" and device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        kwargs: dict = {"timeout": timeout}
        if backend == "nccl":
            kwargs["device_id"] = device
        dist.init_process_group(backend=backend, **kwargs)
        made = True
    backend = dist.get_backend()
    where = device if backend == "nccl" else torch.device("cpu")
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size(), where)
    finally:
        if made:
            dist.destroy_process_group()


def _env_world() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1
