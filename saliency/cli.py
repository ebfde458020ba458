"""The ``saliency`` command: ``demo``, ``explain`` and ``audit`` (the only module that prints).

Examples
--------
  saliency demo --out saliency-out
  saliency explain digits digit.png --method ig --classes top3 --out maps/
  saliency explain model.pt2 photos/ --method smoothgrad --classes all --size 224 224 \\
      --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 --class-names classes.txt --out maps/
  saliency audit digits digits --out audit/
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from . import models, viz
from ._atomic import atomic_write
from .attribution import Attribution
from .engine import outputs, parse_memory
from .io import InputError, LoadedModel, Sample, find_inputs, iter_inputs, load_model
from .methods import Method, gradients, integrated_gradients, smoothgrad
from .models.data import TEXT_DATASETS
from .targets import Classes, Contrast, TopK, top_k
from .viz.labels import file_stem

# The one table of methods: each name, and how the command builds it from its options. Both
# explain and audit take --method from here. A seed of None is left to the caller (audit derives
# one per shard).
METHODS: dict[str, Callable[[argparse.Namespace], Method]] = {
    "gradients": lambda args: gradients,
    "smoothgrad": lambda args: functools.partial(
        smoothgrad,
        n_samples=args.n_samples,
        noise=args.noise,
        **({} if args.seed is None else {"seed": args.seed}),
    ),
    "ig": lambda args: functools.partial(integrated_gradients, steps=args.steps),
}
_DEFAULT_CLASSES = object()  # the 3 highest-scoring classes, or all when there are at most 3
# Python argument names in the library's messages, and the command's options for them.
_OPTION_WORDS = [
    (re.compile(r"\boverwrite=True\b"), "--overwrite"),
    (re.compile(r"\bmax_memory(=|: )"), "--max-memory "),
    (re.compile(r"\bmax_memory\b"), "--max-memory"),
    (re.compile(r"^out_dir: "), "--out: "),
    (re.compile(r"^batch_size: "), "--batch-size: "),
    (re.compile(r"^classes(=|: )"), "--classes "),
    (re.compile(r"\bclasses='label'"), "--classes label"),
    (re.compile(r"\bclasses=None\b"), "--classes all"),
    (re.compile(r"\bclasses=top_k\((\d+)\)"), r"--classes top\1"),
    (re.compile(r"\bclasses=\[([\d, ]+)\]"), lambda m: "--classes " + m[1].replace(" ", "")),
    (re.compile(r"\bclasses=(\d+)\b"), r"--classes \1"),
    (re.compile(r"^metrics: "), "--metrics: "),
    (re.compile(r"^methods: "), "--method: "),
]


class _Interrupted(Exception):
    """Ctrl-C, with one line saying what was saved and how to go on."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 some inputs failed, 2 usage, 130
    interrupted)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except _Interrupted as note:
        _say(f"saliency {args.command}: {note}", err=True)
        return 130
    except KeyboardInterrupt:
        _say(f"saliency {args.command}: interrupted", err=True)
        return 130
    except FileExistsError as error:
        _say(
            f"saliency {args.command}: error: {error.filename or error} exists; use --overwrite "
            "to replace it",
            err=True,
        )
        return 2
    except (OSError, ValueError, TypeError, MemoryError, RuntimeError) as error:
        _say(f"saliency {args.command}: error: {_option_words(str(error))}", err=True)
        return 2


def _option_words(message: str) -> str:
    """The library's message with its Python argument names replaced by the command's options.

    Examples
    --------
    >>> _option_words("out_dir: 'a' holds a run; pass overwrite=True to delete it")
    "--out: 'a' holds a run; pass --overwrite to delete it"
    >>> _option_words("metrics: 'margins' needs classes=None, but classes=[1, 5] gives 2")
    "--metrics: 'margins' needs --classes all, but --classes 1,5 gives 2"
    """
    for pattern, option in _OPTION_WORDS:
        message = pattern.sub(option, message)
    return message


def _say(text: str, *, err: bool = False) -> None:
    # Under torchrun every rank runs the command; one of them speaks.
    if os.environ.get("RANK", "0") == "0":
        print(text, file=sys.stderr if err else sys.stdout)


# -- demo -----------------------------------------------------------------------------------------


