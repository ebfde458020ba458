"""Pictures of attributions: heat maps, overlays, grids, bulk saving, views and matplotlib figures.

Normalisation (:func:`normalize`: sign, channel reduction, clipping) is separate from colouring
(256-entry lookup tables), so saving thousands of pictures costs array work and a PNG encode, not a
matplotlib figure each. Every function accepts torch tensors or numpy arrays, channels first or
last, grayscale or RGB, images in ``[0, 1]`` or ``[0, 255]`` or normalised (pass ``mean`` and
``std`` to undo it). The matplotlib figures (:func:`plot_classes`, :func:`plot_features`) import
matplotlib when first used.

Examples
--------
>>> import torch
>>> from saliency import viz
>>> image, values = torch.rand(3, 64, 64), torch.randn(3, 64, 64)
>>> viz.overlay(image, values, sign="all").size
(64, 64)
"""

from saliency.viz.draw import grid, heatmap, overlay
from saliency.viz.images import to_rgb
from saliency.viz.normalization import normalize
from saliency.viz.pictures import enlarge, input_pictures
from saliency.viz.save import save_overlays
from saliency.viz.token_pictures import tokens
from saliency.viz.viewer import View, view

__all__ = [
    "View",
    "enlarge",
    "grid",
    "heatmap",
    "input_pictures",
    "normalize",
    "overlay",
    "plot_classes",
    "plot_features",
    "save_overlays",
    "to_rgb",
    "tokens",
    "view",
]

_FIGURES = ("plot_classes", "plot_features")  # matplotlib: imported on first use


def __getattr__(name: str) -> object:
    if name in _FIGURES:
        from saliency.viz import figures

        return getattr(figures, name)
    raise AttributeError(f"module 'saliency.viz' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
