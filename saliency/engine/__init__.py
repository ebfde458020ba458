"""The class-Jacobian engine: validation, guards, planning under a memory budget, strategies."""

from .budget import parse_memory
from .forward import GuardError
from .jacobian import (
    JacobianChunk,
    JacobianResult,
    class_jacobian,
    evaluate,
    forget_strategy_choices,
    iter_class_jacobian,
    layer_name,
    layer_output,
    outputs,
)
from .problem import Shared, is_per_sample, read_scores, sample_rows, scores_of
from .strategies import STRATEGIES

__all__ = [
    "STRATEGIES",
    "GuardError",
    "JacobianChunk",
    "JacobianResult",
    "Shared",
    "class_jacobian",
    "evaluate",
    "forget_strategy_choices",
    "is_per_sample",
    "iter_class_jacobian",
    "layer_name",
    "layer_output",
    "outputs",
    "parse_memory",
    "read_scores",
    "sample_rows",
    "scores_of",
]
