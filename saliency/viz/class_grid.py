"""One picture of every class's map for every sample: the input beside them, labels, a legend.

What a person needs to read an all-class explanation at a glance: each sample's input with its
true and predicted class, one map per class and method at the input's own resolution (small
inputs are enlarged pixel by pixel, never blurred), the input's outline drawn on every map of a
grayscale input, each class's score, the predicted class framed, and a colour legend that says
what red and blue mean.

Examples
--------
>>> import torch, saliency
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
>>> x = torch.rand(2, 1, 8, 8)
>>> picture = class_grid({"gradients": saliency.gradients(model, x)}, x, labels=[0, 2])
>>> picture.mode, picture.width > 4 * 64
('RGB', True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from saliency.viz.colormaps import DIVERGING, SEQUENTIAL, lookup_table
from saliency.viz.draw import _font
from saliency.viz.images import image_maps, to_numpy, to_rgb_batch
from saliency.viz.labels import class_label
from saliency.viz.normalization import check_options, scaled_maps
from saliency.viz.paint import backgrounds, paint

__all__ = ["class_grid"]

_PAD, _GAP = 6, 14  # between tiles; between samples
_INK, _MUTED, _FRAME = (20, 20, 20), (90, 90, 90), (0, 0, 0)
_OUTLINE = {True: (0, 0, 0), False: (0, 200, 255)}  # on diverging maps; on dark sequential ones


def class_grid(
    attributions: object,
    images: object,
    *,
    labels: object = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    samples: Sequence[int] | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    value_range: tuple[float, float] | None = None,
    sign: str = "all",
    percentile: float = 99.5,
    score: str = "logit",
    title: str | None = None,
    notes: Mapping[str, str] | None = None,
    tile: int = 64,
) -> Image.Image:
    """Draw every class's map of every sample, one block of rows per sample, one row per method.

    Parameters
    ----------
    attributions : Attribution or mapping of name to Attribution
        Image attributions ``[B, K, C, H, W]`` (or ``[B, K, H, W]``) of the same samples and
        classes, one row per method, in the mapping's order.
    images : tensor or array
        The ``B`` inputs, read as :func:`saliency.viz.images.to_rgb_batch` reads them (``mean``,
        ``std`` and ``value_range`` are passed to it).
    labels : sequence of int, optional
        True class of each sample, shown under its input beside the predicted class (the
        largest of ``outputs``).
    samples : sequence of int, optional
        Which samples to draw (default: all).
    sign, percentile
        ``sign="all"`` draws signed maps (red raises the class's score, blue lowers it); other
        signs as in :func:`saliency.viz.normalize`. The maps of one sample and method share one
        scale, the ``percentile`` of their magnitudes, so that a class with weak evidence looks
        weak.
    score : str
        What ``outputs`` hold, in the captions ("logit", "probability", ...).
    title : str, optional
        A line above everything.
    notes : mapping of name to str, optional
        A short second line under a method's name (e.g. its settings).
    tile : int
        Smallest side of a map in pixels; smaller inputs are enlarged by a whole factor,
        nearest neighbour.
    """
    check_options(sign=sign, percentile=percentile)
    methods = _as_methods(attributions)
    first = next(iter(methods.values()))
    values = {name: image_maps(to_numpy(a.values, f"{name}.values")) for name, a in methods.items()}
    classes = to_numpy(first.classes, "classes")
    n, k = classes.shape
    for name, a in methods.items():
        if values[name].shape[:2] != (n, k) or not np.array_equal(
            to_numpy(a.classes, "classes"), classes
        ):
            raise ValueError(
                f"attributions[{name!r}] explains other samples or classes than the first "
                f"({tuple(values[name].shape[:2])} rows); expected the same {n} x {k}"
            )
    pixels = to_rgb_batch(images, mean=mean, std=std, value_range=value_range)
    if len(pixels) != n:
        raise ValueError(f"images holds {len(pixels)} images; expected one per sample ({n})")
    outputs = getattr(first, "outputs", None)
    outputs = None if outputs is None else to_numpy(outputs, "outputs")
    truth = None if labels is None else [int(v) for v in to_numpy(labels, "labels").reshape(-1)]
    if truth is not None and len(truth) != n:
        raise ValueError(f"labels holds {len(truth)} labels; expected one per sample ({n})")
    shown = list(range(n)) if samples is None else [int(s) for s in samples]
    if not shown or any(not 0 <= s < n for s in shown):
        raise ValueError(f"samples={samples!r}; expected indices in [0, {n})")

    h, w = pixels.shape[1:3]
    factor = max(1, -(-tile // min(h, w)))
    size = (w * factor, h * factor)
    grayscale = bool(
        (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    )
    signed = sign == "all"
    table = lookup_table(DIVERGING if signed else SEQUENTIAL, signed)

    font, small = _font(13), _font(11)
    line = font.getbbox("Ag")[3] + 3
    label_w = (
        max(
            [int(font.getlength(name)) for name in methods]
            + [int(small.getlength(v)) for v in (notes or {}).values()]
            + [int(small.getlength(score)) + 4]
        )
        + 2 * _PAD
    )
    cols = k + 1
    width = label_w + cols * (size[0] + _PAD) + _PAD
    legend_h = 2 * line + 16
    head_h = (line + 6 if title else 0) + legend_h + line + _PAD
    block_h = line + max(len(methods) * (size[1] + _PAD), size[1] + 3 * line)
    height = head_h + len(shown) * (block_h + _GAP)
    canvas = Image.new("RGB", (max(width, 520), height), "white")
    draw = ImageDraw.Draw(canvas)

    y = _PAD
    if title:
        draw.text((_PAD, y), title, fill=_INK, font=font)
        y += line + 6
    _legend(draw, (label_w, y), table, signed, score, factor, grayscale, percentile, small)
    y += legend_h
    x0 = label_w
    draw.text((x0, y), "input", fill=_INK, font=font)
    same = bool((classes[shown] == classes[shown[0]]).all())
    draw.text((_PAD, y), "class" if same else "rows", fill=_INK, font=font)
    for c in range(k):
        x = x0 + (c + 1) * (size[0] + _PAD)
        name = class_label(classes[shown[0], c], class_names) if same else f"#{c}"
        draw.text((x, y), _fit(name, font, size[0]), fill=_INK, font=font)
    y += line + _PAD

    maps = {
        name: _indices(values[name][shown], sign, percentile) for name in methods
    }  # [S, K, H, W] uint8 per method
    for i, b in enumerate(shown):
        predicted = None if outputs is None else int(np.argmax(outputs[b]))
        # The scores line: one number per class.
        if outputs is not None:
            draw.text((_PAD, y), score, fill=_MUTED, font=small)
            for c in range(k):
                x = x0 + (c + 1) * (size[0] + _PAD)
                cls = int(classes[b, c])
                text = f"{outputs[b, cls]:.3g}" if 0 <= cls < outputs.shape[1] else ""
                draw.text((x, y), text, fill=_INK if cls == predicted else _MUTED, font=small)
        y += line
        top = y
        picture = Image.fromarray(pixels[b]).resize(size, Image.Resampling.NEAREST)
        canvas.paste(picture, (x0, top))
        mask = backgrounds(pixels[b : b + 1])[0] >= 128 if grayscale else None
        for r, name in enumerate(methods):
            ry = top + r * (size[1] + _PAD)
            draw.text((_PAD, ry + 2), name, fill=_INK, font=font)
            if notes and name in notes:
                draw.text((_PAD, ry + 2 + line), notes[name], fill=_MUTED, font=small)
            background = None if grayscale else backgrounds(pixels[b : b + 1])[0]
            if background is None or background.shape != maps[name].shape[-2:]:
                colours = paint(maps[name][i], signed=signed)  # outline, or a map of its own size
            else:
                colours = paint(maps[name][i], background[None], signed=signed, alpha=0.6)
            for c in range(k):
                x = x0 + (c + 1) * (size[0] + _PAD)
                heat = Image.fromarray(colours[c]).resize(size, Image.Resampling.NEAREST)
                if mask is not None:
                    _outline(heat, mask, factor, _OUTLINE[signed])
                canvas.paste(heat, (x, ry))
                if classes[b, c] == predicted:
                    draw.rectangle(
                        (x - 2, ry - 2, x + size[0] + 1, ry + size[1] + 1), outline=_FRAME, width=2
                    )
        caption = [f"sample {b}"]
        if truth is not None:
            caption.append(f"true {class_label(truth[b], class_names)}")
        if predicted is not None:
            caption.append(f"predicted {class_label(predicted, class_names)}")
        for j, text in enumerate(caption):
            wrong = j == 2 and truth is not None and truth[b] != predicted
            at = (x0, top + size[1] + 2 + j * (line - 2))
            colour = (200, 0, 0) if wrong else _INK
            draw.text(at, _fit(text, small, size[0] + _PAD), fill=colour, font=small)
        y = top + max(len(methods) * (size[1] + _PAD), size[1] + 3 * line) + _GAP
    return canvas


def _as_methods(attributions: object) -> dict[str, object]:
    if isinstance(attributions, Mapping):
        if not attributions:
            raise ValueError("attributions is empty; expected at least one Attribution")
        return {str(name): a for name, a in attributions.items()}
    if hasattr(attributions, "values") and hasattr(attributions, "classes"):
        return {str(getattr(attributions, "method", "") or "map"): attributions}
    raise TypeError(
        "attributions: expected an Attribution or a mapping of names to Attributions, got "
        f"{type(attributions).__name__}"
    )


def _indices(values: np.ndarray, sign: str, percentile: float) -> np.ndarray:
    """uint8 colour indices ``[S, K, H, W]``, one scale per sample (all its classes)."""
    maps, _ = scaled_maps(values, sign=sign, clip=None)  # channels reduced, sign applied
    magnitude = np.abs(maps).reshape(maps.shape[0], -1)
    scale = np.percentile(magnitude, percentile, axis=1).astype(np.float32)
    scale = np.where(scale > 0, scale, np.maximum(magnitude.max(axis=1), 1e-30))
    scaled = maps / scale[:, None, None, None]
    if sign == "all":
        return (np.clip(scaled, -1.0, 1.0) * 127.5 + 128.0).clip(0, 255).astype(np.uint8)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _outline(tile: Image.Image, mask: np.ndarray, factor: int, colour: tuple) -> None:
    """Draw the border of ``mask``'s pixels (the input's bright strokes) on an enlarged tile."""
    draw = ImageDraw.Draw(tile)
    padded = np.pad(mask, 1)
    last = factor - 1
    for i, j in zip(*np.nonzero(mask), strict=True):
        x, y = j * factor, i * factor
        if not padded[i, j + 1]:  # above
            draw.line((x, y, x + last, y), fill=colour)
        if not padded[i + 2, j + 1]:  # below
            draw.line((x, y + last, x + last, y + last), fill=colour)
        if not padded[i + 1, j]:  # left
            draw.line((x, y, x, y + last), fill=colour)
        if not padded[i + 1, j + 2]:  # right
            draw.line((x + last, y, x + last, y + last), fill=colour)


def _legend(draw, at, table, signed, score, factor, grayscale, percentile, font) -> None:
    x, y = at
    bar_w, bar_h = 256, 12
    for i in range(bar_w):
        draw.line((x + i, y, x + i, y + bar_h), fill=tuple(int(v) for v in table[i]))
    draw.rectangle((x, y, x + bar_w - 1, y + bar_h), outline=_MUTED)
    text_y = y + bar_h + 2
    if signed:
        draw.text((x, text_y), f"lowers the {score}", fill=_INK, font=font)
        draw.text((x + bar_w // 2 - 3, text_y), "0", fill=_INK, font=font)
        right = f"raises the {score}"
        draw.text((x + bar_w - font.getlength(right), text_y), right, fill=_INK, font=font)
    else:
        draw.text((x, text_y), "0", fill=_INK, font=font)
        right = "largest |value|"
        draw.text((x + bar_w - font.getlength(right), text_y), right, fill=_INK, font=font)
    notes = [f"one colour scale per row: its {percentile:g}th percentile of |value|"]
    if grayscale:
        notes.append(f"{'black' if signed else 'blue'} outline: the input's bright pixels")
    notes.append("framed: the predicted class")
    if factor > 1:
        notes.append(f"pixels enlarged {factor}x")
    draw.text((x + bar_w + 12, y - 1), "; ".join(notes[:2]), fill=_MUTED, font=font)
    draw.text((x + bar_w + 12, y + 13), "; ".join(notes[2:]), fill=_MUTED, font=font)


def _fit(text: str, font, width: int) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"
