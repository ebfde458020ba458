"""Pictures of a generation's attribution: generated tokens (rows) by context tokens (columns).

Three views of one grid: :func:`generation_image` (a PIL heat map with token labels, drawn with
Pillow; :func:`save_generation_images` writes one PNG per sample, no matplotlib), :func:`html_view`
(hover a generated token to light up the context it came from; self-contained, escaped, the
``_repr_html_`` of the result; on the shell of every HTML view, :mod:`saliency.viz.html`) and
:func:`plot_generation` (a matplotlib figure for notebooks).

Each row is scaled on its own by default (``normalize="row"``): steps differ in magnitude by
orders (a confident step has small gradients), and a row is read against itself. Cells a step
cannot see (its own token and later ones) are grey; padding is left out.

The functions take any object with the fields of :class:`saliency.generation.GenerationAttribution`.

Examples
--------
>>> import torch
>>> from saliency.generation import GenerationAttribution
>>> from saliency.viz.generation import generation_image, html_view
>>> scores = torch.tensor([[[0.5, 0.2, 0.0, 0.0], [0.1, 0.3, 0.9, 0.0]]])
>>> a = GenerationAttribution(generated=torch.tensor([[7, 8]]), ids=torch.tensor([[5, 6, 7, 8]]),
...     attention_mask=torch.ones(1, 4, dtype=torch.long), scores=scores,
...     tokens=[["the", "<cat>", "sat", "down"]])
>>> generation_image(a).mode
'RGB'
>>> page = html_view(a)
>>> "&lt;cat&gt;" in page and "<cat>" not in page
True
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from saliency._atomic import atomic_write
from saliency.viz.colormaps import DIVERGING, lookup_table
from saliency.viz.draw import _font
from saliency.viz.html import colour_bar, escape, root_of, script_data, view_id
from saliency.viz.png import write_png
from saliency.viz.viewer import View

__all__ = [
    "generation_image",
    "generation_view",
    "html_page",
    "html_view",
    "plot_generation",
    "save_generation_images",
]

SEQUENTIAL = "Reds"  # magnitudes: white at zero, so that text stays readable on every cell
_UNSEEN = (225, 225, 225)  # a cell the step cannot see
_NORMALIZE = ("row", "all")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class _Grid:
    """One sample's grid: values ``[R, C]`` (NaN where unseen), labels, and the source split."""

    values: np.ndarray
    rows: list[str]
    columns: list[str]
    source: int  # how many of the columns are the source's (encoder-decoder), first
    signed: bool
    title: str


def _grid(a: object, sample: int) -> _Grid:
    n = len(a.generated)
    if isinstance(sample, bool) or not isinstance(sample, int) or not -n <= sample < n:
        raise ValueError(f"sample: expected an int in [0, {n}), got {sample!r}")
    sample %= n
    scores = _numpy(a.scores[sample])  # [T_out, T_ctx]
    mask = _numpy(a.attention_mask[sample]).astype(bool)
    t_out, t_ctx = scores.shape
    token_cols = np.arange(t_ctx - t_out, t_ctx)
    steps = np.flatnonzero(mask[token_cols])  # real steps
    cols = np.flatnonzero(mask)
    seen = cols[None, :] < token_cols[steps, None]  # a step sees the columns before its token
    values = np.where(seen, scores[np.ix_(steps, cols)], np.nan)
    names = _names(a.tokens, a.ids, sample)
    col_labels = [names[c] for c in cols]
    row_labels = [names[token_cols[t]] for t in steps]
    source = 0
    if getattr(a, "source_scores", None) is not None:
        src_mask = _numpy(a.source_mask[sample]).astype(bool)
        src_cols = np.flatnonzero(src_mask)
        src = _numpy(a.source_scores[sample])[np.ix_(steps, src_cols)]
        values = np.concatenate([src, values], axis=1)
        src_names = _names(a.source_tokens, a.source_ids, sample)
        col_labels = [src_names[c] for c in src_cols] + col_labels
        source = len(src_cols)
    params = getattr(a, "params", {}) or {}
    signed = params.get("reduce") == "sum" or bool(np.nanmin(values, initial=0.0) < 0)
    title = f"sample {sample}: {getattr(a, 'method', '')}, target {params.get('target', '?')}"
    return _Grid(values.astype(np.float32), row_labels, col_labels, source, signed, title)


