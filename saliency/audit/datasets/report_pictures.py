"""Pictures of samples in the report, drawn by one function chosen by the kind of data.

``image`` data (``[C, H, W]`` or ``[H, W]`` floats) is drawn as the map of one class (a signed
heat map, zero white) with the input under it; ``sequence`` data (token ids ``[T]``, or features
``[D]``) as the tokens or feature names coloured by their scores, as :func:`saliency.viz.tokens`
colours them. Adding a kind is one function in :data:`PAINTERS`.

Examples
--------
>>> import torch
>>> kind_of([1, 8, 8], "torch.float32"), kind_of([16], "torch.int64")
('image', 'sequence')
>>> kind_of([30], "torch.float32")  # tabular features: named cells, like tokens
'sequence'
>>> painter = Painter("image", mean=None, std=None, tokens=None)
>>> html = painter.card_picture(torch.rand(1, 8, 8), torch.randn(1, 8, 8))
>>> html.count("<img"), "rp-map" in html
(2, True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from saliency import viz
from saliency.viz import html as shell

__all__ = ["PAINTERS", "Painter", "kind_of"]

MAX_SIDE = 112  # pictures larger than this are averaged down to it (whole blocks)


def kind_of(shape: Sequence[int], dtype: str) -> str:
    """``"image"`` for floating ``[C, H, W]`` / ``[H, W]`` samples, else ``"sequence"``."""
    floating = "float" in str(dtype) or "bfloat" in str(dtype)
    return "image" if floating and len(shape) in (2, 3) else "sequence"


class Painter:
    """Draws the report's pictures of one run's data: cards, and mean maps with mean inputs."""

    def __init__(
        self,
        kind: str,
        *,
        mean: float | Sequence[float] | None,
        std: float | Sequence[float] | None,
        tokens: Callable[[torch.Tensor], list[list[str]]] | None,
    ) -> None:
        if kind not in PAINTERS:
            raise ValueError(f"kind: expected one of {sorted(PAINTERS)}, got {kind!r}")
        self.kind, self.mean, self.std, self.tokens = kind, mean, std, tokens

    def card_picture(self, x: torch.Tensor, values: torch.Tensor) -> str:
        """HTML of one sample's picture for one class: ``x`` is the sample, ``values`` its map."""
        return PAINTERS[self.kind](self, x, values)

    def input_uri(self, x: torch.Tensor) -> str:
        """A PNG data URI of an image sample, undoing the normalisation."""
        picture = viz.input_pictures(_image_batch(x), mean=self.mean, std=self.std)[0]
        pixels = (picture.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
        if pixels.shape[2] == 1:
            pixels = np.repeat(pixels, 3, axis=2)
        return shell.png_uri(_shrink(Image.fromarray(pixels[:, :, :3])))

    def map_uri(self, values: torch.Tensor) -> str:
        """A PNG data URI of one image map: signed, on a diverging map, zero white."""
        m = values.detach().float().cpu()
        if m.ndim == 3 and m.shape[0] not in (1, 3, 4) and m.shape[-1] in (1, 3, 4):
            m = m.permute(2, 0, 1)
        return shell.png_uri(_shrink(viz.heatmap(m, sign="all")))

    def texts(self, x: torch.Tensor) -> list[str]:
        """The strings of a sequence sample's positions: its tokens, or feature names."""
        if not x.dtype.is_floating_point and self.tokens is not None:
            return list(self.tokens(x[None])[0])
        if not x.dtype.is_floating_point:
            return [f"#{int(t)}" for t in x.reshape(-1)]
        return [f"x{i}" for i in range(x.numel())]


def _image_card(painter: Painter, x: torch.Tensor, values: torch.Tensor) -> str:
    return (
        f'<img class="rp-map" alt="map" src="{painter.map_uri(values)}">'
        f'<img class="rp-in" alt="input" src="{painter.input_uri(x)}">'
    )


def _sequence_card(painter: Painter, x: torch.Tensor, values: torch.Tensor) -> str:
    scores = values.detach().float().cpu()
    if scores.ndim == 2:
        scores = scores.sum(-1)  # one score per token: the sum over the embedding
    scores = scores.reshape(-1)
    texts = painter.texts(x)[: scores.numel()]
    if not texts:
        return '<div class="rp-tokens"></div>'
    line = viz.tokens(scores.numpy(), texts).lines[0]
    spans = "".join(
        f'<span style="background:#{r:02x}{g:02x}{b:02x};color:{_ink(r, g, b)}" '
        f'title="{shell.escape(f"{t}: {s:.4g}")}">{shell.escape(t)}</span>'
        for t, s, (r, g, b) in zip(line.tokens, line.scores, line.colors.tolist(), strict=True)
    )
    return f'<div class="rp-tokens">{spans}</div>'


PAINTERS: dict[str, Callable[[Painter, torch.Tensor, torch.Tensor], str]] = {
    "image": _image_card,
    "sequence": _sequence_card,
}


def _image_batch(x: torch.Tensor) -> torch.Tensor:
    t = x.detach().float().cpu()
    if t.ndim == 2:
        t = t[None]
    return t[None, :3] if t.shape[0] in (1, 3, 4) else t.permute(2, 0, 1)[None, :3]


def _shrink(picture: Image.Image) -> Image.Image:
    factor = -(-max(picture.size) // MAX_SIDE)
    if factor <= 1:
        return picture
    size = (-(-picture.width // factor), -(-picture.height // factor))
    return picture.resize(size, Image.Resampling.BOX)


def _ink(r: int, g: int, b: int) -> str:
    return "#000" if 0.299 * r + 0.587 * g + 0.114 * b >= 128 else "#fff"
