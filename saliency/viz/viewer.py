"""An interactive view of an :class:`~saliency.Attribution`: in a notebook cell or as one HTML file.

What Captum Insights was, without a server: one self-contained page (nothing fetched, every
string escaped) with a sample selector, a class selector that lists the predicted and the true
class first, the selected map large with the input under it, a strip of every class's map of the
sample, the value under the pointer and a colour legend. Maps travel as 16-bit codes and are
coloured in the browser, so the colours and the values shown on hover come from the same numbers.

Examples
--------
>>> import torch, saliency
>>> from saliency import viz
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
>>> x = torch.rand(3, 1, 8, 8)
>>> v = viz.view(saliency.gradients(model, x), x, labels=[0, 1, 2])
>>> v
View(gradients: 3 samples, 4 classes, image maps 8x8)
>>> "<script" in v._repr_html_() and "Content-Security-Policy" in v.html()
True
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from saliency._atomic import atomic_write
from saliency.viz import html as shell
from saliency.viz.colormaps import lookup_table
from saliency.viz.draw import grid
from saliency.viz.images import channel_axis, to_numpy
from saliency.viz.labels import class_name, output_word, true_labels
from saliency.viz.pictures import input_pictures
from saliency.viz.thresholds import full_colour
from saliency.viz.token_pictures import Skip, _skipper

__all__ = ["View", "notebook_view", "view"]

_SIGNED_MAP, _UNSIGNED_MAP = "bwr", "Reds"  # zero is white in both


class View:
    """A self-contained HTML view: shown by Jupyter (``_repr_html_``), saved by :meth:`save`.

    Built by :func:`view` (and by other views of this package); ``body`` is the view's markup,
    ``style`` and ``script`` its CSS and JavaScript, ``summary`` the text of its ``repr``.
    """

    def __init__(self, title: str, body: str, *, style: str, script: str, summary: str) -> None:
        self.title, self.body, self.style, self.script = title, body, style, script
        self.summary = summary

    def html(self) -> str:
        """The whole page, as :meth:`save` writes it."""
        return shell.page(self.title, self.body, style=self.style, script=self.script)

    def _repr_html_(self) -> str:
        return shell.fragment(self.body, style=self.style, script=self.script)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the page to ``path`` (``.html``), atomically; return the path."""
        path = Path(path)
        if path.suffix.lower() not in (".html", ".htm"):
            raise ValueError(f"path: expected an .html file, got {os.fspath(path)!r}")
        with atomic_write(path, "w") as f:
            f.write(self.html())
        return path

    def __repr__(self) -> str:
        return f"View({self.summary})"


