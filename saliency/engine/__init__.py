"""The class-Jacobian engine: validation, chunk planning under a memory budget, strategies."""

from .auto import forget as forget_strategy_choices
from .budget import parse_memory
from .jacobian import (
    JacobianChunk,
    JacobianResult,
    class_jacobian,
    evaluate,
    iter_class_jacobian,
    outputs,
)
from .problem import Shared
from .strategies import STRATEGIES

__all__ = [
    "STRATEGIES",
    "JacobianChunk",
    "JacobianResult",
    "Shared",
    "class_jacobian",
    "evaluate",
    "forget_strategy_choices",
    "iter_class_jacobian",
    "outputs",
    "parse_memory",
]
