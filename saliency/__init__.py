"""Per-sample, per-class input Jacobians and the explanations built on them.

The engine returns ``J[b, k] = d out[b, class_k] / d x[b]`` for every requested class in one call;
methods, pictures and audits are layers above it.
"""

from .engine import class_jacobian, iter_class_jacobian
from .targets import contrast, top_k

__version__ = "0.1.0"

__all__ = [
    "class_jacobian",
    "contrast",
    "iter_class_jacobian",
    "top_k",
]
