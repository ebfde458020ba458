"""Save one overlay picture per sample and class, fast: batched array work, threaded encoding.

Examples
--------
>>> import tempfile, torch
>>> from types import SimpleNamespace
>>> attribution = SimpleNamespace(              # any object with values and classes will do
...     values=torch.randn(2, 1, 3, 16, 16), classes=torch.tensor([[3], [5]])
... )
>>> out = tempfile.mkdtemp()
>>> [p.name for p in save_overlays(attribution, torch.rand(2, 3, 16, 16), out)]
['0_3.png', '1_5.png']
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from PIL import Image

from saliency._atomic import atomic_write
from saliency.viz.colormaps import lookup_table
from saliency.viz.images import image_maps, to_numpy, to_rgb_batch
from saliency.viz.labels import file_stem
from saliency.viz.normalization import check_options
from saliency.viz.paint import backgrounds, color_indices, paint
from saliency.viz.png import write_png

__all__ = ["save_overlays"]

_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
# Maps per task: small enough to stay in cache and keep threads busy to the end.
_CHUNK = 8


def save_overlays(
    attribution: object,
    images: object,
    out_dir: str | os.PathLike,
    *,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    fmt: str = "png",
    overwrite: bool = False,
    start: int = 0,
    progress: bool = False,
    workers: int | None = None,
    compress_level: int = 1,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    value_range: tuple[float, float] | None = None,
    **overlay_args: object,
) -> list[Path]:
    """Write ``{index}_{class-name}.{fmt}`` into ``out_dir`` for every sample and class.

    Parameters
    ----------
    attribution : Attribution
        Anything with ``values`` ``[B, K, C, H, W]`` (or ``[B, K, H, W]``) and ``classes``
        ``[B, K]``.
    images : tensor, array or list
        The B inputs, as :func:`saliency.viz.images.to_rgb_batch` reads them (``mean``, ``std``
        and ``value_range`` are passed to it).
    out_dir : path
        Created if missing.
    class_names : sequence or mapping, optional
        Name of each class id, used in file names after replacing characters that are unsafe in
        file names with ``_``; class ids are used without it.
    fmt : {"png", "jpg", "jpeg", "webp"}
    overwrite : bool
        If False (default), raise :class:`FileExistsError` before writing anything when any of
        the files already exists.
    start : int
        Index of the first sample in file names, for saving a data set batch by batch.
    progress : bool
        Show a progress bar on stderr.
    workers : int, optional
        Encoding threads (default: the number of CPUs, at most 8).
    compress_level : int
        zlib level for PNG, 0-9: 1 (default) is fast, with files a few percent larger than at 6.
        PNGs are written by :func:`saliency.viz.png.write_png` (one fixed filter, so about twice
        as fast as Pillow's encoder, and threads encode in parallel); other formats by Pillow.
    **overlay_args
        ``alpha``, ``grayscale_background``, ``cmap``, ``sign``, ``reduce``, ``clip`` and
        ``percentile``, as for :func:`saliency.viz.overlay`.

    Returns
    -------
    list of pathlib.Path
        The files written, sample by sample, class by class.

    Notes
    -----
    Every file is written under a temporary name in ``out_dir`` and renamed into place, so a
    failure leaves no partial file; files finished before the failure stay.
    """
    if fmt.lower() not in _FORMATS:
        raise ValueError(f"fmt={fmt!r}; expected one of {sorted(_FORMATS)}")
    values = to_numpy(attribution.values, "attribution.values")
    classes = to_numpy(attribution.classes, "attribution.classes")
    values = image_maps(values)
    n_samples, n_classes = values.shape[:2]
    if classes.shape != (n_samples, n_classes):
        raise ValueError(
            f"attribution.classes has shape {tuple(classes.shape)}; expected "
            f"({n_samples}, {n_classes}) to match attribution.values"
        )
    pixels = to_rgb_batch(images, mean=mean, std=std, value_range=value_range)
    if len(pixels) != n_samples:
        raise ValueError(
            f"images holds {len(pixels)} images; expected one per sample ({n_samples})"
        )

    out = Path(out_dir)
    suffix = "jpg" if fmt.lower() == "jpeg" else fmt.lower()
    paths = [
        out / f"{file_stem(start + b, classes[b, k], class_names)}.{suffix}"
        for b in range(n_samples)
        for k in range(n_classes)
    ]
    repeated = [name for name, count in Counter(p.name for p in paths).items() if count > 1]
    if repeated:
        raise ValueError(
            f"several maps would be saved as {repeated[0]}; make class_names distinct after "
            "sanitising, or list each class once per sample in attribution.classes"
        )
    if not overwrite:
        for p in paths:
            if p.exists():
                raise FileExistsError(f"{p} exists; pass overwrite=True to replace it")

    options = {"format": _FORMATS[fmt.lower()]}
    if options["format"] == "PNG":
        if not isinstance(compress_level, int) or not 0 <= compress_level <= 9:
            raise ValueError(f"compress_level={compress_level!r}; expected an integer in [0, 9]")
        options["compress_level"] = compress_level
    if workers is None:
        workers = min(os.cpu_count() or 1, 8)
    elif not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r}; expected a positive integer or None")
    alpha = overlay_args.pop("alpha", 0.5)
    cmap = overlay_args.pop("cmap", None)
    grayscale = overlay_args.pop("grayscale_background", True)
    unknown = sorted(set(overlay_args) - {"sign", "reduce", "clip", "percentile"})
    if unknown:
        raise TypeError(f"save_overlays got unexpected keyword arguments {unknown}")
    check_options(**overlay_args)
    if overlay_args.get("reduce", "sum") is None:
        raise ValueError("reduce=None keeps channels, but an overlay needs one value per pixel")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha={alpha!r}; expected a number in [0, 1]")
    if cmap is not None:
        lookup_table(cmap)  # an unknown colour map fails here, before any file is written

    background = backgrounds(pixels, grayscale)
    maps = values.reshape(n_samples * n_classes, *values.shape[2:])

    def save_chunk(first: int) -> int:
        """Colour maps first, first + 1, ... and write them; the number written."""
        rows = np.arange(first, min(first + _CHUNK, len(maps)))
        indices = color_indices(
            maps[rows[0] : rows[-1] + 1], size=pixels.shape[1:3], **overlay_args
        )
        behind = background[rows // n_classes]
        signed = overlay_args.get("sign") == "all"
        coloured = paint(indices, behind, cmap=cmap, signed=signed, alpha=alpha)
        for i, picture in zip(rows, coloured, strict=True):
            _write_atomic(paths[i], picture, options)
        return len(rows)

    out.mkdir(parents=True, exist_ok=True)
    starts = range(0, len(maps), _CHUNK)
    with _progress(len(paths), progress) as bar:
        if workers == 1:
            for first in starts:
                bar.update(save_chunk(first))
            return paths
        # Each thread colours, encodes and writes whole chunks: numpy, zlib and file writes release
        # the GIL, and only the chunks being worked on are held in memory.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(save_chunk, first) for first in starts]
            try:
                for future in as_completed(futures):
                    bar.update(future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    return paths


def _write_atomic(path: Path, pixels: np.ndarray, options: dict) -> None:
    with atomic_write(path) as f:
        if options["format"] == "PNG":
            write_png(f, pixels, options["compress_level"])
        else:
            Image.fromarray(pixels).save(f, **options)


def _progress(total: int, enabled: bool) -> object:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, file=sys.stderr, unit="file", desc="saving")