def _names(tokens: list | None, ids: object, sample: int) -> list[str]:
    if tokens is not None:
        # A lone surrogate (half of a byte-level token's character) cannot be written as UTF-8.
        return [_SURROGATE.sub("\ufffd", str(t)) for t in tokens[sample]]
    return [str(i) for i in _numpy(ids[sample]).tolist()]


def _numpy(t: object) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    return np.asarray(t)


def _scaled(grid: _Grid, normalize: str, percentile: float | None) -> np.ndarray:
    """Values in [-1, 1] (signed) or [0, 1]: each row (or the whole grid) over its percentile of
    magnitudes; NaN stays NaN."""
    if normalize not in _NORMALIZE:
        raise ValueError(f"normalize: expected one of {list(_NORMALIZE)}, got {normalize!r}")
    if percentile is not None and not 0 < float(percentile) <= 100:
        raise ValueError(f"percentile: expected a number in (0, 100] or None, got {percentile!r}")
    v = grid.values if grid.signed else np.abs(grid.values)
    mag = np.abs(v)
    q = 100.0 if percentile is None else float(percentile)
    with np.errstate(all="ignore"):
        if normalize == "row":
            finite = np.where(np.isfinite(mag), mag, np.nan)
            top = np.zeros(len(v), dtype=np.float32)
            rows = np.isfinite(finite).any(1)
            if rows.any():
                top[rows] = np.nanpercentile(finite[rows], q, axis=1)
            top = top[:, None]
        else:
            top = np.nanpercentile(mag, q) if np.isfinite(mag).any() else 0.0
        out = np.clip(v / np.where(top > 0, top, 1.0), -1.0, 1.0)
    return out


def _indices(scaled: np.ndarray, signed: bool) -> np.ndarray:
    """uint8 colour-table indices (NaN -> 0, drawn as unseen elsewhere)."""
    s = np.nan_to_num(scaled, nan=0.0)
    s = (s + 1.0) * 127.5 if signed else s * 255.0
    return np.clip(s + 0.5, 0, 255).astype(np.uint8)


def _table(cmap: str | None, signed: bool) -> np.ndarray:
    return lookup_table(cmap or (DIVERGING if signed else SEQUENTIAL), signed)


# -- PNG ----------------------------------------------------------------------------------------