def view(
    attribution: object,
    x: object = None,
    *,
    labels: object = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    tokens: Sequence[str] | Sequence[Sequence[str]] | None = None,
    skip: Skip = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    samples: Sequence[int] | None = None,
    max_classes: int = 20,
    max_side: int = 128,
) -> View:
    """An interactive view of ``attribution``, for a notebook cell or a file (``.save(path)``).

    Parameters
    ----------
    attribution
        An :class:`~saliency.Attribution` with image maps (``values`` ``[B, K, C, H, W]``,
        ``[B, K, H, W]`` or channels last) or one score per token or feature ``[B, K, T]``
        (reduce embedding attributions with :func:`saliency.token_scores` first).
    x
        The inputs it explains, drawn under the maps (images ``[B, C, H, W]``, ``[B, H, W]``;
        ``mean`` and ``std`` undo a normalisation ``(x - mean) / std``). Optional.
    labels
        The true class of each sample (``[B]``): listed second in the class selector, and
        shown beside the prediction (the class of the highest output).
    class_names
        A name for each class id (a sequence or a mapping).
    tokens
        For ``[B, K, T]`` values: the strings of the T positions (one list for every sample, or
        one list per sample); default ``x0, x1, ...`` (features). ``skip`` hides some, as for
        :func:`saliency.viz.tokens`.
    samples
        Which samples to show (indices); default: the first 16.
    max_classes
        Classes shown per sample at most: the predicted, the true, then the highest outputs.
    max_side
        Maps and inputs larger than this many pixels on a side are averaged over square blocks
        of pixels to fit, to keep the page small; hover values are then block means.

    Returns
    -------
    View
        ``_repr_html_`` for Jupyter, :meth:`View.save` for a file, :meth:`View.html` for the text.
        A :class:`~saliency.generation.GenerationAttribution` gets its hover view
        (:func:`saliency.viz.generation.generation_view`; ``samples`` selects as here, the
        options for class maps do not apply).
    """
    if hasattr(attribution, "generated") and hasattr(attribution, "ids"):
        given = {"x": x, "labels": labels, "class_names": class_names, "tokens": tokens,
                 "skip": skip, "mean": mean, "std": std}  # fmt: skip
        extra = sorted(k for k, v in given.items() if v is not None)
        extra += [k for k, v, d in (("max_classes", max_classes, 20), ("max_side", max_side, 128))
                  if v != d]  # fmt: skip
        if extra:
            raise TypeError(
                f"{', '.join(extra)}: not used for a generation result (its context tokens and "
                "generated tokens are its own); leave them out"
            )
        from saliency.viz.generation import generation_view

        chosen = attribution[_samples(samples, len(attribution.generated))]
        return generation_view(chosen, max_samples=len(chosen.generated))
    shape = _shape(attribution)
    n = shape[0]
    chosen = _samples(samples, n)
    if isinstance(max_classes, bool) or not isinstance(max_classes, int) or max_classes < 1:
        raise ValueError(f"max_classes: expected a positive int, got {max_classes!r}")
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 8:
        raise ValueError(f"max_side: expected an int of at least 8, got {max_side!r}")
    classes = to_numpy(attribution.classes, "attribution.classes")
    outputs = to_numpy(attribution.outputs, "attribution.outputs").astype(np.float64)
    truth = true_labels(labels, n)
    kind = "sequence" if tokens is not None or len(shape) == 3 else "image"
    if kind == "sequence" and len(shape) != 3:
        raise ValueError(
            f"attribution.values has shape {list(shape)}; with tokens= expected one score per "
            "token [B, K, T]: reduce embedding attributions with saliency.token_scores first"
        )
    texts = _texts(tokens, n, shape[2]) if kind == "sequence" else None
    hidden = _skipper(skip)

    # Only the rows shown are read: an attribution of many samples and classes may be large.
    shown, first, signed, pictures = [], [], False, {}
    for b in chosen:
        predicted = int(np.argmax(outputs[b])) if outputs.shape[1] else -1
        order = _class_order(classes[b], outputs[b], predicted, truth[b] if truth else None)
        order = order[:max_classes]
        rows = _rows(attribution.values, b, order)
        signed = signed or bool((rows < 0).any())
        entry: dict = {
            "index": b,
            "label": truth[b] if truth else None,
            "predicted": predicted,
            "classes": [int(classes[b, k]) for k in order],
            "scores": [_score(outputs[b], int(classes[b, k])) for k in order],
        }
        if kind == "image":
            grids = [_shrink(m, max_side) for m in _image_maps(rows)]
            entry["maps"] = [shell.table_data(g) for g in grids]
            entry["clip"] = [full_colour(g) for g in grids]
            if x is not None:
                pictures[b] = _shrink_rgb(_input(x, b, n, shape, mean, std), grids[0].shape)
                entry["input"] = shell.png_uri(pictures[b])
            if not first:
                first = grids
        else:
            keep = [i for i, t in enumerate(texts[b]) if not hidden(t)]
            entry["tokens"] = [texts[b][i] for i in keep]
            entry["maps"] = [shell.table_data(r[keep]) for r in rows]
            entry["clip"] = [full_colour(r[keep]) for r in rows]
        shown.append(entry)

    cmap = _SIGNED_MAP if signed else _UNSIGNED_MAP
    height, width, block = 0, 0, 1
    if kind == "image":
        height, width = first[0].shape
        size = _image_size(shape)
        block = max(1, -(-max(size) // max_side))
    used = {c for e in shown for c in e["classes"]} | {e["predicted"] for e in shown}
    used |= {e["label"] for e in shown if e["label"] is not None}
    data = {
        "kind": kind,
        "method": getattr(attribution, "method", ""),
        "output": output_word(attribution),
        "signed": signed,
        "lut": lookup_table(cmap, signed).reshape(-1).tolist(),
        "bar": shell.colour_bar(cmap, signed),
        "height": height,
        "width": width,
        "block": block,
        "names": {str(c): class_name(c, class_names) for c in sorted(used) if c >= 0},
        "samples": shown,
        "total": {"samples": n, "classes": int(classes.shape[1])},
    }
    root = shell.view_id(shell.script_data(data))
    lut = lookup_table(cmap, signed)
    static = _static(shown[0], first, pictures.get(chosen[0]), lut, signed, class_names)
    body = (
        f'<div class="sv-view" id="{root}">'
        f'<div class="sv-static">{static}</div>'
        f'<script type="application/json" class="sv-data">{shell.script_data(data)}</script>'
        "</div>"
    )
    script = shell.asset("viewer.js") + f"\nsaliencyView({shell.root_of(root)});"
    what = "image maps {}x{}".format(*_image_size(shape)) if kind == "image" else "sequences"
    return View(
        f"saliency: {data['method']}",
        body,
        style=shell.asset("viewer.css"),
        script=script,
        summary=f"{data['method']}: {len(shown)} samples, {shape[1]} classes, {what}",
    )


def notebook_view(attribution: object) -> str | None:
    """What an :class:`~saliency.Attribution` alone in a cell shows: :func:`view` of its first 8
    samples and 10 classes (no inputs: it does not hold them), or None when its values are not
    maps it can draw (Jupyter then shows the picture or the text)."""
    try:
        shown = view(attribution, samples=range(min(len(attribution.values), 8)), max_classes=10)
    except (ValueError, TypeError):
        return None
    return shown._repr_html_()


# -- reading the arguments ---------------------------------------------------------------------


def _shape(attribution: object) -> tuple[int, ...]:
    for name in ("values", "classes", "outputs"):
        if not hasattr(attribution, name):
            raise TypeError(
                f"attribution: expected a saliency.Attribution (values, classes, outputs), got "
                f"{type(attribution).__name__} without {name!r}"
            )
    shape = tuple(getattr(attribution.values, "shape", ()))
    if len(shape) not in (3, 4, 5):
        raise ValueError(
            f"attribution.values has shape {list(shape)}; expected image maps "
            "[B, K, C, H, W] / [B, K, H, W] or one score per token or feature [B, K, T]"
        )
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"attribution: nothing to show (values {list(shape)})")
    if len(shape) == 5:
        channel_axis(shape, "attribution.values")
    return shape


def _rows(values: object, b: int, order: list[int]) -> np.ndarray:
    """float32 maps of sample ``b``'s rows ``order``, read alone (the values may be large)."""
    picked = values[b][torch.tensor(order)] if isinstance(values, torch.Tensor) else None
    rows = to_numpy(picked if picked is not None else np.asarray(values[b])[order], "values")
    rows = rows.astype(np.float32)
    if not np.isfinite(rows).all():
        raise ValueError(f"attribution.values holds NaN or inf (sample {b}); expected finite")
    return rows


def _image_size(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 5 and channel_axis(shape, "attribution.values") == -1:
        return shape[-3], shape[-2]
    return shape[-2], shape[-1]


def _samples(samples: object, n: int) -> list[int]:
    if samples is None:
        return list(range(min(n, 16)))
    if isinstance(samples, int | np.integer) and not isinstance(samples, bool):
        samples = [samples]
    chosen = [int(s) for s in to_numpy(samples, "samples").reshape(-1)]
    bad = [s for s in chosen if not -n <= s < n]
    if not chosen or bad:
        raise ValueError(f"samples: expected indices below {n}, got {samples!r}")
    return [s % n for s in chosen]


def _image_maps(rows: np.ndarray) -> np.ndarray:
    """``[K, H, W]`` from one sample's rows: channels summed (signed), as heat maps reduce them."""
    if rows.ndim == 3:
        return rows
    return rows.sum(axis=channel_axis(rows.shape, "attribution.values"))


def _input(x, b: int, n: int, shape: tuple[int, ...], mean, std) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` picture of input ``b``."""
    size = _image_size(shape)
    full = tuple(getattr(x, "shape", ()))
    t = torch.as_tensor(to_numpy(x[b], "x"))
    if t.ndim == 2:
        t = t[None]
    if t.ndim == 3 and t.shape[0] not in (1, 3, 4) and t.shape[-1] in (1, 3, 4):
        t = t.permute(2, 0, 1)
    if len(full) not in (3, 4) or full[0] != n or tuple(t.shape[-2:]) != tuple(size):
        raise ValueError(
            f"x: expected the {n} images the maps explain, [B, C, H, W] with H, W = "
            f"{tuple(size)}, got shape {list(full)}"
        )
    picture = input_pictures(t[None, :3].float(), mean=mean, std=std)[0]
    pixels = (picture.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels


def _texts(tokens, n: int, length: int) -> list[list[str]]:
    if tokens is None:
        return [[f"x{i}" for i in range(length)] for _ in range(n)]
    batch = list(tokens)
    if batch and all(isinstance(t, str) for t in batch):
        batch = [batch] * n
    if len(batch) != n or not all(
        isinstance(s, Sequence) and not isinstance(s, str) and all(isinstance(t, str) for t in s)
        for s in batch
    ):
        raise TypeError(
            f"tokens: expected a list of strings, or one list of strings per sample ({n})"
        )
    for b, s in enumerate(batch):
        if len(s) > length:
            raise ValueError(
                f"tokens: sample {b} has {len(s)} strings for {length} scores; expected at most "
                "one per score"
            )
    return [list(s) for s in batch]


# -- what is shown -------------------------------------------------------------------------------


def _class_order(ids: np.ndarray, outputs: np.ndarray, predicted: int, label) -> list[int]:
    """Rows of one sample: the predicted class, the true class, then by output, highest first."""
    first = [predicted] + ([label] if label is not None else [])
    rows = list(range(len(ids)))
    head = [k for c in first for k in rows if int(ids[k]) == c]
    head = list(dict.fromkeys(head))
    rest = [k for k in rows if k not in head]
    rest.sort(key=lambda k: (-_score(outputs, int(ids[k]), -math.inf), k))
    return head + rest


def _score(outputs: np.ndarray, c: int, missing: float | None = None) -> float | None:
    return float(outputs[c]) if 0 <= c < outputs.shape[0] else missing


def _shrink(m: np.ndarray, max_side: int) -> np.ndarray:
    """A map averaged down (box filter) so that neither side exceeds ``max_side``."""
    h, w = m.shape
    factor = -(-max(h, w) // max_side)  # a whole factor: blocks of factor x factor pixels
    if factor <= 1:
        return m
    size = (-(-w // factor), -(-h // factor))
    picture = Image.fromarray(np.ascontiguousarray(m, dtype=np.float32), mode="F")
    return np.asarray(picture.resize(size, Image.Resampling.BOX))


def _shrink_rgb(pixels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if pixels.shape[:2] == tuple(shape):
        return pixels
    picture = Image.fromarray(pixels).resize(shape[::-1], Image.Resampling.BOX)
    return np.asarray(picture)


def _static(entry: dict, grids: list, pixels, lut: np.ndarray, signed: bool, names) -> str:
    """What shows where scripts do not run (an untrusted notebook): the first sample's maps."""
    note = (
        '<p class="sv-note">The interactive view needs JavaScript (in Jupyter: trust the '
        "notebook); this is its first sample.</p>"
    )
    if not grids:
        return note
    tiles, labels = [], []
    if pixels is not None:
        tiles.append(Image.fromarray(pixels))
        labels.append("input")
    for c, clip, g in zip(entry["classes"][:8], entry["clip"], grids, strict=False):
        tiles.append(Image.fromarray(_colour(g, clip, lut, signed)))
        labels.append(class_name(c, names))
    picture = grid(tiles, rows=1, labels=labels, min_size=96)
    return f'<img alt="" src="{shell.png_uri(picture)}">' + note


def _colour(m: np.ndarray, clip: float, lut: np.ndarray, signed: bool) -> np.ndarray:
    """uint8 RGB of a map, as the page's script colours it."""
    t = np.clip(m / clip, -1.0 if signed else 0.0, 1.0)
    index = np.rint(t * 127.5 + 127.5) if signed else np.rint(t * 255.0)
    return lut[index.astype(np.uint8)]
