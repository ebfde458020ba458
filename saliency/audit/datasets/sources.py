"""Data sets to batches: tensors, map-style Datasets and DataLoaders, read by sample index.

A run reads its data by index, shard by shard, so that every rank can take its own shards and a
resumed run can skip the finished ones without reading them. That needs a fixed order: tensors and
map-style datasets have one; a DataLoader is accepted when it reads its dataset in order (no
shuffling, no custom sampler), and lends the run its batch size, collate function and workers.

Samples come as ``x``, ``(x, label)``, ``(x, label, forward)`` or ``(x, forward)`` with
``forward`` a dict of per-sample keyword arguments of the model (``attention_mask``, ...), or as
a dict in HuggingFace's style, ``{"input_ids": ..., "attention_mask": ..., "labels": ...}``: the
input under one of :data:`INPUT_KEYS`, the labels under one of :data:`LABEL_KEYS`, every other
entry a forward argument.

Examples
--------
>>> import torch
>>> source = as_source((torch.randn(10, 3), torch.arange(10) % 2))
>>> len(source), source.labelled
(10, True)
>>> [(len(s), s.labels.tolist()) for _, s in source.batches([range(0, 4), range(8, 10)])]
[(4, [0, 1, 0, 1]), (2, [0, 1])]
>>> ids, mask = torch.ones(6, 5, dtype=torch.long), torch.ones(6, 5)
>>> text = as_source({"input_ids": ids, "attention_mask": mask, "labels": torch.zeros(6).long()})
>>> _, first = next(text.batches([range(0, 2)]))
>>> first.x.shape, sorted(first.forward), text.integer_x
(torch.Size([2, 5]), ['attention_mask'], True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
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

from saliency.engine import sample_rows

from .manifest import tensor_digest

__all__ = ["INPUT_KEYS", "LABEL_KEYS", "Samples", "Source", "as_source"]

# Where a dict sample keeps its input (HuggingFace's names first) and its labels.
INPUT_KEYS = ("input_ids", "inputs_embeds", "pixel_values", "input_values", "input_features", "x")
LABEL_KEYS = ("labels", "label", "y")


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
            # the engine's rule for per-sample arguments, so that a batch is cut as it chunks one
            return sample_rows(t, len(self), rows if isinstance(rows, slice) else rows.to(t.device))

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
    integer_x : bool
        Whether the inputs are integers (token ids), as the first sample has them.
    """

    kind: str
    length: int
    labelled: bool
    batch_size: int | None
    _read: Callable[[Sequence[range]], Iterator[tuple[int, object]]]
    labels: torch.Tensor | None = None
    integer_x: bool = False

    def __len__(self) -> int:
        return self.length

    def batches(self, ranges: Sequence[range]) -> Iterator[tuple[int, Samples]]:
        """``(i, samples)`` for each of ``ranges`` (consecutive sample indices), in order."""
        for i, batch in self._read(ranges):
            r = ranges[i]
            x, labels, forward = _parts(
                batch, f"samples {r.start}-{r.stop - 1}", labels_may_be_none=True
            )
            if (labels is not None) != self.labelled:
                raise TypeError(
                    f"data: samples {r.start}-{r.stop - 1} come "
                    + ("without labels" if labels is None else "with labels")
                    + ", the first sample "
                    + ("with" if self.labelled else "without")
                    + "; every sample must come alike"
                )
            if labels is not None:
                labels = _labels(labels, "data: labels")
            for name, value in {"x": x, **forward}.items():
                if value.ndim < 1 or value.shape[0] != len(r):
                    raise ValueError(
                        f"data: samples {r.start}-{r.stop - 1} gave {tuple(value.shape)} for "
                        f"{name!r}; expected a batch of {len(r)} (one per sample)"
                    )
            yield i, Samples(x, labels, forward)


def as_source(data: object) -> Source:
    """Read ``data``: a tensor ``x``, a tuple ``(x, labels)``, ``(x, labels, forward)`` or
    ``(x, forward)``, a dict of tensors in HuggingFace's style, a map-style Dataset of such
    samples, or a DataLoader over one.

    A DataLoader must read its map-style dataset in order (``shuffle=False``, no custom
    sampler), because a resumed run and every rank must see the samples in the same order.
    """
    if isinstance(data, torch.Tensor | Mapping):
        return _tensors(*_parts(data, "data"))
    if isinstance(data, tuple | list) and len(data) in (2, 3) and isinstance(data[0], torch.Tensor):
        return _tensors(*_parts(tuple(data), "data", labels_may_be_none=True))
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
        f"data: expected a tensor x, a tuple (x, labels), a dict of tensors, a map-style torch "
        f"Dataset or a DataLoader, got {type(data).__name__}"
    )


