"""Explanation methods: thin layers over the class-Jacobian engine, each returning an Attribution.

One method per module, each following :class:`Method`; :func:`smoothgrad` wraps any of them.
"""

from ._captum import from_captum
from ._contract import Method
from ._gradcam import gradcam
from ._gradients import gradients
from ._integrated_gradients import integrated_gradients
from ._smoothgrad import smoothgrad

__all__ = ["Method", "from_captum", "gradcam", "gradients", "integrated_gradients", "smoothgrad"]
