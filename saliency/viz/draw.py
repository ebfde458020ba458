"""Pillow pictures: a heat map, a heat map over an image, and a labelled grid of pictures.

The array work behind them, for whole batches, is in :mod:`saliency.viz.paint`.

Examples
--------
>>> import torch
>>> values = torch.randn(3, 32, 32)            # one attribution map, channels first
>>> image = torch.rand(3, 32, 32)              # the input it explains, in [0, 1]
>>> heatmap(values).size, overlay(image, values).size
((32, 32), (32, 32))
>>> grid([heatmap(values), overlay(image, values)], labels=["map", "overlay"]).mode
'RGB'
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from saliency.viz.images import to_numpy, to_rgb, to_rgb_batch
from saliency.viz.paint import heat_pixels, overlay_pixels

__all__ = ["grid", "heatmap", "overlay"]


def heatmap(
    values: object,
    *,
    cmap: str | None = None,
    sign: str = "absolute",
    reduce: str | None = "sum",
    clip: str | None = "percentile",
    percentile: float = 99.0,
) -> Image.Image:
    """One attribution map as a coloured picture of the same height and width.

    ``values`` is one map ``(H, W)``, ``(C, H, W)`` or ``(H, W, C)``; ``sign``, ``reduce``,
    ``clip`` and ``percentile`` are those of :func:`~saliency.viz.normalize`. ``cmap`` is a
    matplotlib colour map name; the default is diverging (``"bwr"``, zero is white) for
    ``sign="all"`` and sequential (``"inferno"``) otherwise.
    """
    _check_one_map(values)
    pixels = heat_pixels(
        values, cmap=cmap, sign=sign, reduce=reduce, clip=clip, percentile=percentile
    )
    return Image.fromarray(pixels)


def overlay(
    image: object,
    values: object,
    *,
    alpha: float = 0.5,
    grayscale_background: bool = True,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    value_range: tuple[float, float] | None = None,
    **heatmap_args: object,
) -> Image.Image:
    """A heat map of ``values`` blended over ``image``, at the image's size.

    ``image`` is anything :func:`saliency.viz.images.to_rgb` reads (``mean``, ``std`` and
    ``value_range`` are passed to it); ``values`` is one map as for :func:`heatmap`, resized
    (bilinear) if its height and width differ from the image's. ``alpha`` is the heat map's
    weight; the background is the image in grayscale unless ``grayscale_background=False``.
    ``heatmap_args`` go to :func:`heatmap`.
    """
    _check_one_map(values)
    rgb = to_rgb(image, mean=mean, std=std, value_range=value_range)
    arr = to_numpy(values, "values")
    if arr.ndim == 2:
        arr = arr[None]
    pixels = overlay_pixels(
        rgb[None],
        arr[None],
        alpha=alpha,
        grayscale_background=grayscale_background,
        **heatmap_args,
    )
    return Image.fromarray(pixels[0])


def grid(
    images: object,
    *,
    rows: int | None = None,
    labels: Sequence[str] | None = None,
    pad: int = 2,
    min_size: int = 64,
) -> Image.Image:
    """Tile pictures row by row into one picture, each under its optional text label.

    ``images`` is a sequence of PIL images or of anything :func:`~saliency.viz.images.to_rgb`
    reads, or a batch ``(N, C, H, W)`` / ``(N, H, W, C)``. ``rows`` defaults to a near-square
    layout. Tiles smaller than ``min_size`` pixels are enlarged by a whole factor (nearest
    neighbour, so small inputs such as 8x8 digits stay crisp); tiles of different sizes are
    centred in cells of the largest size.
    """
    tiles = _as_tiles(images)
    n = len(tiles)
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries; expected one per image ({n})")
    if rows is None:
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
    elif not isinstance(rows, int) or rows < 1:
        raise ValueError(f"rows={rows!r}; expected a positive integer")
    else:
        rows = min(rows, n)
        cols = math.ceil(n / rows)
    tiles = [_enlarge(t, min_size) for t in tiles]
    cell_w = max(t.width for t in tiles)
    cell_h = max(t.height for t in tiles)
    font, text_h = None, 0
    if labels is not None:
        font = _font(max(10, min(18, cell_w // 12)))
        text_h = font.getbbox("Ag")[3] + pad
    width = cols * cell_w + (cols + 1) * pad
    height = rows * (cell_h + text_h) + (rows + 1) * pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        x = pad + c * (cell_w + pad)
        y = pad + r * (cell_h + text_h + pad)
        if labels is not None:
            draw.text((x, y), _fit(str(labels[i]), font, cell_w), fill="black", font=font)
        offset = ((cell_w - tile.width) // 2, text_h + (cell_h - tile.height) // 2)
        canvas.paste(tile, (x + offset[0], y + offset[1]))
    return canvas


def _check_one_map(values: object) -> None:
    ndim = to_numpy(values, "values").ndim
    if ndim not in (2, 3):
        raise ValueError(
            f"values has {ndim} dimensions; expected one map (H, W), (C, H, W) or (H, W, C) "
            "(use grid or save_overlays for many)"
        )


def _as_tiles(images: object) -> list[Image.Image]:
    if isinstance(images, Image.Image):
        return [images.convert("RGB")]
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("images is empty; expected at least one picture")
        return [
            im.convert("RGB") if isinstance(im, Image.Image) else Image.fromarray(to_rgb(im))
            for im in images
        ]
    return [Image.fromarray(p) for p in to_rgb_batch(images)]


def _enlarge(tile: Image.Image, min_size: int) -> Image.Image:
    factor = math.ceil(min_size / max(1, min(tile.size)))
    if factor <= 1:
        return tile
    return tile.resize((tile.width * factor, tile.height * factor), Image.Resampling.NEAREST)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError):  # Pillow without FreeType: fixed-size bitmap font.
        return ImageFont.load_default()


def _fit(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"
