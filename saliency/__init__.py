"""Per-sample, per-class input Jacobians and the explanations built on them.

The engine returns ``J[b, k] = d out[b, class_k] / d x[b]`` for every requested class in one call;
methods, pictures and audits are layers above it. ``saliency.viz``, ``saliency.audit`` and
``saliency.models`` are imported when first used, so ``import saliency`` stays light.
"""

import importlib

from .attribution import Attribution
from .engine import class_jacobian, iter_class_jacobian
from .methods import from_captum, gradcam, gradients, integrated_gradients, smoothgrad
from .outputs import next_token
from .targets import contrast, top_k
from .tokens import patch_scores, token_scores

__version__ = "0.1.0"

__all__ = [
    "Attribution",
    "class_jacobian",
    "contrast",
    "from_captum",
    "gradcam",
    "gradients",
    "integrated_gradients",
    "iter_class_jacobian",
    "next_token",
    "patch_scores",
    "smoothgrad",
    "token_scores",
    "top_k",
]

_SUBPACKAGES = ("audit", "models", "viz")  # imported on first use: pictures pull in Pillow


def __getattr__(name: str) -> object:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBPACKAGES))