def demo(args: argparse.Namespace) -> int:
    """All-class gradients, SmoothGrad and IG for held-out digits; overlays, a summary, the gap."""
    start = time.perf_counter()
    out = Path(args.out)
    _check_out(out)
    if args.samples < 1:
        raise ValueError(f"--samples: expected a positive number of digits, got {args.samples}")
    out.mkdir(parents=True, exist_ok=True)
    model, info = models.load("digits")
    x, labels = models.held_out("digits", n=args.samples)
    # Pixel 0 (black) in the model's normalised space: the natural IG baseline for digits.
    black = (0.0 - info.mean[0]) / info.std[0]
    runs = {
        "gradients": lambda: gradients(model, x),
        "smoothgrad": lambda: smoothgrad(model, x, n_samples=50, noise=0.15, seed=0),
        "ig": lambda: integrated_gradients(model, x, baseline=black, steps=50),
    }
    images = viz.enlarge(x * info.std[0] + info.mean[0])
    results: dict[str, Attribution] = {}
    files: list[Path] = []
    for name, run in runs.items():
        results[name] = attr = run()
        files += viz.save_overlays(
            attr,
            images,
            out / name,
            class_names=info.class_names,
            overwrite=args.overwrite,
            sign="all",
            value_range=(0.0, 1.0),
        )
    summary = out / "summary.png"
    _check_free([summary], args.overwrite)
    _save_image(_summary(results, images, info.class_names), summary)
    elapsed = time.perf_counter() - start

    correct = int((results["ig"].outputs.argmax(1) == labels).sum())
    print(f"Explained {len(x)} held-out digits ({correct} classified correctly) for all 10 classes")
    print("with vanilla gradients, SmoothGrad (50 samples) and Integrated Gradients (50 steps).")
    with torch.no_grad():
        change = model(x) - model(torch.full_like(x, black))
    print("\nIntegrated Gradients completeness gap per class, |sum(attr) - (F(x) - F(baseline))|:")
    _print_gap(results["ig"], change, info.class_names)
    print(f"\nWrote {len(files)} overlays under {out}/{{gradients,smoothgrad,ig}}/")
    print(f"Summary grid (samples x classes, per method): {summary}")
    print(f"Done in {elapsed:.1f} s.")
    return 0


