"""Token pictures: text coloured by per-token scores, one line per sample and class.

A line is normalised and coloured exactly as an image map is (:func:`~saliency.viz.paint.
color_indices` with one threshold per line, then :func:`~saliency.viz.paint.paint`), so a token's
colour means what a pixel's colour means in a heat map. The picture shows itself in a notebook as
HTML (inline styles, nothing fetched) and draws itself with Pillow as a PNG.

Examples
--------
>>> picture = tokens([0.9, -0.4, 0.0], ["good", "<b>", "[PAD]"], skip="[PAD]")
>>> picture.lines[0].tokens, picture.lines[0].colors.shape
(('good', '<b>'), (2, 3))
>>> "&lt;b&gt;" in picture._repr_html_() and "<b>" not in picture._repr_html_()
True
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from saliency._atomic import atomic_write
from saliency.viz.colormaps import lookup_table
from saliency.viz.draw import _font
from saliency.viz.images import to_numpy
from saliency.viz.labels import class_label
from saliency.viz.normalization import check_options
from saliency.viz.paint import color_indices, paint
from saliency.viz.png import write_png

__all__ = ["TokenLine", "TokenPicture", "tokens"]

Skip = str | Collection[str] | Callable[[str], bool] | None


@dataclass(frozen=True, eq=False)
class TokenLine:
    """One sample's tokens for one class: the shown tokens, their scores and their colours."""

    sample: int
    class_id: int
    label: str
    tokens: tuple[str, ...]
    positions: tuple[int, ...]  # where the shown tokens stand in the sample (skipped ones left out)
    scores: np.ndarray  # float32 [n]
    colors: np.ndarray  # uint8 [n, 3]


