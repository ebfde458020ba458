"""What the report says about each metric: what it measures, which way is better, its random
baseline and its docs page, all read from the metric's record (:mod:`saliency.audit.records`).

Examples
--------
>>> info = metric_info("deletion")
>>> info.better["auc"], info.reference, info.docs
('lower', ('auc', 'random_auc'), 'audit/deletion-insertion.md')
>>> metric_info("my_metric").measures
'A metric without a record.'
"""

from __future__ import annotations

from dataclasses import dataclass

from saliency.audit import records
from saliency.viz import html as shell

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


def metric_info(name: str) -> MetricInfo:
    """What the report says about metric ``name``, from its record (a bare line without one)."""
    record = records.find(name)
    if record is None:
        return MetricInfo(name, "A metric without a record.", {}, "Not stated.", None, "")
    reference = next(iter(record.random.items()), None)
    return MetricInfo(
        name,
        _sentence(record.explanation),
        record.better(),
        _sentence(record.baseline) if record.baseline else "Not stated.",
        reference,
        record.doc,
    )


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def docs_link(info: MetricInfo) -> str:
    """The metric's name and its docs page: a link when :data:`DOCS_URL` is set, else named."""
    name = shell.escape(info.name)
    if not info.docs:
        return name
    path, _, anchor = info.docs.partition("#")
    page = path.removesuffix(".md") + "/" + (f"#{anchor}" if anchor else "")
    shown = shell.escape(f"docs/{info.docs}")
    if DOCS_URL:
        href = shell.escape(DOCS_URL + page)
        return f"{name}<div class='rp-doc'><a href='{href}'>{shown}</a></div>"
    return f"{name}<div class='rp-doc'>{shown}</div>"


def faithful(metric: str) -> bool:
    """Whether ``metric`` asks if a map is faithful to the model (its record says)."""
    record = records.find(metric)
    return record is not None and record.faithfulness
