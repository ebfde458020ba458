"""Per-sample, per-class input Jacobians and the explanations built on them.

The engine returns ``J[b, k] = d out[b, class_k] / d x[b]`` for every requested class in one call;
methods, pictures and audits are layers above it.

Names are imported when first used (``import saliency`` alone does not import torch), and every
method of :mod:`saliency.methods.records` is here under its own name.
"""

import typing

from ._lazy import namespace as _namespace
from .methods import records as _method_records

if typing.TYPE_CHECKING:  # for type checkers and the docs; at run time the records say
    from . import audit, io, models, viz  # noqa: F401
    from .attribution import Attribution  # noqa: F401
    from .engine import class_jacobian, iter_class_jacobian  # noqa: F401
    from .generation import explain_generation  # noqa: F401
    from .methods import from_captum, gradcam, gradients, integrated_gradients, smoothgrad  # noqa: F401
    from .outputs import next_token  # noqa: F401
    from .targets import contrast, top_k  # noqa: F401
    from .tokens import patch_scores, token_scores  # noqa: F401

__version__ = "0.1.0"

__getattr__, __dir__ = _namespace(
    __name__,
    exports={
        "Attribution": ".attribution",
        "class_jacobian": ".engine",
        "iter_class_jacobian": ".engine",
        "explain_generation": ".generation",
        "from_captum": ".methods",
        "next_token": ".outputs",
        "contrast": ".targets",
        "top_k": ".targets",
        "patch_scores": ".tokens",
        "token_scores": ".tokens",
    },
    records=("saliency.methods", "MethodRecord"),
    submodules=("audit", "engine", "generation", "io", "methods", "models", "viz"),
    registered=lambda name: getattr(_method_records.added(name), "function", None),
)