class TokenPicture:
    """Tokens coloured by score: HTML in a notebook, :meth:`image` or :meth:`save` for files."""

    def __init__(self, lines: list[TokenLine]) -> None:
        self.lines = lines

    def html(self) -> str:
        """The picture as an HTML fragment: inline styles only, tokens escaped."""
        rows = []
        for line in self.lines:
            spans = "".join(
                _span(token, score, color, line.label)
                for token, score, color in zip(line.tokens, line.scores, line.colors, strict=True)
            )
            rows.append(
                f'<div style="margin:3px 0"><span style="{_LABEL_STYLE}">'
                f"{_escape(line.label)}</span> {spans}</div>"
            )
        return f'<div class="saliency-tokens" style="{_BOX_STYLE}">{"".join(rows)}</div>'

    def _repr_html_(self) -> str:
        return self.html()

    def image(self, *, width: int = 800, font_size: int = 14) -> Image.Image:
        """The picture as a PIL image ``width`` pixels wide; token rows wrap at the edge."""
        if isinstance(width, bool) or not isinstance(width, int) or width < 32:
            raise ValueError(f"width: expected an int of at least 32 pixels, got {width!r}")
        if isinstance(font_size, bool) or not isinstance(font_size, int) or font_size < 6:
            raise ValueError(f"font_size: expected an int of at least 6, got {font_size!r}")
        font = _font(font_size)
        text_h = font.getbbox("Ag")[3]
        pad = max(2, font_size // 5)
        box_h = text_h + 2 * pad
        boxes, labels, y = [], [], pad
        for line in self.lines:
            labels.append((pad, y, line.label))
            y += text_h + pad
            x = pad
            for token, color in zip(line.tokens, line.colors, strict=True):
                w = int(np.ceil(font.getlength(token))) + 2 * pad
                if x > pad and x + w > width - pad:
                    x, y = pad, y + box_h + pad
                boxes.append((x, y, w, token, color))
                x += w + pad
            y += box_h + 2 * pad
        canvas = Image.new("RGB", (width, max(y, box_h + 2 * pad)), "white")
        draw = ImageDraw.Draw(canvas)
        for x, y, label in labels:
            draw.text((x, y), label, fill=(60, 60, 60), font=font)
        for x, y, w, token, color in boxes:
            rgb = tuple(int(c) for c in color)
            draw.rectangle((x, y, x + w - 1, y + box_h - 1), fill=rgb)
            draw.text((x + pad, y + pad), token, fill=_ink(color), font=font)
        return canvas

    def save(self, path: str | os.PathLike, **image_args: object) -> Path:
        """Write a ``.png`` (:meth:`image`, ``image_args`` passed on) or an ``.html`` page.

        Written under a temporary name and renamed into place, so a reader never sees half a
        file.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".png":
            pixels = np.asarray(self.image(**image_args))
            with atomic_write(path) as f:
                write_png(f, pixels)
        elif suffix in (".html", ".htm"):
            if image_args:
                raise TypeError(f"save: {sorted(image_args)} apply to .png files only")
            page = f'<!DOCTYPE html>\n<meta charset="utf-8">\n{self.html()}\n'
            with atomic_write(path) as f:  # the bytes the page declares, whatever the locale
                f.write(page.encode("utf-8"))
        else:
            raise ValueError(f"path: expected a .png or .html file, got {os.fspath(path)!r}")
        return path

    def __repr__(self) -> str:
        n = sum(len(line.tokens) for line in self.lines)
        return f"TokenPicture({len(self.lines)} lines, {n} tokens)"


def tokens(
    scores: object,
    tokens: Sequence[str] | Sequence[Sequence[str]],
    classes: int | Sequence[int] | None = None,
    *,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    sign: str = "all",
    cmap: str | None = None,
    clip: str | None = "percentile",
    percentile: float = 99.0,
    skip: Skip = None,
) -> TokenPicture:
    """Colour every token by its score, one line per sample and requested class.

    Parameters
    ----------
    scores
        An :class:`~saliency.Attribution` (or anything with ``values`` and ``classes``) with one
        score per token, ``values`` ``[B, K, T]`` (reduce embeddings first with
        :func:`saliency.token_scores`); or a tensor or array for one sample, ``[K, T]`` (row ``k``
        is class ``k``) or ``[T]``, or a batch ``[B, K, T]``.
    tokens
        The token strings: a list of ``T`` strings for one sample, or ``B`` such lists. A list
        may be shorter than ``T``: the last positions (trailing padding) are then not drawn.
    classes
        Class ids to draw (an int or a list), each of which every sample must have; None draws
        every row.
    class_names
        A name for each class id (a sequence or a mapping), shown with the class's output.
    sign, clip, percentile
        As for :func:`~saliency.viz.normalize`; each line gets its own threshold, computed over
        the tokens it shows. ``sign="all"`` (the default) keeps the sign on a diverging map.
    cmap
        A matplotlib colour map name; the default is ``"bwr"`` (zero white) for ``sign="all"``
        and ``"inferno"`` otherwise, as for heat maps.
    skip
        Tokens to hide (padding): a string, a collection of strings, or a predicate on a token.

    Returns
    -------
    TokenPicture
        HTML in a notebook (each token's score in its tooltip); ``.image()`` gives a PIL image,
        ``.save(path)`` writes a PNG or HTML file; ``.lines`` holds the tokens, scores and colours.

    Examples
    --------
    >>> import torch, saliency
    >>> from saliency.tokens import token_scores
    >>> from saliency.viz.token_pictures import tokens
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 3, 2))
    >>> embedded = torch.randn(1, 4, 3)
    >>> a = saliency.gradients(model, embedded)
    >>> words = ["the", "film", "was", "[PAD]"]
    >>> picture = tokens(token_scores(a), words, skip="[PAD]")
    >>> picture
    TokenPicture(2 lines, 6 tokens)
    >>> picture.image().mode
    'RGB'
    """
    check_options(sign=sign, clip=clip, percentile=percentile)
    if cmap is not None:
        lookup_table(cmap)  # an unknown name fails here
    values, ids, outputs = _rows(scores)
    n_samples, _, length = values.shape
    texts = _texts(tokens, n_samples, length)
    hidden = _skipper(skip)
    lines = []
    for b in range(n_samples):
        shown = [i for i, t in enumerate(texts[b]) if not hidden(t)]
        for k in _wanted(ids[b], classes, b):
            c = int(ids[b, k])
            label = class_label(c, class_names)
            if outputs is not None and 0 <= c < outputs.shape[1]:
                label += f": {outputs[b, c]:.3g}"
            if n_samples > 1:
                label = f"#{b} {label}"
            line_scores = values[b, k, shown]
            lines.append(
                TokenLine(
                    sample=b,
                    class_id=c,
                    label=label,
                    tokens=tuple(texts[b][i] for i in shown),
                    positions=tuple(shown),
                    scores=line_scores,
                    colors=_colors(line_scores, sign, cmap, clip, percentile),
                )
            )
    return TokenPicture(lines)


_BOX_STYLE = "font-family:monospace;line-height:1.9;color:#222"
_LABEL_STYLE = "font-weight:bold;margin-right:6px;white-space:pre"
_TOKEN_STYLE = "display:inline-block;padding:0 3px;margin:1px;border-radius:3px;white-space:pre"


def _span(token: str, score: float, color: np.ndarray, label: str) -> str:
    r, g, b = (int(c) for c in color)
    title = _escape(f"{label} | {score:.4g}")
    return (
        f'<span title="{title}" style="background-color:#{r:02x}{g:02x}{b:02x};'
        f'color:{_ink(color)};{_TOKEN_STYLE}">{_escape(token)}</span>'
    )


def _escape(text: str) -> str:
    """``text`` for HTML: escaped, with lone surrogates (a tokenizer's half of a character, which
    UTF-8 cannot encode) shown as U+FFFD and split pairs joined into their character."""
    text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return html.escape(text, quote=True)


def _ink(color: np.ndarray) -> str:
    """Black or white text, whichever reads better on ``color`` (ITU-R 601 luma)."""
    r, g, b = (int(c) for c in color)
    return "#000000" if 0.299 * r + 0.587 * g + 0.114 * b >= 128 else "#ffffff"


def _colors(
    line: np.ndarray, sign: str, cmap: str | None, clip: str | None, percentile: float
) -> np.ndarray:
    """uint8 RGB ``[n, 3]`` of one line's scores, as a ``1 x n`` map is coloured."""
    if line.size == 0:
        return np.zeros((0, 3), dtype=np.uint8)
    indices = color_indices(
        line.reshape(1, 1, -1), sign=sign, reduce="sum", clip=clip, percentile=percentile
    )
    return paint(indices, cmap=cmap, signed=sign == "all")[0]


