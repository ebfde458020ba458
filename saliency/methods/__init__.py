"""Explanation methods: thin layers over the class-Jacobian engine, each returning an Attribution.

One method per module, each following :class:`Method` and declaring its record
(:mod:`saliency.methods.records`); :func:`smoothgrad` wraps any of them. The methods are looked
up in the records when first used, so that importing this package costs nothing until then.
"""

import typing

from .._lazy import namespace as _namespace
from . import records as _records

if typing.TYPE_CHECKING:  # for type checkers and the docs; at run time the records say
    from ._captum import from_captum  # noqa: F401
    from ._contract import Method  # noqa: F401
    from ._gradcam import gradcam  # noqa: F401
    from ._gradients import gradients  # noqa: F401
    from ._integrated_gradients import integrated_gradients  # noqa: F401
    from ._smoothgrad import smoothgrad  # noqa: F401

__getattr__, __dir__ = _namespace(
    __name__,
    exports={"Method": "._contract", "from_captum": "._captum"},
    records=("saliency.methods", "MethodRecord"),
    submodules=("baselines", "records"),
    registered=lambda name: getattr(_records.added(name), "function", None),
)
