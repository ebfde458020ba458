"""The top of the report: what was run, in words, and the confusion matrix; and the small
text helpers every part of the report uses.

Examples
--------
>>> classes_text({"top_k": 3}, 10, None), classes_text(None, 10, None)
('the 3 highest-scoring classes of each sample', 'every class of the model (10)')
>>> output_text("logits")
"logits (the model's raw outputs)"
"""

from __future__ import annotations

import json
import math

from saliency.viz import html as shell
from saliency.viz.labels import class_label

__all__ = [
    "anchor",
    "classes_text",
    "confusion",
    "contents",
    "fmt",
    "header",
    "label",
    "output_text",
]


def header(manifest: dict, summary: dict, names) -> str:
    """The facts of the run as sentences in a table, and the samples it skipped."""
    config, data = manifest["config"], manifest["data"]
    n, explained, skipped = summary["samples"], summary["explained"], len(summary["skipped"])
    counts = summary.get("predicted_counts") or []
    shape = "\u00d7".join(str(s) for s in data["shape"])
    dtype = str(data["dtype"]).removeprefix("torch.")
    strategies = manifest.get("strategy") or {}
    facts = [
        ("Model", f"{manifest['model']['type']} (fingerprint {_short(manifest['model'])})"),
        (
            "Data",
            f"{n} samples of shape {shape} ({dtype}), "
            + ("with labels" if data.get("labelled") else "without labels"),
        ),
        (
            "Explained",
            f"{explained} of {n} samples"
            + (f"; {skipped} skipped (listed below)" if skipped else " (none skipped)"),
        ),
    ]
    if summary.get("accuracy") is not None:
        right = sum(row[i] for i, row in enumerate(summary.get("confusion", [])) if i < len(row))
        facts.append(("Accuracy", f"{summary['accuracy']:.1%} ({right} of {explained} correct)"))
    facts += [
        (
            "Methods",
            ", ".join(
                m + (f" (engine strategy: {strategies[m]})" if strategies.get(m) else "")
                for m in config["methods"]
            ),
        ),
        ("Classes explained", classes_text(config["classes"], len(counts), names)),
        ("Scores explained", output_text(config["output"])),
        ("Metrics", _metrics_text(config)),
        (
            "Settings",
            f"batch size {config['batch_size']}, seed {config['seed']}, memory budget "
            + (_bytes(config["max_memory"]) if config.get("max_memory") else "none"),
        ),
        ("Software", ", ".join(f"{k} {v}" for k, v in manifest["versions"].items())),
    ]
    rows = "".join(
        f"<tr><th>{shell.escape(k)}</th><td>{shell.escape(v)}</td></tr>" for k, v in facts
    )
    skipped_list = ""
    if summary["skipped"]:
        items = "".join(
            f"<li>sample {s['index']}: {shell.escape(s['reason'])}</li>"
            for s in summary["skipped"][:50]
        )
        more = len(summary["skipped"]) - 50
        extra = f"<li>and {more} more (summary.json)</li>" if more > 0 else ""
        skipped_list = (
            f"<details><summary>Skipped samples ({len(summary['skipped'])})</summary>"
            f"<ul>{items}{extra}</ul></details>"
        )
    return (
        f"<header><h1>Audit report</h1><table class='rp-facts'>{rows}</table>"
        f"{skipped_list}</header>"
    )


def contents(methods: list[str]) -> str:
    links = "".join(f"<a href='#{anchor(m)}'>{shell.escape(m)}</a>" for m in methods)
    return f"<nav class='rp-nav'>Jump to: <a href='#confusion'>confusion matrix</a>{links}</nav>"


def classes_text(classes: object, n_outputs: int, names) -> str:
    if classes is None:
        return f"every class of the model ({n_outputs})" if n_outputs else "every class"
    if classes == "label":
        return "each sample's label"
    if isinstance(classes, int):
        return f"class {label(classes, names)}"
    if isinstance(classes, list):
        return "classes " + ", ".join(label(c, names) for c in classes)
    if isinstance(classes, dict) and "top_k" in classes:
        k = classes["top_k"]
        return f"the {k} highest-scoring classes of each sample" if k > 1 else "the predicted class"
    if isinstance(classes, dict) and "contrast" in classes:
        a, b = classes["contrast"]
        pairs = ", ".join(
            f"{label(i, names)} \u2212 {label(j, names)}" for i, j in zip(a, b, strict=True)
        )
        return f"contrasts {pairs}"
    return json.dumps(classes)


def output_text(output: object) -> str:
    known = {
        "logits": "logits (the model's raw outputs)",
        "softmax": "softmax probabilities",
        "log_softmax": "log-softmax (log-probabilities)",
    }
    if isinstance(output, str):
        return known.get(output, output)
    if isinstance(output, dict) and "callable" in output:
        return f"the outputs through {output['callable']}"
    return json.dumps(output)


def _metrics_text(config: dict) -> str:
    options = config.get("metric_options") or {}
    parts = []
    for method, names in config["metrics"].items():
        shown = []
        for name in names:
            extra = options.get(name)
            if extra:
                name += " (" + ", ".join(f"{k}={v}" for k, v in extra.items()) + ")"
            shown.append(name)
        parts.append(f"{method}: {', '.join(shown) or 'none'}")
    return "; ".join(parts)


def confusion(summary: dict, names) -> str:
    head = "<section id='confusion'>"
    matrix = summary.get("confusion")
    if matrix is None:
        counts = summary["predicted_counts"]
        cells = "".join(
            f"<tr><th>{shell.escape(label(c, names))}</th><td>{n}</td></tr>"
            for c, n in enumerate(counts)
        )
        return (
            f"{head}<h2>Predictions</h2><p class='rp-note'>No labels: samples per predicted "
            f"class.</p><table><tr><th>class</th><th>samples</th></tr>{cells}</table></section>"
        )
    if len(matrix) > 50:
        return (
            f"{head}<h2>Confusion matrix</h2><p class='rp-note'>Over 50 classes: see "
            "summary.json.</p></section>"
        )
    top = max(1, max(max(r) for r in matrix))
    cols = "".join(f"<th>{shell.escape(label(c, names))}</th>" for c in range(len(matrix)))
    body = ""
    for truth, row in enumerate(matrix):
        cells = ""
        for pred, n in enumerate(row):
            kind = "rp-diag" if truth == pred else ("rp-off" if n else "")
            shade = f" style='--share:{n / top:.3f}'" if n else ""
            cells += f"<td class='{kind}'{shade}>{n or ''}</td>"
        body += f"<tr><th>{shell.escape(label(truth, names))}</th>{cells}</tr>"
    return (
        f"{head}<h2>Confusion matrix</h2><p class='rp-note'>Rows: true class; columns: predicted "
        "class. Off-diagonal cells are mistakes.</p>"
        f"<table class='rp-confusion'><tr><th>true \\ predicted</th>{cols}</tr>{body}</table>"
        "</section>"
    )


def _short(model: dict) -> str:
    fingerprint = str(model.get("fingerprint", ""))
    return fingerprint.split(":")[-1][:12] if fingerprint else "none"


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def anchor(method: str) -> str:
    return "m-" + "".join(ch if ch.isalnum() else "-" for ch in method)


def label(c: int, names) -> str:
    try:
        return class_label(c, names)
    except ValueError:
        return str(c)


def fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)
