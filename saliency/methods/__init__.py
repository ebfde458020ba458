"""Explanation methods: thin layers over the class-Jacobian engine, each returning an Attribution.

One method per module; :func:`smoothgrad` wraps any of them.
"""

from .gradients import gradients
from .integrated_gradients import integrated_gradients
from .smoothgrad import smoothgrad

__all__ = ["gradients", "integrated_gradients", "smoothgrad"]