def _rows(scores: object) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Scores ``[B, K, T]`` float32, class ids ``[B, K]`` and outputs ``[B, C]`` (or None)."""
    if hasattr(scores, "values") and hasattr(scores, "classes"):
        values = to_numpy(scores.values, "scores.values")
        if values.ndim != 3:
            raise ValueError(
                f"scores: expected values [B, K, T] (one score per token), got shape "
                f"{list(values.shape)}; reduce embedding attributions [B, K, T, E] with "
                "saliency.token_scores first"
            )
        ids = to_numpy(scores.classes, "scores.classes")
        if ids.shape != values.shape[:2]:
            raise ValueError(
                f"scores: classes has shape {list(ids.shape)}; expected {list(values.shape[:2])}"
            )
        outputs = getattr(scores, "outputs", None)
        outputs = None if outputs is None else to_numpy(outputs, "scores.outputs")
    else:
        values = to_numpy(scores, "scores")
        if values.ndim not in (1, 2, 3):
            raise ValueError(
                f"scores: expected [T] or [K, T] for one sample or [B, K, T], got shape "
                f"{list(values.shape)}"
            )
        values = values.reshape((1,) * (3 - values.ndim) + values.shape)
        ids = np.broadcast_to(np.arange(values.shape[1]), values.shape[:2])
        outputs = None
    if values.shape[0] == 0 or values.shape[1] == 0:
        raise ValueError(f"scores: nothing to draw (shape {list(values.shape)})")
    values = values.astype(np.float32)
    if not np.isfinite(values).all():
        raise ValueError("scores: holds NaN or inf; expected finite token scores")
    return values, ids, outputs


def _texts(tokens: object, n_samples: int, length: int) -> list[list[str]]:
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise TypeError(
            f"tokens: expected a list of token strings (or one list per sample), got "
            f"{type(tokens).__name__}"
        )
    batch = list(tokens)
    # One sample's tokens, unless it is one list of them: then non-strings are caught below.
    if n_samples == 1 and all(isinstance(t, str) or not isinstance(t, Sequence) for t in batch):
        batch = [batch]
    if len(batch) != n_samples:
        raise ValueError(f"tokens: expected {n_samples} lists (one per sample), got {len(batch)}")
    for b, sample in enumerate(batch):
        if isinstance(sample, str) or not isinstance(sample, Sequence):
            raise TypeError(
                f"tokens: sample {b} is a {type(sample).__name__}; expected a list of strings"
            )
        if len(sample) > length:
            raise ValueError(
                f"tokens: sample {b} has {len(sample)} tokens for {length} scores; expected at "
                f"most one token per score (fewer: the last positions, padding, are not drawn)"
            )
        bad = next((t for t in sample if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(f"tokens: expected strings, got {bad!r} in sample {b}")
    return [list(sample) for sample in batch]


def _skipper(skip: Skip) -> Callable[[str], bool]:
    if skip is None:
        return lambda token: False
    if isinstance(skip, str):
        return lambda token: token == skip
    if callable(skip):
        return lambda token: bool(skip(token))
    if isinstance(skip, Collection) and all(isinstance(s, str) for s in skip):
        hidden = frozenset(skip)
        return lambda token: token in hidden
    raise TypeError(
        f"skip: expected a token string, a collection of them or a predicate, got {skip!r}"
    )


def _wanted(ids: np.ndarray, classes: object, b: int) -> list[int]:
    """The rows of sample ``b`` to draw, in the order of ``classes``."""
    if classes is None:
        return list(range(len(ids)))
    wanted = np.asarray(to_numpy(classes, "classes")).reshape(-1)
    if wanted.size == 0 or not np.issubdtype(wanted.dtype, np.integer):
        raise TypeError(f"classes: expected None, a class id or a list of ids, got {classes!r}")
    rows = []
    for c in wanted.tolist():
        hits = np.flatnonzero(ids == c).tolist()
        if not hits:
            raise ValueError(
                f"classes: class {c} was not computed for sample {b} (its classes: {ids.tolist()})"
            )
        rows.extend(hits)
    return rows
