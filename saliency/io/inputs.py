"""Read the inputs to explain: image files and folders, ``.npy`` and ``.safetensors`` tensors."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from saliency.io.errors import InputProblem
from saliency.io.images import read_image
from saliency.io.tensors import read_tensor, split_rows

__all__ = ["InputError", "LoadedInputs", "Sample", "find_inputs", "iter_inputs", "load_inputs"]

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
TENSOR_SUFFIXES = frozenset({".npy", ".safetensors"})


class InputError(NamedTuple):
    """An input that could not be read: its path, and why (the message does not repeat the path)."""

    path: Path
    message: str


@dataclass(frozen=True)
class Sample:
    """One input, ready for the model.

    Attributes
    ----------
    name : str
        The path as given or found in a folder; ``"file.npy[3]"`` for row 3 of a batch file.
    path : Path
    tensor : torch.Tensor
        float32, normalised: ``[C, H, W]`` for images, the stored shape for tensor files.
    image : numpy.ndarray or None
        The image as the model sees it before normalisation (converted and resized): uint8
        ``[H, W, C]`` with ``C`` 1 or 3, for drawing overlays. ``None`` for tensor files.
    """

    name: str
    path: Path
    tensor: torch.Tensor
    image: np.ndarray | None = None


@dataclass(frozen=True)
class LoadedInputs:
    """The samples read, in order, and the inputs that failed (the rest still load)."""

    samples: list[Sample] = field(default_factory=list)
    errors: list[InputError] = field(default_factory=list)


def find_inputs(
    paths: Iterable[str | Path], *, recursive: bool = False
) -> tuple[list[Path], list[InputError]]:
    """Expand folders into the supported files they hold; report missing paths and empty folders.

    A folder gives its image and tensor files (by suffix, hidden files skipped) sorted by path, from
    the folder itself or, with `recursive`, from all folders below it. Files named directly are kept
    whatever their suffix. A file reached twice is kept once, where it first appears.

    Returns
    -------
    files : list of Path
    errors : list of InputError
    """
    if isinstance(paths, (str, Path)):
        raise TypeError(f"paths: expected a list of paths; got a single {type(paths).__name__}")
    files: list[Path] = []
    errors: list[InputError] = []
    seen: set[Path] = set()
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(
                p
                for p in (path.rglob("*") if recursive else path.iterdir())
                if p.is_file()
                and p.suffix.lower() in IMAGE_SUFFIXES | TENSOR_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                errors.append(InputError(path, "folder holds no image or tensor files"))
        elif path.is_file():
            found = [path]
        else:
            errors.append(InputError(path, "no such file or folder"))
            continue
        for file in found:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                files.append(file)
    return files, errors


def load_inputs(
    paths: Iterable[str | Path],
    *,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    shape: Sequence[int] | None = None,
    key: str | None = None,
    recursive: bool = False,
) -> LoadedInputs:
    """Read every input, collecting the ones that fail instead of stopping at them.

    Takes the same arguments as :func:`iter_inputs`, which reads one file at a time.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> tmp = tempfile.TemporaryDirectory()
    >>> folder = Path(tmp.name)
    >>> np.save(folder / "rows.npy", np.zeros((2, 30), dtype=np.float32))
    >>> _ = (folder / "broken.png").write_bytes(b"not an image")
    >>> loaded = load_inputs([folder], shape=(30,))
    >>> [s.name.split("/")[-1] for s in loaded.samples], [e.path.name for e in loaded.errors]
    (['rows.npy[0]', 'rows.npy[1]'], ['broken.png'])
    >>> tmp.cleanup()
    """
    loaded = LoadedInputs()
    for item in iter_inputs(
        paths,
        size=size,
        channels=channels,
        mean=mean,
        std=std,
        shape=shape,
        key=key,
        recursive=recursive,
    ):
        (loaded.errors if isinstance(item, InputError) else loaded.samples).append(item)
    return loaded


def iter_inputs(
    paths: Iterable[str | Path],
    *,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    shape: Sequence[int] | None = None,
    key: str | None = None,
    recursive: bool = False,
) -> Iterator[Sample | InputError]:
    """Yield each input as a :class:`Sample`, or an :class:`InputError` naming a file that failed.

    Inputs hold raw values: images are scaled to [0, 1], then every input is normalised as
    ``(x - mean) / std`` along its first dimension (channels, or features). Each file is read once.

    Parameters
    ----------
    paths : iterable of str or Path
        Files and folders (see :func:`find_inputs`). ``.npy`` and ``.safetensors`` files are
        tensors; any other file is decoded as an image (PNG, JPEG, BMP, GIF, TIFF, WebP, PPM).
    size : (int, int), optional
        Height and width images are resized to (bilinear); default ``shape[1:]`` or unchanged.
    channels : {1, 3}, optional
        Convert images to grayscale or RGB; default ``shape[0]``, else 3 if `mean` or `std` has 3
        values, else each image's own (grayscale stays grayscale, anything else becomes RGB).
    mean, std : float or sequence of float, optional
        One value, or one per channel or feature. Default: no shift, no scaling.
    shape : sequence of int, optional
        The shape of one input (the model's input shape). A tensor file holding exactly this
        shape is one sample and one holding ``[N, *shape]`` is N samples; any other is an error.
        Without `shape`, a 1-D tensor is one sample and the first dimension of any other is the
        batch. For images, `shape` only supplies defaults for `channels` and `size`.
    key : str, optional
        The tensor to read from each ``.safetensors`` file; needed when a file holds several.
    recursive : bool
        Expand folders recursively.

    Yields
    ------
    Sample or InputError
        In the order of `paths`. Missing paths, unreadable files, images over PIL's
        decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``; refused before decoding) and
        tensors of the wrong shape are errors; the remaining inputs still load.

    Raises
    ------
    ValueError
        If an argument is invalid; raised by this call, before any file is read.
    """
    shape = _shape(shape)
    size = _size(size, "size") if size is not None else None
    mean_values = _stats(mean, "mean")
    std_values = _stats(std, "std")
    if std_values is not None and any(v <= 0 for v in std_values):
        raise ValueError(f"std: expected positive values; got {list(std_values)}")
    lengths = {len(v) for v in (mean_values, std_values) if v is not None and len(v) > 1}
    if len(lengths) > 1:
        raise ValueError(
            f"mean, std: got {len(mean_values)} and {len(std_values)} values; expected the same "
            "number (one per channel or feature), or a single value"
        )
    if shape is not None and len(shape) == 3 and shape[0] in (1, 3):
        channels = shape[0] if channels is None else channels
        size = _size(shape[1:], "shape[1:]") if size is None else size
    if channels is None and lengths == {3}:
        channels = 3
    if channels not in (None, 1, 3):
        raise ValueError(f"channels: expected 1 (grayscale) or 3 (RGB); got {channels!r}")
    if channels is not None and lengths and lengths != {channels}:
        raise ValueError(
            f"mean, std: got {lengths.pop()} values for images with {channels} channels; "
            f"expected {channels} or 1"
        )
    if key is not None and not isinstance(key, str):
        raise ValueError(f"key: expected a tensor name (str); got {key!r}")

    # Images become [1 or 3, H, W]; a model whose input has another form cannot take them.
    image_problem = (
        None
        if shape is None or (len(shape) == 3 and shape[0] in (1, 3))
        else f"is an image, but one input has shape {list(shape)}; images give [1 or 3, H, W]"
    )
    files, errors = find_inputs(paths, recursive=recursive)

    def read() -> Iterator[Sample | InputError]:
        yield from errors
        for path in files:
            try:
                if path.suffix.lower() in TENSOR_SUFFIXES:
                    rows, batched = split_rows(read_tensor(path, key), shape)
                    names = [f"{path}[{i}]" for i in range(len(rows))] if batched else [str(path)]
                    samples = [
                        Sample(name, path, _normalise(row, mean_values, std_values))
                        for name, row in zip(names, rows, strict=True)
                    ]
                elif image_problem is not None:
                    raise InputProblem(image_problem)
                else:
                    image = read_image(path, size, channels)
                    x = torch.from_numpy(image).permute(2, 0, 1).float().div_(255)
                    samples = [
                        Sample(str(path), path, _normalise(x, mean_values, std_values), image)
                    ]
            except Exception as e:  # decoders raise many types; any of them means a bad input
                yield InputError(path, _describe(e))
                continue
            yield from samples

    return read()


def _describe(e: Exception) -> str:
    return str(e) if isinstance(e, InputProblem) else f"{type(e).__name__}: {e}"


def _shape(shape: Sequence[int] | None) -> tuple[int, ...] | None:
    if shape is None:
        return None
    values = tuple(shape)
    if not values or not all(isinstance(d, (int, np.integer)) and d > 0 for d in values):
        raise ValueError(f"shape: expected a non-empty sequence of positive ints; got {shape!r}")
    return tuple(int(d) for d in values)


def _size(size: Sequence[int], argument: str) -> tuple[int, int]:
    values = tuple(size)
    if len(values) != 2 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in values):
        raise ValueError(f"{argument}: expected (height, width) as two positive ints; got {size!r}")
    return int(values[0]), int(values[1])


def _stats(value: float | Sequence[float] | None, argument: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    values = np.atleast_1d(np.asarray(value, dtype=object))
    try:
        numbers = tuple(float(v) for v in values.reshape(-1)) if values.ndim == 1 else None
    except (TypeError, ValueError):
        numbers = None
    if not numbers or not all(math.isfinite(v) for v in numbers):
        raise ValueError(
            f"{argument}: expected a number or a sequence of finite numbers; got {value!r}"
        )
    return numbers


def _normalise(
    x: torch.Tensor, mean: tuple[float, ...] | None, std: tuple[float, ...] | None
) -> torch.Tensor:
    for values, apply in ((mean, torch.Tensor.sub), (std, torch.Tensor.div)):
        if values is None:
            continue
        if len(values) not in (1, x.shape[0]):
            raise InputProblem(
                f"has {x.shape[0]} channels or features along its first dimension, but "
                f"mean/std have {len(values)} values; expected 1 or {x.shape[0]}"
            )
        stats = torch.tensor(values, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        x = apply(x, stats)
    return x