def _summary(results: dict[str, Attribution], images: torch.Tensor, names) -> object:
    tiles, labels = [], []
    for b in range(min(4, images.shape[0])):
        for method, attr in results.items():
            for k, class_id in enumerate(attr.classes[b].tolist()):
                score = float(attr.outputs[b, class_id])
                tiles.append(viz.overlay(images[b], attr.values[b, k], sign="all"))
                labels.append(f"{method} {names[class_id]}: {score:.1f}")
    return viz.grid(tiles, rows=len(tiles) // results["ig"].values.shape[1], labels=labels)


def _print_gap(attr: Attribution, change: torch.Tensor, names) -> None:
    gap = attr.delta.abs()  # [B, K]; classes are all C in order
    relative = gap / change.abs().clamp_min(1e-12)
    for k in range(attr.values.shape[1]):
        print(
            f"  class {names[k]}: max {gap[:, k].max():.2e}, "
            f"max relative to |F(x) - F(baseline)| {relative[:, k].max():.2%}"
        )


# -- explain --------------------------------------------------------------------------------------


def explain(args: argparse.Namespace) -> int:
    """Explain inputs with a model; see ``saliency explain --help``."""
    out = Path(args.out)
    _refuse_text_model(args.model, "explain")
    loaded = load_model(args.model, weights=args.weights, trust_pickle=args.trust_pickle)
    names = _class_names(args.class_names, loaded)
    classes = parse_classes(args.classes) if args.classes is not None else _DEFAULT_CLASSES
    method = METHODS[args.method](args)
    max_memory = _memory(args.max_memory)
    mean = args.mean if args.mean is not None else loaded.mean
    std = args.std if args.std is not None else loaded.std
    _check_out(out)
    size = tuple(args.size) if args.size else None
    if size and loaded.input_shape and len(loaded.input_shape) == 3:
        if size != tuple(loaded.input_shape[1:]):
            raise ValueError(
                f"--size {size[0]} {size[1]}: {loaded.source} takes inputs of shape "
                f"{tuple(loaded.input_shape)}; leave --size out to use its own"
            )
    folder = _Outputs(out, _settings(args, loaded, names, mean, std), overwrite=args.overwrite)
    paths, errors = find_inputs(args.inputs, recursive=args.recursive)
    stream = iter_inputs(
        paths,
        size=size,
        channels=args.channels,
        mean=mean,
        std=std,
        shape=loaded.input_shape,
        key=args.key,
    )
    bar = _progress(len(paths), args.progress)
    index, written, reused = 0, [], 0
    try:
        for batch in _batches(stream, args.batch_size, errors):
            x = torch.stack([s.tensor for s in batch])
            with _model_errors(loaded, x, batch):
                batch, x = _screened(loaded, x, batch, args.output, errors, index > 0)
                if batch and (classes is _DEFAULT_CLASSES or index == 0):  # settled once
                    n_out = outputs(loaded.model, x[:1], output=args.output).shape[1]
                    if classes is _DEFAULT_CLASSES:
                        classes = top_k(3) if n_out > 3 else None
                    _check_classes(classes, args.classes, n_out)
            if not batch:
                continue
            if folder.complete(index, [s.name for s in batch]):
                reused += len(batch)
            else:
                with _model_errors(loaded, x, batch):
                    attr = method(
                        loaded.model, x, classes, output=args.output, max_memory=max_memory
                    )
                written += _write_batch(
                    attr, batch, x, index, loaded, names, args, mean, std, folder
                )
            index += len(batch)
            bar.update(len(batch))
    except KeyboardInterrupt:
        raise _Interrupted(
            f"interrupted; the outputs of {index} input(s) are saved in {out}/: run the same "
            "command again to resume"
        ) from None
    finally:
        bar.close()
    again = f" ({reused} already done, kept)" if reused else ""
    print(
        f"Explained {index} input(s) with {args.method}{again}; wrote {len(written)} file(s) "
        f"to {out}/"
    )
    if errors:
        print(f"{len(errors)} input(s) failed and were skipped:", file=sys.stderr)
        for err in errors:
            print(f"  {err.path}: {err.message}", file=sys.stderr)
        return 1
    return 0


def _batches(stream, size: int, errors: list[InputError]) -> Iterator[list[Sample]]:
    """Lists of up to ``size`` samples of one shape; inputs that failed go to ``errors``."""
    batch: list[Sample] = []
    first_shape = None
    for item in stream:
        if not isinstance(item, InputError):
            # One batch needs one shape: the first input sets it, the others must match.
            first_shape = first_shape or tuple(item.tensor.shape)
            if tuple(item.tensor.shape) != first_shape:
                item = InputError(
                    item.path,
                    f"has shape {tuple(item.tensor.shape)} after loading, unlike the first "
                    f"input's {first_shape}; pass --size H W and --channels N to make them agree",
                )
        if isinstance(item, InputError):
            errors.append(item)
            _report(item)
            continue
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _screened(loaded, x, batch, output, errors, whole_batch_may_fail):
    """The batch without the inputs that cannot be explained (each named, by file and row)."""
    from .audit.datasets.screen import screen

    keep, problems = screen(
        loaded.model, x, output=output, whole_batch_may_fail=whole_batch_may_fail
    )
    for j, why in problems.items():
        err = InputError(Path(batch[j].name), why)
        errors.append(err)
        _report(err)
    return [s for s, k in zip(batch, keep.tolist(), strict=True) if k], x[keep.to(x.device)]


@contextlib.contextmanager
def _model_errors(loaded: LoadedModel, x: torch.Tensor, batch: list[Sample]) -> Iterator[None]:
    """Report a model that refuses its inputs as a usage error, not a traceback."""
    try:
        yield
    except RuntimeError as error:
        last = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"MODEL: {loaded.source} failed on inputs of shape {tuple(x.shape[1:])} "
            f"(e.g. {batch[0].name}): {last}. Check --size, --channels, --mean and --std."
        ) from error


