"""The command's options read into the library's arguments, and checked in the command's words.

Importing this module imports no torch (the command's ``--help`` reads it); the functions that
need the library import it when called.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..methods import records as method_records
from . import words

if TYPE_CHECKING:
    from ..io import LoadedModel
    from ..targets import Classes


def build_method(word: str, args: argparse.Namespace, *, seed: int | None) -> Callable:
    """The method named ``word`` (a name or alias in the records), built from the command's
    options by its record; ``seed`` goes to methods that draw random numbers (None: the
    caller's, e.g. a run's per-shard seed)."""
    record = method_records.method(word)
    values = {name: getattr(args, name, None) for name in words.method_options()}
    return record.build(values, seed=seed)


def method_settings(word: str, args: argparse.Namespace) -> dict[str, object]:
    """The options that decide what method ``word`` computes, by flag, as it will use them."""
    record = method_records.method(word)
    found: dict[str, object] = {}
    for option in record.options:
        value = getattr(args, option.name, None)
        found[option.flag] = option.default if value is None else value
    if record.seed:
        found["--seed"] = args.seed
    return found


def parse_classes(text: str) -> Classes:
    """``all`` -> every class, ``top3`` -> the 3 highest, ``4`` or ``1,5,7`` -> those ids.

    Examples
    --------
    >>> parse_classes("all") is None, parse_classes("top2"), parse_classes("1,5")
    (True, TopK(k=2), [1, 5])
    """
    from ..targets import top_k

    text = text.strip().lower()
    if text == "all":
        return None
    if text.startswith("top") and text[3:].isdigit():
        if int(text[3:]) < 1:
            raise ValueError(f"--classes: topN needs N >= 1 (top1, top3, ...), got {text!r}")
        return top_k(int(text[3:]))
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        ids = []
    if len(set(ids)) != len(ids):
        raise ValueError(f"--classes: each class once, got {text!r}")
    if not ids:
        raise ValueError(
            f"--classes: expected 'all', 'topN' or class ids like '3' or '1,5,7', got {text!r}"
        )
    return ids


def read_class_names(path: str | None, loaded: LoadedModel) -> list[str] | None:
    if path is None:
        return list(loaded.class_names) if loaded.class_names else None
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise FileNotFoundError(f"--class-names: cannot read {path!r}: {error}") from error
    return [line.strip() for line in lines if line.strip()]


def _bundled_kind(model: str) -> str | None:
    return {b.name: b.kind for b in words.bundled()}.get(model)


def refuse_language_model(model: str, command: str, kind: str | None = None) -> None:
    """Refuse a bundled model that generates tokens: the commands explain classifiers
    (``kind``: the model's bundled kind when the caller has read it already)."""
    if (kind or _bundled_kind(model)) == "language":
        raise ValueError(
            f"MODEL: {model!r} is a language model (it generates tokens), and saliency {command} "
            "explains classifiers. Explain its generations in Python: "
            "saliency.explain_generation(model, prompts, max_new_tokens=...) (see the docs' "
            "Generation page)"
        )


def refuse_text_model(model: str, command: str) -> None:
    kind = _bundled_kind(model)
    refuse_language_model(model, command, kind)
    if kind == "text":
        raise ValueError(
            f"MODEL: {model!r} is a text model (token ids in), and saliency {command} explains "
            "images and feature vectors. Explain its tokens in Python: "
            "saliency.integrated_gradients(model, ids, layer=model.embedding, baseline=0), then "
            "saliency.token_scores and saliency.viz.tokens (see the docs' Text page)"
        )


def check_out(out: Path) -> None:
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                raise NotADirectoryError(f"--out: {str(folder)!r} is a file, not a folder")
            break


def check_free(paths: list[Path], overwrite: bool) -> None:
    taken = [str(p) for p in paths if p.exists()]
    if taken and not overwrite:
        raise FileExistsError(17, "exists", taken[0])


def read_memory(text: str | None) -> int | None:
    from ..engine import parse_memory

    try:
        return parse_memory(text)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"--max-memory: could not read {text!r}; expected a size such as 512MB, 2GB or 1.5GiB"
        ) from e


def check_classes(classes: Classes, text: str | None, n_out: int) -> None:
    """``--classes`` against the model's number of outputs, in the command's words."""
    from ..targets import Contrast, TopK

    if isinstance(classes, TopK) and classes.k > n_out:
        raise ValueError(f"--classes {text} asks for more classes than the model's {n_out} outputs")
    ids = classes if isinstance(classes, list) else []
    if isinstance(classes, Contrast):
        ids = [*classes.a, *classes.b]
    bad = [c for c in ids if not 0 <= c < n_out]
    if bad:
        raise ValueError(
            f"--classes {text}: {', '.join(map(str, bad))} out of range for the model's {n_out} "
            f"outputs (ids 0 to {n_out - 1})"
        )
