"""What the report says about each metric: what it measures, which way is better, its random
baseline and its docs page.

Read from the metric's record where it has one (the records that declare each metric beside its
code), else from this module's table, so that a metric without a record still gets a line.

Examples
--------
>>> info = metric_info("deletion")
>>> info.better["auc"], info.reference, info.docs
('lower', ('auc', 'random_auc'), 'audit/deletion-insertion.md')
>>> metric_info("my_metric").measures
'A metric of saliency.audit.'
"""

from __future__ import annotations

from dataclasses import dataclass

from saliency.viz import html as shell

from . import metrics as metric_specs

__all__ = ["DOCS_URL", "MetricInfo", "docs_link", "faithful", "metric_info"]

# Where the documentation is served; pages are linked under it. None: the page is named, not
# linked (the project has no published address yet).
DOCS_URL: str | None = None


@dataclass(frozen=True)
class MetricInfo:
    """What the report says about a metric: one line each."""

    name: str
    measures: str
    better: dict  # column -> "lower" / "higher"
    baseline: str  # the reference a map has to beat, in words
    reference: tuple[str, str] | None  # (column, its random-order column), compared row by row
    docs: str  # the docs page, relative to the docs root: "audit/deletion-insertion.md"
    title: str  # the docs page's title


_FALLBACK = {
    "norms": MetricInfo(
        "norms", "The size of each map: the L1 and L2 norms of its values.", {},
        "None: a scale, not a quality.", None, "audit/runs.md", "Data-set audits",
    ),
    "deletion": MetricInfo(
        "deletion",
        "How fast the class's score falls when the features the map ranks first are removed "
        "first (area under the score curve).",
        {"auc": "lower", "normalized_auc": "lower"},
        "The same curve in a random order (random_auc): a faithful map falls faster.",
        ("auc", "random_auc"), "audit/deletion-insertion.md", "Deletion and insertion",
    ),
    "insertion": MetricInfo(
        "insertion",
        "How fast the class's score rises when the features the map ranks first are put back "
        "first into a blank input.",
        {"auc": "higher", "normalized_auc": "higher"},
        "The same curve in a random order (random_auc): a faithful map rises faster.",
        ("auc", "random_auc"), "audit/deletion-insertion.md", "Deletion and insertion",
    ),
    "road": MetricInfo(
        "road",
        "Deletion with removed pixels filled in from their neighbours, so that the model cannot "
        "react to the shape of a mask.",
        {"auc": "lower", "normalized_auc": "lower"},
        "The same curve in a random order (random_auc): a faithful map falls faster.",
        ("auc", "random_auc"), "audit/road.md", "ROAD",
    ),
    "class_sensitivity": MetricInfo(
        "class_sensitivity",
        "How alike a sample's maps of different classes are (rank correlation); alike maps do "
        "not explain why one class won.",
        {"mean_other": "lower", "off_diagonal": "lower"},
        "Identical maps give 1; maps of unrelated classes about 0.",
        None, "audit/class-sensitivity.md", "Class sensitivity",
    ),
    "completeness": MetricInfo(
        "completeness",
        "How far the attributions' sum falls short of the score's change from the baseline "
        "(relative gap; Integrated Gradients is complete in exact arithmetic).",
        {"abs_gap": "lower", "relative_gap": "lower"},
        "0 is exact; rows above the tolerance are counted in 'exceeds'.",
        None, "audit/completeness.md", "Completeness",
    ),
    "infidelity": MetricInfo(
        "infidelity",
        "How badly the map predicts the score's change under small random perturbations "
        "(mean squared error).",
        {"infidelity": "lower"}, "0: the map predicts every change exactly.",
        None, "audit/infidelity-sensitivity.md", "Infidelity and max-sensitivity",
    ),
    "sensitivity_max": MetricInfo(
        "sensitivity_max",
        "How much the map changes under small input perturbations (largest relative change).",
        {"sensitivity": "lower"}, "0: the map does not move.",
        None, "audit/infidelity-sensitivity.md", "Infidelity and max-sensitivity",
    ),
    "margins": MetricInfo(
        "margins",
        "First-order distance from the sample to each other class's decision boundary: which "
        "mistake is one small step away.",
        {}, "None: a property of the model near the sample.", None, "audit/margins.md", "Margins",
    ),
}  # fmt: skip


def metric_info(name: str) -> MetricInfo:
    """What the report says about metric ``name``: from the metric's record where it has one,
    else from this module's table, else a bare line."""
    record = getattr(metric_specs, "RECORDS", {}).get(name)
    if record is not None and all(
        hasattr(record, f) for f in ("measures", "better", "baseline", "docs")
    ):
        fallback = _FALLBACK.get(name)
        return MetricInfo(
            name,
            record.measures,
            dict(record.better),
            record.baseline,
            getattr(record, "reference", fallback.reference if fallback else None),
            record.docs,
            getattr(record, "title", fallback.title if fallback else name),
        )
    if name in _FALLBACK:
        return _FALLBACK[name]
    return MetricInfo(name, "A metric of saliency.audit.", {}, "Not stated.", None, "", name)


def docs_link(info: MetricInfo) -> str:
    name = shell.escape(info.name)
    if not info.docs:
        return name
    page = info.docs.removesuffix(".md") + "/"
    where = f"docs: {info.title}"
    if DOCS_URL:
        href = shell.escape(DOCS_URL + page)
        return f"{name}<div class='rp-doc'><a href='{href}'>{shell.escape(where)}</a></div>"
    return (
        f"{name}<div class='rp-doc' title='docs/{shell.escape(info.docs)}'>"
        f"{shell.escape(where)} (docs/{shell.escape(info.docs)})</div>"
    )


def faithful(metric: str) -> bool:
    return metric in {"deletion", "insertion", "infidelity", "road", "completeness"}