class _Outputs:
    """The output folder of ``explain``: which batches are complete, made with these settings.

    ``explain.json`` records the settings; each batch's ``inputs_NNNNNN.json``, written after its
    pictures, lists its inputs and files and marks it complete. A run with the same settings
    skips complete batches and may replace what an interrupted one left; other settings are
    refused (naming what differs) unless ``--overwrite``.
    """

    NAME = "explain.json"

    def __init__(self, out: Path, settings: dict, *, overwrite: bool) -> None:
        from .audit.datasets.manifest import differences, digest

        self.out, self.settings, self.overwrite = out, settings, overwrite
        self.digest = digest(settings)
        self.resuming = False
        try:
            before = json.loads((out / self.NAME).read_text())
        except (OSError, ValueError):
            return
        if before.get("digest") == self.digest:
            self.resuming = True
        elif not overwrite:
            changed = "; ".join(differences(before.get("settings", {}), settings))
            raise ValueError(
                f"--out {out}: holds outputs made with other settings ({changed}); run it as "
                "before to resume, use --overwrite to replace them, or choose another --out"
            )

    @property
    def may_replace(self) -> bool:
        return self.resuming or self.overwrite

    def begin(self) -> None:
        """Record the settings, before the first file of a batch is written."""
        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.out / self.NAME, "w") as f:
            json.dump({"digest": self.digest, "settings": self.settings}, f, indent=1)
        self.resuming = True

    def complete(self, start: int, names: list[str]) -> bool:
        """Whether the batch starting at ``start`` was written whole, for these inputs."""
        if not self.resuming or self.overwrite:
            return False
        try:
            record = json.loads((self.out / f"inputs_{start:06d}.json").read_text())
        except (OSError, ValueError):
            return False
        return (
            isinstance(record, dict)
            and record.get("settings") == self.digest
            and [r.get("input") for r in record.get("inputs", [])] == names
            and all((self.out / f).exists() for f in record.get("files", []))
        )


def _settings(args, loaded: LoadedModel, names, mean, std) -> dict:
    """What decides explain's outputs, by option (a changed one is named when refused)."""
    from .audit.datasets.manifest import fingerprint

    method_options = {
        "gradients": {},
        "smoothgrad": {"--n-samples": args.n_samples, "--noise": args.noise, "--seed": args.seed},
        "ig": {"--steps": args.steps},
    }[args.method]
    return {
        "MODEL": args.model,
        "model fingerprint": fingerprint(loaded.model),
        "--weights": args.weights,
        "--method": args.method,
        **method_options,
        "--classes": args.classes,
        "--output": args.output,
        "--size": args.size,
        "--channels": args.channels,
        "--mean": None if mean is None else list(mean),
        "--std": None if std is None else list(std),
        "--key": args.key,
        "--class-names": names,
        "--top": args.top,
        "--batch-size": args.batch_size,
        "--save-values": args.save_values,
    }


def _write_batch(attr, batch: list[Sample], x, start, loaded, names, args, mean, std, folder):
    """Overlays (or feature charts), the optional raw values, then the batch's JSON index."""
    out = Path(args.out)
    index_file = out / f"inputs_{start:06d}.json"
    planned = [index_file]
    if args.save_values:
        planned.append(out / f"values_{start:06d}.safetensors")
    images = x.ndim == 4  # images, or image-shaped tensors drawn under their own (undone) values
    if images:
        planned += [
            out / f"{file_stem(start + b, c, names)}.png"
            for b in range(len(batch))
            for c in attr.classes[b].tolist()
        ]
    else:
        planned += [out / f"{start + b}_features.png" for b in range(len(batch))]
    _check_free(planned, folder.may_replace)
    folder.begin()
    written: list[Path] = []
    if images:
        written += viz.save_overlays(
            attr,
            viz.enlarge(_pictures(batch, x, mean, std)),
            out,
            class_names=names,
            start=start,
            overwrite=True,  # checked above, with the command's words
            sign="all",
            value_range=(0.0, 1.0),
        )
    else:
        feature_names = loaded.feature_names or [str(i) for i in range(x[0].numel())]
        for b in range(len(batch)):
            path = out / f"{start + b}_features.png"
            fig = viz.plot_features(attr, feature_names, top=args.top, sample=b, class_names=names)
            with atomic_write(path) as f:
                fig.savefig(f, format="png", dpi=100)
            written.append(path)
    if args.save_values:
        attr.save(planned[1])
        written.append(planned[1])
    record = {
        "settings": folder.digest,
        "inputs": [
            {
                "index": start + b,
                "input": s.name,
                "classes": [names[c] if names else c for c in attr.classes[b].tolist()],
                "scores": [float(attr.outputs[b, c]) for c in attr.classes[b].tolist()],
            }
            for b, s in enumerate(batch)
        ],
        "files": [p.name for p in written],
    }
    with atomic_write(index_file, "w") as f:
        json.dump(record, f, indent=1)
    return [*written, index_file]


# -- audit ----------------------------------------------------------------------------------------


