"""The names the command takes: methods and metrics from their records, the bundled models.

Everything here is read without importing torch (the records as declared, the bundled models'
file headers), so that ``--help`` prints at once and a misspelt name is refused, with the
nearest name, before anything heavy is loaded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .._records import suggest
from ..audit import records as metric_records
from ..methods import records as method_records
from ..methods.records import MethodRecord, Option

__all__ = [
    "Bundled",
    "bundled",
    "check_data",
    "check_method_options",
    "check_methods",
    "check_metrics",
    "check_model",
    "method_options",
]

_WEIGHTS = Path(__file__).resolve().parent.parent / "models" / "weights"
_FACTORY = re.compile(r"[\w.]+:\w+")  # package.module:factory, as saliency.io reads it


@dataclass(frozen=True)
class Bundled:
    """A bundled model (its name is also the name of its held-out data)."""

    name: str
    kind: str  # "images", "tabular", "text" or "language" (a model that generates tokens)
    classes: int


def bundled() -> list[Bundled]:
    """The bundled models, read from the headers of their weight files."""
    found = []
    for path in sorted(_WEIGHTS.glob("*.safetensors")):
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            meta = json.loads(f.read(size)).get("__metadata__", {})
        shape = json.loads(meta["input_shape"])
        vocabulary = json.loads(meta.get("vocabulary", "null"))
        kind = "text" if vocabulary else "images" if len(shape) == 3 else "tabular"
        if vocabulary and json.loads(meta["class_names"]) == vocabulary:
            kind = "language"  # its outputs are its vocabulary: it generates tokens
        found.append(Bundled(json.loads(meta["name"]), kind, len(json.loads(meta["class_names"]))))
    return found


def check_model(text: str) -> None:
    """Refuse a MODEL that is neither a bundled name, a file nor ``package.module:factory``."""
    names = [b.name for b in bundled()]
    if text in names or _FACTORY.fullmatch(text) or Path(text).exists():
        return
    raise ValueError(
        f"MODEL: {text!r} is neither a bundled model nor a file{suggest(text, names, listed=False)}"
        f" (bundled models: {', '.join(names)}; a file: TorchScript, .pt2, or "
        "package.module:factory with --weights)"
    )


def check_data(text: str) -> None:
    """Refuse a DATA that is neither a bundled data set nor a file or folder."""
    names = [b.name for b in bundled()]
    if text in names or Path(text).exists():
        return
    raise ValueError(
        f"DATA: {text!r} is neither a bundled data set nor a file or folder"
        f"{suggest(text, names, listed=False)} (bundled data sets: {', '.join(names)})"
    )


def check_methods(words: list[str]) -> list[MethodRecord]:
    """The record of each ``--method`` word (a name or an alias), or a one-line error."""
    records = method_records.declared()
    every = [w for r in records for w in r.words]
    found = []
    for word in words:
        record = next((r for r in records if word in r.words), None)
        if record is None:
            raise ValueError(f"--method: unknown method {word!r}{suggest(word, every)}")
        found.append(record)
    return found


def method_options() -> dict[str, tuple[Option, list[str]]]:
    """Every method option the command offers, by option name, with the methods that take it.

    Methods that share an option must agree on its type and default (their records say so).
    """
    found: dict[str, tuple[Option, list[str]]] = {}
    for record in method_records.declared():
        for option in record.options:
            if option.name in found:
                first, takers = found[option.name]
                if (first.type, first.default) != (option.type, option.default):
                    raise ValueError(
                        f"records: {option.flag} is {first.type.__name__} {first.default!r} for "
                        f"{takers[0]} but {option.type.__name__} {option.default!r} for "
                        f"{record.name}; methods that share an option must agree"
                    )
                takers.append(record.name)
            else:
                found[option.name] = (option, [record.name])
    return found


def check_method_options(records: list[MethodRecord], given: dict[str, object]) -> None:
    """Refuse an option none of the chosen methods takes, and a required one left out."""
    chosen = {r.name for r in records}
    for name, (option, takers) in method_options().items():
        if given.get(name) is not None and not chosen & set(takers):
            verb = "takes" if len(takers) == 1 else "take"
            raise ValueError(
                f"{option.flag}: only {' and '.join(takers)} {verb} it, not "
                f"{' or '.join(sorted(chosen))}; leave it out, or explain with --method "
                f"{takers[0]}"
            )
    for record in records:
        for option in record.options:
            option.check(given.get(option.name), record.name)


def check_metrics(words: list[str]) -> None:
    """Refuse a ``--metrics`` word that names no metric a run computes."""
    names = metric_records.names(in_runs=True, light=True)
    for word in words:
        if word not in names:
            record = metric_records.find(word, light=True)
            if record is not None and record.not_in_runs:
                raise ValueError(f"--metrics: {word!r} is not a per-sample metric: it "
                                 f"{record.not_in_runs}")  # fmt: skip
            raise ValueError(f"--metrics: unknown metric {word!r}{suggest(word, names)}")
