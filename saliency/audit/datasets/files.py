"""Data sets from files, for ``saliency audit``: a folder of class folders, a tensor file, a name.

Images are decoded with :mod:`saliency.io`'s safe reader (no decompression bombs) and tensor files
are read without unpickling; both are normalised as ``(x - mean) / std`` along their first
dimension, as ``saliency explain`` does. An image that cannot be read becomes a NaN sample with
its reason recorded, so that a run skips and names it instead of stopping.

Examples
--------
>>> data = open_data("digits")
>>> len(data.dataset), data.labelled, data.class_names[:3]
(360, True, ['0', '1', '2'])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch.utils.data import Dataset

from saliency import models
from saliency.io.images import read_image
from saliency.io.inputs import IMAGE_SUFFIXES

__all__ = ["DataFiles", "open_data"]


@dataclass
class DataFiles:
    """A data set read from ``spec``, with what is known about it.

    Attributes
    ----------
    dataset : Dataset
        Items ``(x, label)`` when labelled, else ``x``; normalised, ready for the model.
    labelled : bool
    names : list of str
        A name for each sample, for messages: a file path, or ``file[row]``.
    class_names : list of str or None
        The folder names of an image folder, a bundled data set's classes.
    errors : dict
        ``{sample: reason}`` for images that could not be read (filled as they are read).
    labels_from : str
        How the labels were found, for the command to say.
    """

    dataset: Dataset
    labelled: bool
    names: list[str]
    class_names: list[str] | None = None
    errors: dict[int, str] = field(default_factory=dict)
    labels_from: str = ""


def open_data(
    spec: str | os.PathLike,
    *,
    shape: Sequence[int] | None = None,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
) -> DataFiles:
    """Open ``spec``: a bundled data set's name, a folder with one sub-folder of images per class,
    or a tensor file (``.safetensors`` with ``x`` and optionally ``y``; ``.pt`` holding such a
    dict, read with ``weights_only=True``; ``.npy`` with ``x`` only).

    ``shape`` is one input's shape as the model takes it, where known; ``size`` and ``channels``
    override it for images. ``mean`` and ``std`` normalise files (a bundled data set comes
    normalised for its bundled model). ``class_names`` are the model's, to match folder names.
    """
    path = Path(spec)
    if str(spec) in models.available() and not path.exists():
        x, y = models.held_out(str(spec))
        names = [f"{spec}[{i}]" for i in range(len(x))]
        info = models.load(str(spec))[1]
        return DataFiles(_Tensors(x, y), True, names, list(info.class_names), labels_from=str(spec))
    if path.is_dir():
        return _folder(path, shape, size, channels, mean, std, class_names)
    if path.is_file():
        x, y = _tensor_file(path)
        x = _normalise(x, mean, std, f"DATA {path}")
        names = [f"{path}[{i}]" for i in range(len(x))]
        return DataFiles(_Tensors(x, y), y is not None, names, labels_from="the file's y")
    raise FileNotFoundError(
        f"DATA: {str(spec)!r} is neither a bundled data set ({', '.join(models.available())}), "
        "a folder of class folders, nor a tensor file"
    )


class _Tensors(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i] if self.y is None else (self.x[i], self.y[i])


class _Images(Dataset):
    """Images decoded on demand; an unreadable one is NaN, with its reason in ``errors``."""

    def __init__(self, files, labels, size, channels, mean, std, shape, errors) -> None:
        self.files, self.labels = files, labels
        self.size, self.channels, self.mean, self.std = size, channels, mean, std
        self.shape, self.errors = shape, errors

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            image = read_image(self.files[i], self.size, self.channels)
        except Exception as e:  # decoders raise many types; any of them means an unreadable file
            self.errors[i] = str(e) or type(e).__name__
            return torch.full(self.shape, float("nan")), self.labels[i]
        # Past decoding, an error is the run's (mean and std were checked against the channels
        # at the door), not this image's: it is raised, never hidden as a NaN sample.
        x = torch.from_numpy(image).permute(2, 0, 1).float().div_(255)
        return _normalise(x[None], self.mean, self.std, "images")[0], self.labels[i]


def _folder(path, shape, size, channels, mean, std, class_names) -> DataFiles:
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(
            f"DATA: {str(path)!r} has no class folders; expected one sub-folder of images per "
            "class (for loose images, use saliency explain)"
        )
    images = {folder: _images_in(folder) for folder in folders}
    # A folder without images is no class: left out before the labels are chosen, so that it
    # cannot shift the classes of the others.
    empty = [f.name for f in folders if not images[f]]
    folders = [f for f in folders if images[f]]
    if not folders:
        raise ValueError(f"DATA: the class folders of {str(path)!r} hold no images")
    ids, labels_from = _folder_ids([f.name for f in folders], class_names, path)
    if empty:
        labels_from += f"; folders without images left out: {', '.join(empty)}"
    files, labels = [], []
    for folder, class_id in zip(folders, ids, strict=True):
        files += images[folder]
        labels += [class_id] * len(images[folder])
    if shape is not None and len(shape) == 3 and shape[0] in (1, 3):
        channels = channels or shape[0]
        size = size or tuple(shape[1:])
    if size is None or channels is None:
        first = _first_readable(files, size, channels)  # it decides, as in explain
        size, channels = size or first.shape[:2], channels or first.shape[2]
    one = (channels, *size)
    # Checked once here: a wrong count would otherwise fail on every image alike.
    _normalise(torch.zeros(1, *one), mean, std, f"the images in {str(path)!r}")
    errors: dict[int, str] = {}
    dataset = _Images(files, torch.tensor(labels), size, channels, mean, std, one, errors)
    names = [str(f) for f in files]
    return DataFiles(dataset, True, names, [f.name for f in folders], errors, labels_from)


def _images_in(folder: Path) -> list[Path]:
    """The image files under ``folder``, hidden ones left out: a dotfile or anything inside a
    hidden folder (``.ipynb_checkpoints``, ``.git``) is no sample."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _first_readable(files: list[Path], size, channels) -> np.ndarray:
    """The first image that can be read (it fixes the size and channels); those before it are
    read again, and skipped and named, by the run."""
    first_error = ""
    for path in files:
        try:
            return read_image(path, size, channels)
        except Exception as e:  # decoders raise many types; the next image may be fine
            if path == files[0]:
                first_error = f"{path}: {e or type(e).__name__}"
    raise ValueError(
        f"DATA: none of the {len(files)} images can be read (the first, {first_error}); give "
        "image files (PNG, JPEG, BMP, GIF, TIFF, WebP, PPM)"
    )