def audit(args: argparse.Namespace) -> int:
    """Audit a data set with a model; see ``saliency audit --help``."""
    from .audit import run
    from .audit.datasets.files import open_data

    out = Path(args.out)
    _check_out(out)
    _refuse_text_model(args.model, "audit")
    loaded = load_model(args.model, weights=args.weights, trust_pickle=args.trust_pickle)
    names = _class_names(args.class_names, loaded)
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
    methods = {
        name: METHODS[name](argparse.Namespace(**{**vars(args), "seed": None}))
        for name in args.method
    }
    max_memory = _memory(args.max_memory)
    _check_audit_classes(loaded, data, classes, args)
    metrics = None if args.metrics is None else _metrics_per_method(args.metrics, methods)
    _say(
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
            report=not args.no_report,
            progress=args.progress,
            overwrite=args.overwrite,
        )
    except KeyboardInterrupt:
        raise _Interrupted(
            f"interrupted; {_shards_saved(out)} are saved in {out}/: run the same command again "
            "to resume"
        ) from None
    summary = result.summary
    accuracy = summary.get("accuracy")
    _say(
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
                _say(f"  {method} {column}: {stats['mean']:.1%} of {info['per']} rows")
                continue
            better = f"; {info['better']} is better" if "better" in info else ""
            _say(
                f"  {method} {column}: mean {stats['mean']:.4g}, median {stats['median']:.4g}"
                f"{better}"
            )
    _say(f"Summary: {out / 'summary.json'}; rows: {out / 'shards'}/*.jsonl")
    if result.report is not None:
        _say(f"Report: {result.report}")
    if result.skipped:
        _say(f"{len(result.skipped)} sample(s) could not be explained and were skipped:", err=True)
        for i, reason in sorted(result.skipped.items()):
            _say(f"  {data.names[i]}: {data.errors.get(i, reason)}", err=True)
        return 1
    return 0


# The method a metric that fits only some methods asks for, for the command's hint.
_METRIC_METHOD = {"completeness": "ig", "margins": "gradients"}


def _metrics_per_method(names: list[str], methods: dict[str, Method]) -> dict[str, list[str]]:
    """``--metrics`` for each ``--method`` it can measure (completeness: ig; margins: gradients);
    a metric that fits none of them is an error, one that fits some is said."""
    from .audit.datasets.arguments import misfit
    from .audit.datasets.methods import resolve

    specs = resolve(methods)
    chosen: dict[str, list[str]] = {spec.name: [] for spec in specs}
    for name in names:
        reasons = {spec.name: misfit(name, spec) for spec in specs}
        fits = [method for method, reason in reasons.items() if reason is None]
        why = next((reason for reason in reasons.values() if reason is not None), "")
        if not fits:
            raise ValueError(
                f"--metrics: {name!r} fits none of --method {' '.join(methods)}: {why}; add "
                f"--method {_METRIC_METHOD.get(name, '...')} or leave {name} out"
            )
        if len(fits) < len(specs):
            _say(f"{name}: measured for {', '.join(fits)} only; {why}")
        for method in fits:
            chosen[method].append(name)
    return chosen


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
        _check_classes(classes, args.classes, n_out)
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


def parse_classes(text: str) -> Classes:
    """``all`` -> every class, ``top3`` -> the 3 highest, ``4`` or ``1,5,7`` -> those ids.

    Examples
    --------
    >>> parse_classes("all") is None, parse_classes("top2"), parse_classes("1,5")
    (True, TopK(k=2), [1, 5])
    """
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


def _class_names(path: str | None, loaded: LoadedModel) -> list[str] | None:
    if path is None:
        return list(loaded.class_names) if loaded.class_names else None
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise FileNotFoundError(f"--class-names: cannot read {path!r}: {error}") from error
    return [line.strip() for line in lines if line.strip()]


# -- small helpers --------------------------------------------------------------------------------


def _refuse_text_model(model: str, command: str) -> None:
    if model in TEXT_DATASETS:
        raise ValueError(
            f"MODEL: {model!r} is a text model (token ids in), and saliency {command} explains "
            "images and feature vectors. Explain its tokens in Python: "
            "saliency.integrated_gradients(model, ids, layer=model.embedding, baseline=0), then "
            "saliency.token_scores and saliency.viz.tokens (see the docs' Text page)"
        )


def _pictures(batch: list[Sample], x: torch.Tensor, mean, std) -> torch.Tensor:
    """The pictures to draw overlays on, in [0, 1] at the model's input size."""
    if all(s.image is not None for s in batch):
        return _resize_like(
            [torch.from_numpy(s.image).permute(2, 0, 1).float() / 255 for s in batch], x
        )
    return viz.input_pictures(x, mean=mean, std=std)


def _resize_like(images: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    size = x.shape[-2:]
    return torch.stack(
        [
            torch.nn.functional.interpolate(i[None], size=tuple(size), mode="bilinear")[0]
            for i in images
        ]
    ).clamp(0, 1)


def _check_out(out: Path) -> None:
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                raise NotADirectoryError(f"--out: {str(folder)!r} is a file, not a folder")
            break


def _check_free(paths: list[Path], overwrite: bool) -> None:
    taken = [str(p) for p in paths if p.exists()]
    if taken and not overwrite:
        raise FileExistsError(17, "exists", taken[0])


def _memory(text: str | None) -> int | None:
    try:
        return parse_memory(text)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"--max-memory: could not read {text!r}; expected a size such as 512MB, 2GB or 1.5GiB"
        ) from e


def _check_classes(classes: Classes, text: str | None, n_out: int) -> None:
    """``--classes`` against the model's number of outputs, in the command's words."""
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


def _save_image(image, path: Path) -> None:
    with atomic_write(path) as f:
        image.save(f, format="PNG")


def _report(err: InputError) -> None:
    print(f"skipping {err.path}: {err.message}", file=sys.stderr)


def _progress(total: int, enabled: bool | None):
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty() and total > 1
    return tqdm(total=total, disable=not enabled, unit="input", file=sys.stderr)


# -- argument parsing -----------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saliency",
        description="Per-class input-gradient explanations for every class in one call.",
        epilog=__doc__.split("Examples\n--------\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser(
        "demo",
        help="explain held-out digits with the bundled model (gradients, SmoothGrad, IG)",
        description="Explain held-out digits with the bundled CNN for all 10 classes with vanilla "
        "gradients, SmoothGrad and Integrated Gradients; save per-class overlays and a summary "
        "grid, and print the IG completeness gap per class.",
        epilog="example: saliency demo --out saliency-out --overwrite",
    )
    d.add_argument("--out", default="saliency-out", help="output folder (default: saliency-out)")
    d.add_argument("--samples", type=int, default=8, help="held-out digits to explain (default 8)")
    d.add_argument("--overwrite", action="store_true", help="replace existing output files")
    d.set_defaults(run=demo)

    e = sub.add_parser(
        "explain",
        help="explain image or tensor inputs with a model",
        description="Explain inputs with a model for the chosen classes; write one overlay per "
        "input and class ({index}_{class}.png), a JSON index per batch, and optionally the raw "
        "attributions. Unreadable inputs are reported by name and skipped; the exit status is 1 "
        "if any input failed.",
        epilog="examples:\n"
        "  saliency explain digits a.png b.png --method ig --classes top3 --out m/\n"
        "  saliency explain mypkg.nets:resnet --weights w.safetensors imgs/ --size 224 224 "
        "--out m/\n  saliency explain breast_cancer rows.npy --classes all --out m/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _model_arguments(e)
    e.add_argument(
        "inputs", nargs="+", help="image files or folders, or .npy / .safetensors tensor files"
    )
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument(
        "--method", choices=list(METHODS), default="gradients", help="default: gradients"
    )
    e.add_argument(
        "--classes",
        default=None,
        help="'all', 'topN' (the N highest per input) or ids like '3' or '1,5,7' (default: "
        "top3, or all when the model has at most 3 classes)",
    )
    _input_arguments(e)
    e.add_argument("--key", help="tensor name inside a .safetensors input with several")
    _method_arguments(e, seed_help="SmoothGrad seed (default 0)")
    e.add_argument("--batch-size", type=_positive, default=32, help="inputs per batch (default 32)")
    e.add_argument("--max-memory", help="memory budget such as 2GB (default: none)")
    e.add_argument("--top", type=int, default=None, help="features shown per class (tabular)")
    e.add_argument("--save-values", action="store_true", help="also save raw attributions")
    e.add_argument("--recursive", action="store_true", help="search folders recursively")
    e.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )
    e.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing output files, and outputs made with other settings",
    )
    e.set_defaults(run=explain)

    a = sub.add_parser(
        "audit",
        help="explain and measure a whole data set; resumable; writes an HTML report",
        description="Explain every sample of a data set for every class (or --classes) with one "
        "or more methods, measure each explanation (--metrics), and write per-sample rows "
        "(shards/*.jsonl), a summary (summary.json) and a self-contained report (report.html). "
        "Results are written in shards as they are computed: run the same command again after "
        "an interruption and it resumes. Launch it with torchrun to split the work across "
        "processes or machines. Samples that cannot be explained are named and skipped; the "
        "exit status is then 1.",
        epilog="examples:\n"
        "  saliency audit digits digits --out audit/\n"
        "  saliency audit model.pt2 photos/ --method gradients ig --metrics deletion --out a/\n"
        "  torchrun --nproc-per-node=4 -m saliency audit model.pt2 data.safetensors --out a/\n"
        "DATA is a bundled data set (digits, breast_cancer), a folder with one sub-folder of "
        "images per class, or a tensor file: .safetensors with tensors x and y, a .pt file of "
        "{'x': ..., 'y': ...} (read with weights_only=True), or .npy (x only).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _model_arguments(a)
    a.add_argument("data", metavar="DATA", help="the data set (see below)")
    a.add_argument("--out", required=True, help="output folder (resumed when it holds this run)")
    a.add_argument(
        "--method",
        nargs="+",
        choices=list(METHODS),
        default=["gradients"],
        help="one or more methods (default: gradients)",
    )
    a.add_argument(
        "--metrics",
        nargs="*",
        default=None,
        help="per-sample metrics of saliency.audit, e.g. deletion insertion road "
        "class_sensitivity completeness margins norms, each for the methods it fits "
        "(completeness: ig; margins: gradients) (default: deletion class_sensitivity; "
        "class_sensitivity only with 2 classes or more per sample)",
    )
    a.add_argument(
        "--classes",
        default="all",
        help="'all' (default), 'topN', ids like '1,5,7', or 'label' (each sample's label)",
    )
    _input_arguments(a)
    _method_arguments(a, seed_help="seed of every random draw, per shard (default 0)")
    a.add_argument(
        "--batch-size", type=_positive, default=32, help="samples per shard (default 32)"
    )
    a.add_argument("--max-memory", help="memory budget such as 2GB (default: none)")
    a.add_argument(
        "--keep-values",
        action="store_true",
        help="also keep every attribution (can be large: the size is checked first)",
    )
    a.add_argument("--no-report", action="store_true", help="skip report.html")
    a.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="progress bar on stderr (default: on)",
    )
    a.add_argument(
        "--overwrite",
        action="store_true",
        help="delete a run made with other settings in --out and start again",
    )
    a.set_defaults(run=audit)
    return parser


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        metavar="MODEL",
        help="a bundled model name (digits, breast_cancer), a TorchScript file, a torch.export "
        ".pt2 file, or package.module:factory together with --weights",
    )
    p.add_argument("--weights", help="safetensors or state-dict file for a factory MODEL")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow loading a pickled full model (this can run arbitrary code: only for files "
        "you trust)",
    )


def _input_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), help="resize images to H W")
    p.add_argument(
        "--channels",
        type=int,
        choices=[1, 3],
        help="convert images to 1 (grayscale) or 3 (RGB) channels (default: the model's, else "
        "as stored)",
    )
    p.add_argument(
        "--mean",
        nargs="+",
        type=float,
        help="per-channel mean to normalise with, for pixels scaled to [0, 1] (bundled models "
        "bring their own)",
    )
    p.add_argument(
        "--std", nargs="+", type=float, help="per-channel std to normalise with (as --mean)"
    )
    p.add_argument("--class-names", help="text file with one class name per line")
    p.add_argument(
        "--output",
        choices=["logits", "softmax", "log_softmax"],
        default="logits",
        help="explain raw logits (default) or probabilities",
    )


def _method_arguments(p: argparse.ArgumentParser, *, seed_help: str) -> None:
    p.add_argument("--steps", type=_positive, default=50, help="IG path points (default 50)")
    p.add_argument(
        "--n-samples", type=_positive, default=50, help="SmoothGrad samples (default 50)"
    )
    p.add_argument("--noise", type=float, default=0.15, help="SmoothGrad noise, fraction of range")
    p.add_argument("--seed", type=int, default=0, help=seed_help)