def generation_image(
    attribution: object,
    sample: int = 0,
    *,
    normalize: str = "row",
    percentile: float | None = 99.0,
    cmap: str | None = None,
    cell: int | None = None,
    max_width: int = 2400,
    font_size: int = 11,
) -> Image.Image:
    """The heat map of one sample: a row per generated token, a column per context token.

    Parameters
    ----------
    attribution
        A :class:`~saliency.generation.GenerationAttribution`.
    sample
        Which sample.
    normalize
        ``"row"``: each generated token's row over its own scale; ``"all"``: one scale.
    percentile
        Magnitudes above this percentile (of the row, or of all) get the full colour; ``None``
        scales by the largest.
    cmap
        A matplotlib colour map name; default ``"bwr"`` for signed scores (``reduce="sum"``)
        and ``"Reds"`` for magnitudes.
    cell
        Pixels per cell; default: 16, smaller for wide grids so the picture is at most
        ``max_width`` pixels wide (labels are left out below 8 pixels).
    max_width, font_size
        The picture's largest width without ``cell``, and the labels' size.

    Returns
    -------
    PIL.Image.Image
    """
    grid = _grid(attribution, sample)
    scaled = _scaled(grid, normalize, percentile)
    table = _table(cmap, grid.signed)
    r, c = scaled.shape
    if cell is None:
        cell = int(max(2, min(16, (max_width - 120) // max(c, 1))))
    if isinstance(cell, bool) or not isinstance(cell, int) or cell < 1:
        raise ValueError(f"cell: expected a positive int (pixels), got {cell!r}")
    labels = cell >= 8
    font = _font(font_size)
    gap = cell // 2 if grid.source else 0
    left = (_text_width(grid.rows, font) + 8) if labels else 4
    top = (_text_width(grid.columns, font) + 8) if labels else 4
    head = font_size + 8
    width = left + c * cell + gap + 8
    height = head + top + r * cell + 8
    pixels = np.full((height, width, 3), 255, dtype=np.uint8)
    colours = table[_indices(scaled, grid.signed)]  # [R, C, 3]
    colours[np.isnan(scaled)] = _UNSEEN
    block = np.repeat(np.repeat(colours, cell, axis=0), cell, axis=1)
    y0 = head + top
    xs = left + np.arange(c) * cell + np.where(np.arange(c) >= grid.source, gap, 0)
    for j in range(c):  # columns in place, with the gap between source and context
        pixels[y0 : y0 + r * cell, xs[j] : xs[j] + cell] = block[:, j * cell : (j + 1) * cell]
    picture = Image.fromarray(pixels)
    draw = ImageDraw.Draw(picture)
    draw.text((4, 3), grid.title, fill=(40, 40, 40), font=font)
    if labels:
        for i, text in enumerate(grid.rows):
            w = font.getlength(text)
            draw.text((left - 6 - w, y0 + i * cell + (cell - font_size) / 2 - 1), text,
                      fill=(30, 30, 30), font=font)  # fmt: skip
        for j, text in enumerate(grid.columns):
            _vertical(picture, text, font, int(xs[j] + (cell - font_size) / 2), head + top - 4)
    return picture


def _text_width(texts: list[str], font) -> int:
    return int(max((font.getlength(t) for t in texts), default=0)) + 2


def _vertical(picture: Image.Image, text: str, font, x: int, bottom: int) -> None:
    """Draw ``text`` reading upwards, its end at ``bottom``."""
    w = int(font.getlength(text)) + 2
    h = int(font.size if hasattr(font, "size") else 11) + 4
    strip = Image.new("L", (w, h), 0)
    ImageDraw.Draw(strip).text((1, 0), text, fill=255, font=font)
    up = strip.rotate(90, expand=True)
    ink = Image.new("RGB", up.size, (30, 30, 30))
    picture.paste(ink, (x, bottom - up.size[1]), up)


def save_generation_images(
    attribution: object, folder: str | os.PathLike, **image_args: object
) -> list[Path]:
    """Write one PNG heat map per sample, ``{folder}/{sample}.png`` (each written atomically).

    ``image_args`` go to :func:`generation_image`. Pillow draws and a fast PNG encoder writes:
    no matplotlib figure per picture.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for b in range(len(attribution.generated)):
        path = folder / f"{b}.png"
        pixels = np.asarray(generation_image(attribution, b, **image_args))
        with atomic_write(path) as f:
            write_png(f, np.ascontiguousarray(pixels))
        paths.append(path)
    return paths


# -- HTML ---------------------------------------------------------------------------------------

_STYLE = """
.sv-gen{font-family:ui-monospace,monospace;font-size:13px;line-height:2.1;color:#222}
.sv-gen .head{font-family:sans-serif;font-size:12px;color:#555;margin-top:6px}
.sv-gen .line{margin:2px 0}
.sv-gen .tag{font-family:sans-serif;font-size:11px;color:#777;margin-right:6px}
.sv-gen span.t{padding:1px 3px;margin:1px;border-radius:3px;white-space:pre;
 border:1px solid transparent}
.sv-gen span.g{border-bottom:2px solid #4a7;cursor:pointer}
.sv-gen span.g.on{outline:2px solid #222}
.sv-gen span.later{opacity:.35}
.sv-gen .legend{font-family:sans-serif;font-size:11px;color:#666}
.sv-gen .bar{display:inline-block;width:120px;height:9px;vertical-align:middle;margin:0 4px}
"""

_SCRIPT = """
(function(){
var root=%(root)s;if(!root)return;
var palette=%(palette)s,ink=%(ink)s,views=%(data)s;
function bytes(b64){var s=atob(b64),a=new Uint8Array(s.length);
 for(var i=0;i<s.length;i++)a[i]=s.charCodeAt(i);return a;}
root.querySelectorAll('.sample').forEach(function(box,k){
 var v=views[k],colours=bytes(v.colours),seen=bytes(v.seen),
  codes=new Int16Array(bytes(v.codes).buffer);
 var spans=box.querySelectorAll('span.t'),pinned=null;
 function clear(){spans.forEach(function(s){s.style.background='';s.style.color='';
  s.classList.remove('later','on');s.removeAttribute('title');});}
 function show(row){clear();var n=v.columns;
  spans.forEach(function(s){var c=+s.dataset.c;if(isNaN(c))return;
   var i=row*n+c;if(!seen[i]){s.classList.add('later');return;}
   var p=colours[i];s.style.background=palette[p];s.style.color=ink[p]?'#fff':'#000';
   s.title=(codes[i]*v.scale[row]/32767).toPrecision(4);});
  var g=box.querySelector('span.g[data-r="'+row+'"]');
  if(g){g.classList.add('on');g.classList.remove('later');}}
 box.querySelectorAll('span.g').forEach(function(g){var row=+g.dataset.r;
  g.addEventListener('mouseenter',function(){show(row);});
  g.addEventListener('mouseleave',function(){if(pinned===null)clear();else show(pinned);});
  g.addEventListener('click',function(){pinned=(pinned===row)?null:row;
   if(pinned===null)clear();else show(row);});});
});
})();
"""


def html_view(
    attribution: object,
    *,
    max_samples: int = 8,
    normalize: str = "row",
    percentile: float | None = 99.0,
    cmap: str | None = None,
) -> str:
    """An HTML fragment: every sample's tokens; hovering a generated token (underlined) colours
    the context by where it came from (click to pin). Self-contained, tokens escaped; the
    ``_repr_html_`` of the result in a notebook.

    ``normalize``, ``percentile`` and ``cmap`` are as for :func:`generation_image`.
    """
    options = dict(max_samples=max_samples, normalize=normalize, percentile=percentile, cmap=cmap)
    return generation_view(attribution, **options)._repr_html_()


def generation_view(
    attribution: object,
    *,
    max_samples: int = 8,
    normalize: str = "row",
    percentile: float | None = 99.0,
    cmap: str | None = None,
):
    """:func:`html_view` as a :class:`saliency.viz.viewer.View` (shown in a cell, saved with
    ``.save(path)``): what :func:`saliency.viz.view` gives for a generation result."""
    body, script = _view(attribution, max_samples, normalize, percentile, cmap)
    b, t_out = attribution.generated.shape
    summary = f"{getattr(attribution, 'method', None)}: {b} samples, {t_out} generated tokens"
    return View("Generation attribution", body, style=_STYLE, script=script, summary=summary)


def html_page(attribution: object, path: str | os.PathLike | None = None, **view_args) -> str:
    """:func:`html_view` as a whole page that fetches nothing (its Content-Security-Policy allows
    only its own inline style and script); written atomically to ``path`` when given."""
    text = generation_view(attribution, **view_args).html()
    if path is not None:
        with atomic_write(Path(path), "w") as f:
            f.write(text)
    return text


def _view(attribution, max_samples, normalize, percentile, cmap) -> tuple[str, str]:
    """The view's markup and its script."""
    n = min(len(attribution.generated), max_samples)
    boxes, views, signed = [], [], False
    for b in range(n):
        grid = _grid(attribution, b)
        signed |= grid.signed
        box, view = _sample_html(attribution, b, grid, normalize, percentile)
        boxes.append(box)
        views.append(view)
    table = _table(cmap, signed)
    palette = [f"#{r:02x}{g:02x}{bl:02x}" for r, g, bl in table.tolist()]
    ink = [int(0.299 * r + 0.587 * g + 0.114 * bl < 128) for r, g, bl in table.tolist()]
    root = view_id("generation", json.dumps(views), cmap, signed)
    bar = colour_bar(cmap or (DIVERGING if signed else SEQUENTIAL), signed)
    legend = (
        '<div class="legend">hover a generated token (underlined), click to pin; colour: '
        f"{'negative' if signed else '0'}<span class='bar' style='background:{bar}'></span>"
        f"{'positive' if signed else 'largest'} (each row on its own scale: "
        f"{escape(normalize)}); faded: not yet generated</div>"
    )
    more = ""
    if len(attribution.generated) > n:
        more = f'<div class="legend">... {len(attribution.generated) - n} more samples</div>'
    script = _SCRIPT % {
        "root": root_of(root),
        "palette": script_data(palette),
        "ink": script_data(ink),
        "data": script_data(views),
    }
    body = f'<div class="sv-gen" id="{root}">{legend}{"".join(boxes)}{more}</div>'
    return body, script


def _sample_html(a, b, grid: _Grid, normalize, percentile) -> tuple[str, dict]:
    scaled = _scaled(grid, normalize, percentile)
    r, c = scaled.shape
    colours = _indices(scaled, grid.signed)
    values = np.nan_to_num(grid.values, nan=0.0)
    scale = np.abs(values).max(1) if c else np.zeros(r)
    codes = np.zeros((r, c), dtype="<i2")
    nz = scale > 0
    codes[nz] = np.round(values[nz] / scale[nz, None] * 32767).astype("<i2")
    view = {
        "columns": c,
        "colours": base64.b64encode(colours.tobytes()).decode("ascii"),
        "codes": base64.b64encode(codes.tobytes()).decode("ascii"),
        "scale": [float(s) for s in scale],
        "seen": base64.b64encode(np.isfinite(grid.values).astype(np.uint8).tobytes()).decode(),
    }
    # Spans in reading order; data-c is the grid column, data-r the generated token's row.
    mask = _numpy(a.attention_mask[b]).astype(bool)
    t_out, t_ctx = a.scores.shape[1:]
    token_cols = list(range(t_ctx - t_out, t_ctx))
    real_steps = [t for t in range(t_out) if mask[token_cols[t]]]
    row_of = {token_cols[t]: i for i, t in enumerate(real_steps)}
    names = _names(a.tokens, a.ids, b)
    lines = []
    if grid.source:
        src_mask = _numpy(a.source_mask[b]).astype(bool)
        src_names = _names(a.source_tokens, a.source_ids, b)
        spans = [_span(src_names[col], j, None) for j, col in enumerate(np.flatnonzero(src_mask))]
        lines.append(f'<div class="line"><span class="tag">source</span>{"".join(spans)}</div>')
    spans = []
    for j, col in enumerate(np.flatnonzero(mask)):
        spans.append(_span(names[col], grid.source + j, row_of.get(int(col))))
    tag = "target" if grid.source else "text"
    lines.append(f'<div class="line"><span class="tag">{tag}</span>{"".join(spans)}</div>')
    head = f'<div class="head">{escape(grid.title)}</div>'
    return f'<div class="sample">{head}{"".join(lines)}</div>', view


def _span(token: str, column: int, row: int | None) -> str:
    text = escape(token)
    if row is None:
        return f'<span class="t" data-c="{column}">{text}</span>'
    return f'<span class="t g" data-c="{column}" data-r="{row}">{text}</span>'


# -- matplotlib ---------------------------------------------------------------------------------


def plot_generation(
    attribution: object,
    sample: int = 0,
    *,
    normalize: str = "row",
    percentile: float | None = 99.0,
    cmap: str | None = None,
    ax: object = None,
):
    """A matplotlib figure of one sample's grid, token labels on both axes, with a colour bar.

    Arguments as for :func:`generation_image`; ``ax`` draws into an existing axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    grid = _grid(attribution, sample)
    scaled = _scaled(grid, normalize, percentile)
    table = _table(cmap, grid.signed) / 255.0
    colours = ListedColormap(table).with_extremes(bad=tuple(c / 255 for c in _UNSEEN))
    r, c = scaled.shape
    if ax is None:
        size = (min(2.5 + 0.28 * c, 18), min(2.2 + 0.28 * r, 14))
        fig, ax = plt.subplots(figsize=size, layout="constrained")
    else:
        fig = ax.figure
    low = -1.0 if grid.signed else 0.0
    image = ax.imshow(np.ma.masked_invalid(scaled), cmap=colours, vmin=low, vmax=1.0,
                      aspect="auto", interpolation="nearest")  # fmt: skip
    ax.set_yticks(range(r), grid.rows, fontsize=8)
    ax.set_xticks(range(c), grid.columns, fontsize=8, rotation=90)
    if grid.source:
        ax.axvline(grid.source - 0.5, color="#333", linewidth=1)
    ax.set_xlabel("context token" + (" (source | target)" if grid.source else ""))
    ax.set_ylabel("generated token")
    ax.set_title(grid.title, fontsize=10)
    bar = fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02)
    what = "score / row scale" if normalize == "row" else "score / scale"
    bar.set_label(what + (" (signed)" if grid.signed else ""), fontsize=8)
    return fig
