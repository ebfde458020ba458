"""Data sets to batches: tensors, map-style Datasets and DataLoaders, read by sample index.

A run reads its data by index, shard by shard, so that every rank can take its own shards and a
resumed run can skip the finished ones without reading them. That needs a fixed order: tensors and
map-style datasets have one; a DataLoader is accepted when it reads its dataset in order (no
shuffling, no custom sampler), and lends the run its batch size, collate function and workers.

Examples
--------
>>> import torch
>>> source = as_source((torch.randn(10, 3), torch.arange(10) % 2))
>>> len(source), source.labelled
(10, True)
>>> [(len(s), s.labels.tolist()) for _, s in source.batches([range(0, 4), range(8, 10)])]
[(4, [0, 1, 0, 1]), (2, [0, 1])]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    SequentialSampler,
    default_collate,
)

from .manifest import tensor_digest

__all__ = ["Samples", "Source", "as_source"]


@dataclass(frozen=True)
class Samples:
    """Consecutive samples of a data set as read: inputs, labels and per-sample forward arguments.

    Attributes
    ----------
    x : torch.Tensor
        ``[n, ...]``, what the methods explain.
    labels : torch.Tensor or None
        ``[n]`` integer class ids.
    forward : dict
        Per-sample keyword arguments of the model (``attention_mask``, ...), first dimension
        ``n``: they follow their samples wherever samples are picked (:meth:`take`).
    """

    x: torch.Tensor
    labels: torch.Tensor | None = None
    forward: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, rows: torch.Tensor | Sequence[int] | slice) -> Samples:
        """Some of the samples (a bool mask, indices or a slice), every part following its rows:
        the one place where per-sample arguments are sliced."""
        if not isinstance(rows, slice):
            rows = torch.as_tensor(rows)
            if rows.dtype != torch.bool:
                rows = rows.to(torch.long)

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t[rows if isinstance(rows, slice) else rows.to(t.device)]

        return Samples(
            pick(self.x),
            None if self.labels is None else pick(self.labels),
            {name: pick(value) for name, value in self.forward.items()},
        )

    def to(self, device: torch.device) -> Samples:
        """The samples on ``device`` (the model's); labels stay where they are."""
        return Samples(
            self.x.to(device),
            self.labels,
            {name: value.to(device) for name, value in self.forward.items()},
        )

    def digest(self) -> str:
        """A hash of everything read (inputs, labels, forward arguments), to tell whether a
        shard's data changed since it was made."""
        parts = [self.x.detach().cpu(), None if self.labels is None else self.labels.cpu()]
        for name in sorted(self.forward):
            parts.append(torch.tensor(list(name.encode()), dtype=torch.uint8))
            parts.append(self.forward[name].detach().cpu())
        return tensor_digest(*parts)


@dataclass(frozen=True)
class Source:
    """A data set read by index: ``len(source)`` samples, in a fixed order.

    Attributes
    ----------
    kind : str
        ``"tensors"``, ``"dataset"`` or ``"loader"``.
    length : int
    labelled : bool
        Whether samples come with integer class labels.
    batch_size : int or None
        The DataLoader's batch size, when the data came as one.
    labels : torch.Tensor or None
        Every label, when they are at hand without reading the samples (tensors).
    """

    kind: str
    length: int
    labelled: bool
    batch_size: int | None
    _read: Callable[[Sequence[range]], Iterator[tuple[int, object]]]
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.length

    def batches(self, ranges: Sequence[range]) -> Iterator[tuple[int, Samples]]:
        """``(i, samples)`` for each of ``ranges`` (consecutive sample indices), in order."""
        for i, batch in self._read(ranges):
            x, labels = _split(batch, self.labelled)
            if x.shape[0] != len(ranges[i]):
                raise ValueError(
                    f"data: samples {ranges[i].start}-{ranges[i].stop - 1} gave a batch of "
                    f"{x.shape[0]}; expected {len(ranges[i])} (one per sample)"
                )
            yield i, Samples(x, labels)


def as_source(data: object) -> Source:
    """Read ``data``: a tensor ``x``, a pair ``(x, labels)``, a map-style Dataset or a DataLoader.

    Dataset items are ``x`` or ``(x, label)``; a DataLoader must read its map-style dataset in
    order (``shuffle=False``, no custom sampler), because a resumed run and every rank must see
    the samples in the same order.
    """
    if isinstance(data, torch.Tensor):
        return _tensors(data, None)
    if isinstance(data, tuple | list) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return _tensors(data[0], data[1])
    if isinstance(data, DataLoader):
        return _loader(data)
    if isinstance(data, IterableDataset):
        raise TypeError(
            "data: an IterableDataset has no sample index, so a run can neither split it across "
            "ranks nor resume it; pass a map-style Dataset (with __len__ and __getitem__)"
        )
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        return _dataset(data)
    raise TypeError(
        f"data: expected a tensor x, a pair (x, labels), a map-style torch Dataset or a "
        f"DataLoader, got {type(data).__name__}"
    )


def _tensors(x: torch.Tensor, labels: object) -> Source:
    if x.ndim < 2:
        raise ValueError(f"data: x must have a batch dimension, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"data: x holds no sample (shape {tuple(x.shape)}); expected at least one")
    if labels is not None:
        labels = _labels(labels, "data: labels")
        if labels.shape[0] != x.shape[0]:
            raise ValueError(
                f"data: labels has {labels.shape[0]} entries for {x.shape[0]} samples; expected "
                "one label per sample"
            )

    def read(ranges: Sequence[range]) -> Iterator[tuple[int, object]]:
        for i, r in enumerate(ranges):
            part = x[r.start : r.stop]
            yield i, part if labels is None else (part, labels[r.start : r.stop])

    return Source("tensors", int(x.shape[0]), labels is not None, None, read, labels)


def _dataset(dataset: object) -> Source:
    length = _length(dataset)
    labelled = _first_is_labelled(dataset, length)

    def read(ranges: Sequence[range]) -> Iterator[tuple[int, object]]:
        for i, r in enumerate(ranges):
            items = [dataset[j] for j in r]
            try:
                batch = default_collate(items)
            except RuntimeError as e:
                if not _shapes_differ(e):
                    raise
                raise ValueError(_unbatchable(r, items, e)) from e
            yield i, batch

    return Source("dataset", length, labelled, None, read)


def _loader(loader: DataLoader) -> Source:
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset):
        raise TypeError(
            "data: this DataLoader reads an IterableDataset, which has no sample index to split "
            "across ranks or resume from; use a map-style Dataset"
        )
    sampler = loader.sampler
    if not isinstance(sampler, SequentialSampler):
        raise ValueError(
            f"data: the DataLoader draws samples with {type(sampler).__name__}, so the order "
            "changes from run to run (or it already splits the data), and a resumed run would mix "
            "samples; make it with shuffle=False and no sampler: the run splits the data across "
            "ranks itself"
        )
    if loader.batch_sampler is not None and type(loader.batch_sampler) is not BatchSampler:
        raise ValueError(
            f"data: the DataLoader batches with {type(loader.batch_sampler).__name__}; a run "
            "needs batches of consecutive samples: use batch_size= and no batch_sampler"
        )
    length = _length(dataset)
    labelled = _first_is_labelled(dataset, length)
    collate = loader.collate_fn

    def read(ranges: Sequence[range]) -> Iterator[tuple[int, object]]:
        if not ranges:
            return
        # One loader over every range of this rank, so that workers read ahead across shards.
        batches = DataLoader(
            dataset,
            batch_sampler=[list(r) for r in ranges],
            num_workers=loader.num_workers,
            collate_fn=collate,
            pin_memory=loader.pin_memory,
            worker_init_fn=loader.worker_init_fn,
            multiprocessing_context=loader.multiprocessing_context,
            persistent_workers=False,
        )
        batches = iter(batches)
        for position, r in enumerate(ranges):
            try:
                batch = next(batches)
            except RuntimeError as e:
                if not _shapes_differ(e):
                    raise
                raise ValueError(_unbatchable(r, None, e)) from e
            yield position, batch

    return Source("loader", length, labelled, loader.batch_size, read)


def _shapes_differ(error: Exception) -> bool:
    """Whether ``error`` is torch.stack's (through default_collate) about unequal shapes."""
    return "stack expects each tensor to be equal size" in str(error)


def _unbatchable(r: range, items: list | None, error: Exception) -> str:
    """Why samples ``r`` could not be stacked into one batch, naming two that differ."""
    shapes = {}
    for j, item in zip(r, items or [], strict=False):
        x = item[0] if isinstance(item, tuple | list) else item
        if isinstance(x, torch.Tensor):
            shapes.setdefault(tuple(x.shape), j)
    if len(shapes) > 1:
        (a, i), (b, j) = list(shapes.items())[:2]
        what = f"sample {i} has shape {list(a)} and sample {j} {list(b)}"
    else:
        what = f"{str(error).strip().splitlines()[0]}"
    return (
        f"data: samples {r.start}-{r.stop - 1} cannot be stacked into one batch ({what}); every "
        "sample must have the same shape: resize or pad them to one (for text: pad every "
        "sequence to one length)"
    )


def _length(dataset: object) -> int:
    try:
        length = len(dataset)
    except TypeError as e:
        raise TypeError(
            f"data: {type(dataset).__name__} has no length; a run needs a map-style Dataset "
            "with __len__ and __getitem__"
        ) from e
    if length < 1:
        raise ValueError("data: the data set is empty; expected at least one sample")
    return int(length)


def _first_is_labelled(dataset: object, length: int) -> bool:
    item = dataset[0]
    if isinstance(item, torch.Tensor):
        return False
    if isinstance(item, tuple | list) and len(item) == 2:
        return True
    raise TypeError(
        f"data: items must be x (a tensor) or (x, label); item 0 is a {type(item).__name__}"
        + (f" of {len(item)} entries" if isinstance(item, tuple | list) else "")
    )


def _split(batch: object, labelled: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not labelled:
        if not isinstance(batch, torch.Tensor):
            raise TypeError(f"data: expected a batch tensor, got {type(batch).__name__}")
        return batch, None
    if not (isinstance(batch, tuple | list) and len(batch) == 2):
        raise TypeError(f"data: expected batches of (x, labels), got {type(batch).__name__}")
    x, labels = batch
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"data: expected x to be a tensor, got {type(x).__name__}")
    return x, _labels(labels, "data: labels")


def _labels(labels: object, name: str) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.is_floating_point() or labels.is_complex():
        raise ValueError(
            f"{name}: expected integer class ids, one per sample, got {labels.dtype} of shape "
            f"{tuple(labels.shape)}"
        )
    if labels.dtype == torch.bool:
        raise ValueError(f"{name}: expected integer class ids, got booleans")
    return labels.to(torch.long)
