"""Per-sample, per-class input Jacobians and the explanations built on them.

The engine returns ``J[b, k] = d out[b, class_k] / d x[b]`` for every requested class in one call;
methods, pictures and audits are layers above it.
"""

from .attribution import Attribution
from .engine import class_jacobian, iter_class_jacobian
from .generation import explain_generation
from .methods import from_captum, gradcam, gradients, integrated_gradients, smoothgrad
from .outputs import next_token
from .targets import contrast, top_k
from .tokens import patch_scores, token_scores

__version__ = "0.1.0"

__all__ = [
    "Attribution",
    "class_jacobian",
    "contrast",
    "explain_generation",
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
