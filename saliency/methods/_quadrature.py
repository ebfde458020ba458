"""Quadrature rules on ``[0, 1]`` for the path integral of Integrated Gradients.

Each rule gives ``steps`` points ``alpha`` and weights ``w``, and ``sum(w * f(alpha))``
approximates ``integral_0^1 f``. The names are Captum's. The trapezoid rule is the textbook one
(weights ``1 / (steps - 1)``, halved at both ends, summing to 1); Captum's sums to
``1 - 1 / steps``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RULES", "quadrature"]

RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def quadrature(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Points and weights (float64) of ``rule`` with ``steps`` points on ``[0, 1]``.

    Examples
    --------
    >>> alphas, weights = quadrature("riemann_trapezoid", 3)
    >>> alphas.tolist(), weights.tolist()
    ([0.0, 0.5, 1.0], [0.25, 0.5, 0.25])
    """
    if rule not in RULES:
        raise ValueError(f"rule: expected one of {list(RULES)}, got {rule!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    n = steps
    if rule == "gausslegendre":
        t, w = np.polynomial.legendre.leggauss(n)
        return (t + 1) / 2, w / 2
    if rule == "riemann_trapezoid":
        if n < 2:
            raise ValueError(
                "steps: the trapezoid rule needs at least 2 points (both ends of the path), got 1"
            )
        w = np.full(n, 1 / (n - 1))
        w[[0, -1]] /= 2
        return np.linspace(0, 1, n), w
    offset = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[rule]
    return (np.arange(n) + offset) / n, np.full(n, 1 / n)
