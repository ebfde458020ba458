"""The shell shared by every HTML view: escaping, inlined pictures, data for scripts, one page.

A view of this package (the notebook viewer, the audit report) is one HTML document that fetches
nothing: pictures are PNG ``data:`` URIs, styles and scripts are inline, and the page declares a
Content-Security-Policy that refuses any request a mistake could add. The same markup serves a
saved file (:func:`page`) and a Jupyter cell (:func:`fragment`, whose elements carry their own
id so that two views in one notebook do not meet).

Examples
--------
>>> import numpy as np
>>> escape('<b title="x">') == '&lt;b title=&quot;x&quot;&gt;'
True
>>> png_uri(np.zeros((2, 3, 3), dtype=np.uint8)).startswith("data:image/png;base64,")
True
>>> script_data({"token": "</script>"})
'{"token":"\\\\u003c/script\\\\u003e"}'
>>> "Content-Security-Policy" in page("t", "<p>hi</p>")
True
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import re
from importlib import resources

import numpy as np
from PIL import Image

from saliency.viz.colormaps import lookup_table
from saliency.viz.png import write_png

__all__ = [
    "asset",
    "colour_bar",
    "escape",
    "fragment",
    "page",
    "png_uri",
    "script_data",
    "table_data",
    "view_id",
]

# Nothing may be fetched: no scripts, styles, fonts or pictures from anywhere, only what is inline.
_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
_SURROGATE = re.compile("[\ud800-\udfff]")
_SCRIPT_UNSAFE = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def escape(value: object) -> str:
    """``value`` as text safe in HTML content and quoted attributes.

    Lone surrogates (half of a pair, which no UTF-8 file can hold) become U+FFFD, so a token
    such as ``"\\ud83d"`` is drawn as a replacement character instead of failing on write.
    """
    return html.escape(_SURROGATE.sub("\ufffd", str(value)), quote=True)


def png_uri(picture: Image.Image | np.ndarray, *, compress_level: int = 9) -> str:
    """A ``data:image/png;base64,...`` URI of a PIL image or uint8 ``(H, W, 3)``/``(H, W)`` pixels.

    Pages are written once and read many times, so the default compresses hardest.
    """
    if isinstance(picture, Image.Image):
        pixels = np.asarray(picture.convert("RGB"))
    else:
        pixels = np.asarray(picture)
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    buffer = io.BytesIO()
    write_png(buffer, np.ascontiguousarray(pixels), compress_level=compress_level)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def script_data(value: object) -> str:
    """JSON of ``value`` that is safe inside a ``<script>`` element.

    ``<``, ``>`` and ``&`` are written as ``\\u`` escapes (a string holding ``</script>`` cannot
    end the element); non-finite floats become ``null``; lone surrogates become U+FFFD.
    """
    text = json.dumps(_finite(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return _SURROGATE.sub("\ufffd", text).translate(_SCRIPT_UNSAFE)


def table_data(values: np.ndarray) -> dict:
    """Map values for a script: int16 codes of ``values / scale`` as base64, and ``scale``.

    The browser reads them back with ``Int16Array`` (``value = code * scale / 32767``): about
    four significant digits of each map's largest magnitude, in two bytes a value.
    """
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    scale = float(np.abs(finite).max()) if finite.size else 0.0
    codes = np.zeros(arr.shape, dtype="<i2")
    if scale > 0:
        codes = np.round(np.nan_to_num(arr / scale, nan=0.0) * 32767).astype("<i2")
    return {"scale": scale, "codes": base64.b64encode(codes.tobytes()).decode("ascii")}


def colour_bar(cmap: str, signed: bool, *, stops: int = 17) -> str:
    """A CSS ``linear-gradient`` through ``cmap``'s colours, low end on the left."""
    table = lookup_table(cmap, signed)
    colours = [table[round(i * 255 / (stops - 1))] for i in range(stops)]
    steps = ", ".join(f"rgb({r},{g},{b})" for r, g, b in colours)
    return f"linear-gradient(to right, {steps})"


def root_of(root: str) -> str:
    """A JavaScript expression for a view's root element: the first element with id ``root``
    (from :func:`view_id`) that no view script has taken yet, marked as taken. The same view
    shown twice in a notebook has two such elements; each output's script takes its own."""
    if not re.fullmatch(r"[\w-]+", root):
        raise ValueError(f"root: expected an id from view_id, got {root!r}")
    find = "document.querySelectorAll('[id=\"" + root + "\"]')"
    return (
        f"(function(){{var all={find};for(var i=0;i<all.length;i++){{"
        "if(!all[i].hasAttribute('data-sv-taken')){all[i].setAttribute('data-sv-taken','1');"
        "return all[i];}}return null;})()"
    )


def view_id(*parts: object) -> str:
    """An id for a view's root element, from what it shows: the same view, the same page bytes."""
    h = hashlib.sha256()
    for part in parts:
        h.update(str(part).encode("utf-8", "surrogatepass"))
    return "sv-" + h.hexdigest()[:12]


def page(title: str, body: str, *, style: str = "", script: str = "") -> str:
    """A whole HTML document: ``body`` with inline ``style`` and ``script``, fetching nothing.

    ``title`` is text (escaped here); ``body``, ``style`` and ``script`` are markup and code that
    the caller has escaped.
    """
    script_tag = f"<script>{script}</script>\n" if script else ""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>\n"
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">\n'
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
        f"<title>{escape(title)}</title>\n<style>{style}</style></head>\n"
        f"<body>\n{body}\n{script_tag}</body></html>\n"
    )


def fragment(body: str, *, style: str = "", script: str = "") -> str:
    """``body`` with its style and script, for a notebook cell (``_repr_html_``).

    The style should select only the view's own classes; the script runs once per cell output
    and should find its root by id (see :func:`view_id`).
    """
    script_tag = f"<script>{script}</script>" if script else ""
    return f"<style>{style}</style>{body}{script_tag}"


def asset(name: str, package: str = "saliency.viz") -> str:
    """The text of ``<package>/assets/<name>``: a view's script or style, kept in its own file."""
    return resources.files(package).joinpath("assets", name).read_text(encoding="utf-8")


def _finite(value: object) -> object:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        return _finite(value.item())
    return value
