"""``saliency audit``: a whole data set explained and measured through ``saliency.audit.run``."""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

from .. import models
from ..audit import records as metric_records
from ..engine import outputs
from ..io import LoadedModel, load_model
from ..methods import Method
from ..methods import records as method_records
from ..models.data import TEXT_DATASETS
from .console import Interrupted, say
from .options import (
    build_method,
    check_classes,
    check_out,
    parse_classes,
    read_class_names,
    read_memory,
    refuse_language_model,
)


def _token_strings(name: str):
    """The bundled text data's token strings, for the report (None for other data)."""
    if name not in TEXT_DATASETS:
        return None
    return functools.partial(models.tokens, name)


def audit(args: argparse.Namespace) -> int:
    """Audit a data set with a model; see ``saliency audit --help``."""
    from ..audit import run
    from ..audit.datasets.files import open_data

    out = Path(args.out)
    check_out(out)
    refuse_language_model(args.model, "audit")
    loaded = load_model(args.model, weights=args.weights, trust_pickle=args.trust_pickle)
    names = read_class_names(args.class_names, loaded)
    mean = args.mean if args.mean is not None else loaded.mean
    std = args.std if args.std is not None else loaded.std
    bundled = args.data in models.available() and not Path(args.data).exists()
    data = open_data(
        args.data,
        shape=loaded.input_shape,
        size=tuple(args.size) if args.size else None,
        channels=args.channels,
        mean=None if bundled else mean,
        std=None if bundled else std,
        class_names=names,
    )
    if bundled:  # normalised for the bundled model of that name: drawn with its statistics
        info = models.load(args.data)[1]
        mean, std = info.mean, info.std
    names = names or data.class_names
    classes = "label" if args.classes.strip().lower() == "label" else parse_classes(args.classes)
    methods = {word: build_method(word, args, seed=None) for word in args.method}
    max_memory = read_memory(args.max_memory)
    _check_audit_classes(loaded, data, classes, args)
    metrics = None if args.metrics is None else _metrics_per_method(args.metrics, methods)
    say(
        f"Auditing {len(data.dataset)} samples of {args.data} with {', '.join(methods)} "
        f"(labels: {data.labels_from or 'none'}); results in {out}/"
    )
    try:
        result = run(
            loaded.model,
            data.dataset,
            out_dir=out,
            methods=methods,
            metrics=metrics,
            classes=classes,
            batch_size=args.batch_size,
            output=args.output,
            max_memory=max_memory,
            seed=args.seed,
            keep_values=args.keep_values,
            class_names=names,
            mean=mean,
            std=std,
            tokens=_token_strings(args.data) if bundled else None,
            report=not args.no_report,
            progress=args.progress,
            overwrite=args.overwrite,
        )
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted; {_shards_saved(out)} are saved in {out}/: run the same command again "
            "to resume"
        ) from None
    summary = result.summary
    accuracy = summary.get("accuracy")
    say(
        f"Audited {summary['explained']} of {summary['samples']} samples"
        + (f" (accuracy {accuracy:.1%})" if accuracy is not None else "")
        + f": {result.computed} shard(s) computed here, {result.resumed} resumed."
    )
    for method, entry in summary["methods"].items():
        for column, info in entry["columns"].items():
            stats = info["all"]
            if column == "score" or "mean" not in stats:
                continue
            if info.get("kind") == "flag":
                say(f"  {method} {column}: {stats['mean']:.1%} of {info['per']} rows")
                continue
            better = f"; {info['better']} is better" if "better" in info else ""
            say(
                f"  {method} {column}: mean {stats['mean']:.4g}, median {stats['median']:.4g}"
                f"{better}"
            )
    say(f"Summary: {out / 'summary.json'}; rows: {out / 'shards'}/*.jsonl")
    if result.report is not None:
        say(f"Report: {result.report}")
    if result.skipped:
        say(f"{len(result.skipped)} sample(s) could not be explained and were skipped:", err=True)
        for i, reason in sorted(result.skipped.items()):
            say(f"  {data.names[i]}: {data.errors.get(i, reason)}", err=True)
        return 1
    return 0


def _metrics_per_method(names: list[str], methods: dict[str, Method]) -> dict[str, list[str]]:
    """``--metrics`` for each ``--method`` it can measure, as the records say (completeness:
    integrated_gradients; margins: gradients); a metric that fits none of them is an error, one
    that fits some is said."""
    from ..audit.datasets.arguments import misfit
    from ..audit.datasets.methods import resolve

    specs = resolve(methods)
    chosen: dict[str, list[str]] = {spec.name: [] for spec in specs}
    for name in names:
        reasons = {spec.name: misfit(name, spec) for spec in specs}
        fits = [method for method, reason in reasons.items() if reason is None]
        why = next((reason for reason in reasons.values() if reason is not None), "")
        if not fits:
            raise ValueError(
                f"--metrics: {name!r} fits none of --method {' '.join(methods)}: {why}; add "
                f"--method {_fitting(name)} or leave {name} out"
            )
        if len(fits) < len(specs):
            say(f"{name}: measured for {', '.join(fits)} only; {why}")
        for method in fits:
            chosen[method].append(name)
    return chosen


def _fitting(metric: str) -> str:
    """A method whose record gives all that ``metric`` needs."""
    needs = set(metric_records.metric(metric).needs)
    return next((r.name for r in method_records.methods() if needs <= set(r.provides)), "...")


def _check_audit_classes(loaded: LoadedModel, data, classes, args) -> None:
    """``--classes`` against the model's outputs, on the first sample that has any."""
    if classes == "label":
        if not data.labelled:
            raise ValueError(f"--classes label: {args.data} has no labels")
        return
    for i in range(min(len(data.dataset), 8)):
        item = data.dataset[i]
        x = item[0] if isinstance(item, tuple | list) else item
        try:
            n_out = outputs(loaded.model, x[None], output=args.output).shape[1]
        except ValueError:
            continue  # an unreadable sample: the run names it
        except RuntimeError as error:
            last = str(error).strip().splitlines()[-1] if str(error).strip() else ""
            raise ValueError(
                f"MODEL: {loaded.source} failed on samples of shape {tuple(x.shape)} from "
                f"{args.data}: {last}. Check --size, --channels, --mean and --std."
            ) from error
        check_classes(classes, args.classes, n_out)
        return


def _shards_saved(out: Path) -> str:
    try:
        manifest = json.loads((out / "manifest.json").read_text())
        total = manifest["shards"]["count"]
        done = sum(
            int(b or a) - int(a) + 1
            for a, _, b in (p.partition("-") for p in manifest["complete"].split(",") if p)
        )
    except (OSError, ValueError, KeyError):
        return "no shards"
    return f"{done} of {total} shards"
