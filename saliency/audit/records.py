"""The audit metrics, each one record beside its code, and the registry that collects them.

Each metric module ends in ``RECORDS = (MetricRecord(...), ...)``: the metric's name and
function, its result's columns and which way each is better, its random baseline, what it
fits (what it needs of a method's Attribution, how many classes per sample, which inputs), a
one-line explanation and its docs page. ``saliency.audit``'s namespace, :func:`run`, its fit
checks, the command and the HTML report read these records; nothing else lists metrics.

A new metric is one module in this package (its math and its record), its test and its docs
page. A metric defined elsewhere joins through :func:`register`.

This module imports no torch: the command reads the records to print ``--help`` quickly.

Examples
--------
>>> r = metric("deletion")
>>> r.columns["auc"], r.random["auc"], r.doc
('lower', 'random_auc', 'audit/deletion-insertion.md')
>>> r.needs, metric("completeness").needs
(('input_maps',), ('delta',))
>>> metric("road").better({"order": "lerf"})["auc"]
'higher'
>>> "randomization_test" in names() and "randomization_test" not in names(in_runs=True)
True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .._records import Name, Registry, suggest

__all__ = [
    "INPUTS",
    "ROWS",
    "MetricRecord",
    "added",
    "declared",
    "find",
    "metric",
    "metrics",
    "names",
    "register",
    "registered",
    "unregister",
]

# How many rows (classes) per sample a metric needs, and which inputs it can perturb.
ROWS: dict[str, str] = {
    "any": "any number of classes per sample",
    "several": "2 or more classes per sample",
    "all": "every class of the model (classes=None)",
}
INPUTS: dict[str, str] = {
    "any": "any inputs",
    "numbers": "inputs with values in between, which it perturbs (not token ids)",
    "images": "images [C, H, W]",
}


@dataclass(frozen=True, kw_only=True)
class MetricRecord:
    """One metric's record.

    ``function`` is the metric (called with the arguments its signature names: ``model``,
    ``x``, ``attribution``, ``method``, ``labels``, ``output``, ``max_memory``, ``seed``); in
    the records :func:`declared` returns it is the function's name only. ``result`` is the type
    it returns. ``columns`` maps each field of the result that a data-set run keeps (one value
    per sample and class, or per sample) to the direction that is better, ``"lower"``,
    ``"higher"`` or None; ``directions``, when given, computes them from the metric's options
    instead (ROAD's LeRF reverses MoRF). ``random`` maps a column to the column holding the
    same measure for a random explanation, the baseline to beat. ``needs`` lists what it needs
    of a method's Attribution (keys of :data:`saliency.methods.records.PROVIDES`); ``rows`` and
    ``inputs`` what it needs of the run (keys of :data:`ROWS` and :data:`INPUTS`).
    ``not_in_runs`` says why a data-set run cannot compute it per shard (None: it can).
    ``baseline`` says in words what a map has to beat (or what value is ideal), for the report;
    ``faithfulness`` marks the metrics that ask whether a map is faithful to the model, which the
    report lists and sorts by first.
    """

    name: str
    function: Callable
    explanation: str  # one line: what it measures
    doc: str  # its docs page, relative to docs/
    columns: Mapping[str, str | None]
    result: type | None = None
    random: Mapping[str, str] = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    rows: str = "any"
    inputs: str = "any"
    directions: Callable[[Mapping[str, object]], Mapping[str, str | None]] | None = None
    not_in_runs: str | None = None
    baseline: str = ""
    faithfulness: bool = False

    def __post_init__(self) -> None:
        for column, direction in self.columns.items():
            if direction not in ("lower", "higher", None):
                raise ValueError(
                    f"columns: {self.name}.{column} is better {direction!r}; expected 'lower', "
                    "'higher' or None"
                )
        unknown = sorted({*self.random, *self.random.values()} - set(self.columns))
        if unknown:
            raise ValueError(f"random: {unknown} are not columns of {self.name}")
        if self.rows not in ROWS or self.inputs not in INPUTS:
            raise ValueError(
                f"rows, inputs: expected one of {list(ROWS)} and {list(INPUTS)}, got "
                f"{self.rows!r} and {self.inputs!r}"
            )

    @property
    def words(self) -> tuple[str, ...]:
        return (self.name,)

    def better(self, options: Mapping[str, object] | None = None) -> dict[str, str]:
        """Each column's better direction, for the metric's ``options``; columns without one
        are left out."""
        # (a declared record holds the name of its directions function, not the function)
        found = self.directions(dict(options or {})) if callable(self.directions) else self.columns
        return {column: d for column, d in found.items() if d is not None}


def _light(fields: dict) -> MetricRecord:
    fields = dict(fields)
    fields.setdefault("function", Name(fields["name"]))
    return MetricRecord(**fields)


_REGISTRY = Registry("saliency.audit", MetricRecord, _light)


def metrics() -> list[MetricRecord]:
    """Every metric's record (importing the metric modules), then those registered."""
    return _REGISTRY.imported()


def declared() -> list[MetricRecord]:
    """The records as declared, without importing the metric modules (``function`` is the
    function's name), then those registered; for the command's ``--help``."""
    return _REGISTRY.declared()


def names(*, in_runs: bool = False, light: bool = False) -> list[str]:
    """Every metric's name; ``in_runs``: only those a data-set run computes. ``light`` reads
    the declarations, not the modules."""
    found = declared() if light else metrics()
    return [r.name for r in found if not (in_runs and r.not_in_runs)]


def find(name: str, *, light: bool = False) -> MetricRecord | None:
    """The record of the metric ``name``, or None."""
    return _REGISTRY.find(name, light=light)


def metric(name: str, *, light: bool = False) -> MetricRecord:
    """The record of the metric ``name``, or a clear error with the nearest names.

    The report reads ``explanation``, ``better()``, ``random`` and ``doc`` from here.
    """
    record = find(name, light=light)
    if record is None:
        raise ValueError(f"metrics: unknown metric {name!r}{suggest(name, names(light=light))}")
    return record


def register(record: MetricRecord) -> MetricRecord:
    """Add a metric defined outside this package: ``saliency.audit``, :func:`run`, the command
    and the report find it as they find the package's own. Its name must be new."""
    return _REGISTRY.register(record)


def added(name: str) -> MetricRecord | None:
    """The record added with :func:`register` under ``name``, or None."""
    return _REGISTRY.added.get(name)


def unregister(name: str) -> None:
    """Remove a metric added with :func:`register`."""
    _REGISTRY.unregister(name)


def registered(record: MetricRecord):
    """:func:`register` for the duration of a ``with`` block."""
    return _REGISTRY.registered(record)