def _tensors(x: torch.Tensor, labels: object, forward: dict[str, torch.Tensor]) -> Source:
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
    for name, value in forward.items():
        if value.ndim < 1 or value.shape[0] != x.shape[0]:
            raise ValueError(
                f"data: {name!r} has shape {tuple(value.shape)} for {x.shape[0]} samples; a "
                "forward argument holds one entry per sample (first dimension)"
            )

    def read(ranges: Sequence[range]) -> Iterator[tuple[int, object]]:
        for i, r in enumerate(ranges):
            part = slice(r.start, r.stop)
            yield (
                i,
                (
                    x[part],
                    None if labels is None else labels[part],
                    {name: value[part] for name, value in forward.items()},
                ),
            )

    length, integer = int(x.shape[0]), not x.is_floating_point()
    return Source("tensors", length, labels is not None, None, read, labels, integer)


def _dataset(dataset: object) -> Source:
    length = _length(dataset)
    labelled, integer = _first_item(dataset)

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

    return Source("dataset", length, labelled, None, read, None, integer)


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
    labelled, integer = _first_item(dataset)
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

    return Source("loader", length, labelled, loader.batch_size, read, None, integer)


def _shapes_differ(error: Exception) -> bool:
    """Whether ``error`` is torch.stack's (through default_collate) about unequal shapes."""
    return "stack expects each tensor to be equal size" in str(error)


def _unbatchable(r: range, items: list | None, error: Exception) -> str:
    """Why samples ``r`` could not be stacked into one batch, naming two that differ."""
    shapes = {}
    for j, item in zip(r, items or [], strict=False):
        try:
            x = _parts(item, f"sample {j}")[0]
        except (TypeError, ValueError):
            continue
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


def _first_item(dataset: object) -> tuple[bool, bool]:
    """Whether the items come with labels, and whether their inputs are integers."""
    x, labels, _ = _parts(dataset[0], "item 0")
    return labels is not None, not x.is_floating_point()


def _parts(
    sample: object, where: str, *, labels_may_be_none: bool = False
) -> tuple[torch.Tensor, object, dict[str, torch.Tensor]]:
    """``x``, the labels (or None) and the forward arguments of a sample, a batch or the data:
    ``x``, ``(x, label)``, ``(x, label, forward)``, ``(x, forward)`` or a dict."""
    if isinstance(sample, torch.Tensor):
        return sample, None, {}
    if isinstance(sample, Mapping):
        return _from_mapping(sample, where)
    if isinstance(sample, tuple | list) and len(sample) in (2, 3):
        x, *rest = sample
        forward: object = {}
        if len(rest) == 2:
            labels, forward = rest
        elif isinstance(rest[0], Mapping):
            labels, forward = None, rest[0]
        else:
            labels = rest[0]
        if labels is None and len(rest) == 2 and not labels_may_be_none:
            raise TypeError(f"data: {where}: labels are None; leave them out: (x, forward)")
        if isinstance(forward, Mapping):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"data: {where}: x is a {type(x).__name__}; expected a tensor")
            return x, labels, _forward(dict(forward), where)
    what = type(sample).__name__
    if isinstance(sample, tuple | list):
        what += f" of {len(sample)} entries"
    raise TypeError(
        f"data: {where} is a {what}; expected x (a tensor), (x, label), (x, label, forward), "
        "(x, forward) with forward a dict of per-sample model arguments, or a dict such as "
        "{'input_ids': ..., 'attention_mask': ..., 'labels': ...}"
    )


def _from_mapping(sample: Mapping, where: str):
    keys = list(sample)
    inputs = [k for k in INPUT_KEYS if k in sample]
    if not inputs:
        raise ValueError(
            f"data: {where} is a dict of {keys}, none of them an input ({', '.join(INPUT_KEYS)}); "
            "name the input 'input_ids' (token ids), 'pixel_values' (images) or 'x'"
        )
    if len(inputs) > 1:
        raise ValueError(
            f"data: {where} holds several inputs {inputs}; keep one (the others would be passed "
            "to the model as keyword arguments)"
        )
    found = [k for k in LABEL_KEYS if k in sample]
    if len(found) > 1:
        raise ValueError(f"data: {where} holds labels under {found}; keep one of them")
    x = sample[inputs[0]]
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"data: {where}'s {inputs[0]!r} is a {type(x).__name__}, not a tensor; make the data "
            "set return tensors (a datasets.Dataset: .with_format('torch'))"
        )
    labels = sample[found[0]] if found else None
    rest = {k: v for k, v in sample.items() if k != inputs[0] and k not in found}
    return x, labels, _forward(rest, where, inputs[0])


def _forward(values: dict, where: str, input_name: str = "x") -> dict[str, torch.Tensor]:
    for name, value in values.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"data: {where}: forward argument names are identifiers, got {name!r}")
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"data: {where}'s {name!r} holds a {type(value).__name__}, not a tensor per "
                f"sample; every entry besides the input ({input_name!r}) and the labels is passed "
                "to the model as a keyword argument: leave it out of the samples (a "
                "datasets.Dataset: .remove_columns or .with_format('torch', columns=[...]))"
            )
    return dict(values)


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
