"""Model audits: can an explanation be trusted, for every class at once, over whole data sets.

Metrics are pure functions of a model, inputs and an :class:`saliency.Attribution`, batched over
every class, one module each with its record (:mod:`saliency.audit.records`); dataset runs shard,
resume and scale out with ``torch.distributed``. Every metric of the records is here under its
own name, with its result type, imported when first used.
"""

import typing

from .._lazy import namespace as _namespace
from . import records as _records

if typing.TYPE_CHECKING:  # for type checkers and the docs; at run time the records say
    from ._captum_metrics import Infidelity, Sensitivity, infidelity, sensitivity_max  # noqa: F401
    from ._class_sensitivity import ClassSensitivity, class_sensitivity  # noqa: F401
    from ._completeness import Completeness, completeness  # noqa: F401
    from ._margins import Margins, margins  # noqa: F401
    from ._norms import Norms, norms  # noqa: F401
    from ._perturbation import PerturbationCurves, deletion, insertion, road  # noqa: F401
    from ._randomization import RandomizationResult, randomization_test  # noqa: F401
    from ._token_perturbation import token_deletion, token_insertion  # noqa: F401
    from .datasets import AuditRun, run  # noqa: F401

__getattr__, __dir__ = _namespace(
    __name__,
    exports={"AuditRun": ".datasets", "run": ".datasets"},
    records=("saliency.audit", "MetricRecord"),
    submodules=(
        "curves_figures",
        "datasets",
        "imputation",
        "randomization_figures",
        "records",
        "similarity",
        "synthetic",
    ),
    registered=lambda name: getattr(_records.added(name), "function", None),
)
