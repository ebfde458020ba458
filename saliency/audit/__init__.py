"""Model audits: can an explanation be trusted, for every class at once, over whole data sets.

Metrics are pure functions of a model, inputs and an :class:`saliency.Attribution`, batched over
every class; dataset runs shard, resume and scale out with ``torch.distributed``.
"""

# -- metrics (one module each) ---------------------------------------------------------------------
from ._captum_metrics import Infidelity, Sensitivity, infidelity, sensitivity_max
from ._class_sensitivity import ClassSensitivity, class_sensitivity
from ._completeness import Completeness, completeness
from ._margins import Margins, margins
from ._perturbation import PerturbationCurves, deletion, insertion, road
from ._randomization import RandomizationResult, randomization_test
from ._token_perturbation import token_deletion, token_insertion

# -- dataset runs ----------------------------------------------------------------------------------
from .datasets import AuditRun, run

__all__: list[str] = [
    "AuditRun",
    "ClassSensitivity",
    "Completeness",
    "Infidelity",
    "Margins",
    "PerturbationCurves",
    "RandomizationResult",
    "Sensitivity",
    "class_sensitivity",
    "completeness",
    "deletion",
    "infidelity",
    "insertion",
    "margins",
    "randomization_test",
    "road",
    "run",
    "sensitivity_max",
    "token_deletion",
    "token_insertion",
]