def _folder_ids(
    names: list[str], class_names: Sequence[str] | None, path: Path
) -> tuple[list[int], str]:
    """Each folder's class id, and how it was found; a folder set that matches half a rule is
    refused rather than numbered in sorted order."""
    if class_names is not None:
        known = list(class_names)
        matched = [n for n in names if n in known]
        if matched and len(matched) < len(names):
            strangers = [n for n in names if n not in known]
            raise ValueError(
                f"DATA: in {str(path)!r}, folders {matched} are the model's class names but "
                f"{strangers} are not (its classes: {_some(known)}); rename or remove those "
                "folders, or give --class-names"
            )
        if matched:
            return [known.index(n) for n in names], "folder names = the model's classes"
    # Decimal digits of any script are ids (int() reads them); '²' is a digit but no number.
    numbers = [n for n in names if n.isdecimal()]
    if numbers and len(numbers) < len(names):
        strangers = [n for n in names if not n.isdecimal()]
        raise ValueError(
            f"DATA: in {str(path)!r}, folders {numbers} are class ids but {strangers} are not; "
            "rename or remove those folders (or name every folder by its class)"
        )
    if numbers:
        ids = [int(n) for n in names]
        seen: dict[int, str] = {}
        for name, i in zip(names, ids, strict=True):
            if i in seen:
                raise ValueError(
                    f"DATA: in {str(path)!r}, folders {seen[i]!r} and {name!r} both name class "
                    f"{i}; merge them or rename one"
                )
            seen[i] = name
        return ids, "folder names = class ids"
    return list(range(len(names))), "folders in sorted order = classes 0, 1, ..."


def _some(names: list[str], shown: int = 10) -> str:
    return ", ".join(names[:shown]) + (f", ... ({len(names)} in all)" if len(names) > shown else "")


def _tensor_file(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                held = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors' own error type, for any damaged header
            raise ValueError(
                f"DATA: {str(path)!r} cannot be read as safetensors ({e}); it is damaged or "
                "not a safetensors file"
            ) from e
    elif suffix in (".pt", ".pth"):
        try:
            held = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(
                f"DATA: {str(path)!r} cannot be read with torch.load(weights_only=True) "
                f"({type(e).__name__}); save a dict of tensors {{'x': ..., 'y': ...}}"
            ) from e
        held = {"x": held} if isinstance(held, torch.Tensor) else held
    elif suffix == ".npy":
        held = {"x": _npy(path)}
    else:
        raise ValueError(f"DATA: {str(path)!r} is not a .safetensors, .pt or .npy tensor file")
    if not isinstance(held, dict) or "x" not in held:
        keys = sorted(held) if isinstance(held, dict) else type(held).__name__
        raise ValueError(f"DATA: {str(path)!r} holds {keys}; expected tensors 'x' and 'y'")
    x, y = held["x"], held.get("y")
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.is_complex():
        raise ValueError(f"DATA: 'x' in {str(path)!r} must be a batch of real numbers [N, ...]")
    if y is not None:
        if not isinstance(y, torch.Tensor) or y.shape != (len(x),) or y.is_floating_point():
            raise ValueError(
                f"DATA: 'y' in {str(path)!r} must hold one integer label per sample ({len(x)})"
            )
        y = y.long()
    return x.to(torch.float32, copy=True), y


def _npy(path: Path) -> torch.Tensor:
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise ValueError(
                f"DATA: {str(path)!r} holds Python objects (an object array), which are not read: "
                "unpickling can run code; save numbers, e.g. np.save(path, x.astype(np.float32))"
            ) from None
        raise ValueError(f"DATA: {str(path)!r} cannot be read as .npy ({e})") from e
    except (OSError, EOFError) as e:
        raise ValueError(f"DATA: {str(path)!r} cannot be read as .npy ({e})") from e
    if not array.dtype.isnative:  # torch reads native byte order only
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"DATA: {str(path)!r} holds {array.dtype} values; expected numbers (bool, integer or "
            "floating point)"
        )
    return torch.from_numpy(np.ascontiguousarray(array))


def _normalise(x: torch.Tensor, mean, std, what: str) -> torch.Tensor:
    """``(x - mean) / std`` along dimension 1 (channels or features) of a batch."""
    for values, name in ((mean, "mean"), (std, "std")):
        if values is None:
            continue
        stats = torch.as_tensor(values, dtype=x.dtype).reshape(-1)
        if stats.numel() not in (1, x.shape[1]):
            raise ValueError(
                f"--{name}: {stats.numel()} values for {what} with {x.shape[1]} channels or "
                "features; expected 1 or one each"
            )
        stats = stats.reshape(1, -1, *[1] * (x.ndim - 2))
        x = x - stats if name == "mean" else x / stats
    return x
