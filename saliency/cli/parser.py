"""The command's arguments: one sub-command each for demo, explain and audit.

Built from the method and metric records as declared and the bundled models' file headers
(:mod:`saliency.cli.words`), with each sub-command named by ``module:function`` and imported
only to run it: printing ``--help`` imports no torch.
"""

from __future__ import annotations

import argparse
import re
import textwrap

from .._records import suggest
from ..audit import records as metric_records
from ..methods import records as method_records
from . import words

__all__ = ["build_parser"]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, with where to read more."""

    def error(self, message: str) -> None:
        wrong = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if wrong:  # a misspelt sub-command
            choices = re.findall(r"'([^']*)'", wrong[2])
            message = f"unknown command {wrong[1]!r}{suggest(wrong[1], choices)}"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def build_parser(examples: str) -> argparse.ArgumentParser:
    """The ``saliency`` parser; ``examples`` close its ``--help``."""
    parser = _Parser(
        prog="saliency",
        description="Per-class input-gradient explanations for every class in one call.",
        epilog=f"{_models_text()}\n\nexamples:\n{examples}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

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
    d.set_defaults(run="saliency.cli.demo:demo")

    e = sub.add_parser(
        "explain",
        help="explain image or tensor inputs with a model",
        description="Explain inputs with a model for the chosen classes; write one overlay per "
        "input and class ({index}_{class}.png), a JSON index per batch, and optionally the raw "
        "attributions. Unreadable inputs are reported by name and skipped; the exit status is 1 "
        "if any input failed.",
        epilog=f"{_methods_text()}\n\n{_models_text()}\n\nexamples:\n"
        "  saliency explain digits a.png b.png --method ig --classes top3 --out m/\n"
        "  saliency explain digits a.png --method gradcam --layer features.3 --out m/\n"
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
        "--method", default="gradients", metavar="METHOD", help=f"{_method_names()} (default: "
        "gradients; see below)",
    )  # fmt: skip
    e.add_argument(
        "--classes",
        default=None,
        help="'all', 'topN' (the N highest per input) or ids like '3' or '1,5,7' (default: "
        "top3, or all when the model has at most 3 classes)",
    )
    _input_arguments(e)
    e.add_argument("--key", help="tensor name inside a .safetensors input with several")
    _method_arguments(e, seed_help="seed of the methods' random draws (default 0)")
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
    e.set_defaults(run="saliency.cli.explain:explain")

    bundled = ", ".join(b.name for b in words.bundled() if b.kind not in ("text", "language"))
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
        epilog=f"{_methods_text()}\n\n{_metrics_text()}\n\n{_models_text()}\n\nexamples:\n"
        "  saliency audit digits digits --out audit/\n"
        "  saliency audit model.pt2 photos/ --method gradients ig --metrics deletion --out a/\n"
        "  torchrun --nproc-per-node=4 -m saliency audit model.pt2 data.safetensors --out a/\n"
        + textwrap.fill(
            f"DATA is a bundled data set ({bundled}), a folder with one sub-folder of images "
            "per class, or a tensor file: .safetensors with tensors x and y, a .pt file of "
            "{'x': ..., 'y': ...} (read with weights_only=True), or .npy (x only).",
            96,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _model_arguments(a)
    a.add_argument("data", metavar="DATA", help="the data set (see below)")
    a.add_argument("--out", required=True, help="output folder (resumed when it holds this run)")
    # extend: "--method a --method b" (or --metric, an abbreviation) adds up, never last-wins
    a.add_argument(
        "--method", nargs="+", action="extend", default=None, metavar="METHOD",
        help=f"one or more of {_method_names()} (default: gradients; see below)",
    )  # fmt: skip
    a.add_argument(
        "--metrics",
        nargs="*",
        action="extend",
        default=None,
        metavar="METRIC",
        help="per-sample metrics (see below), each measured for the methods it fits (default: "
        "deletion class_sensitivity; class_sensitivity only with 2 classes or more per "
        "sample; --metrics alone: none)",
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
    a.set_defaults(run="saliency.cli.audit:audit")
    return parser


def _model_arguments(p: argparse.ArgumentParser) -> None:
    names = ", ".join(b.name for b in words.bundled())
    p.add_argument(
        "model",
        metavar="MODEL",
        help=f"a bundled model ({names}; see below), a TorchScript file, a torch.export .pt2 "
        "file, or package.module:factory together with --weights",
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
    """The options of the methods' records (each once, however many methods take it)."""
    group = p.add_argument_group("method options (each for the methods named first)")
    for name, (option, takers) in words.method_options().items():
        default = "" if option.default is None else f" (default {option.default})"
        group.add_argument(
            option.flag,
            dest=name,
            type=_positive if option.type is int and option.minimum == 1 else option.type,
            default=None,
            metavar={int: "N", float: "X"}.get(option.type, option.name.upper()),
            help=f"{', '.join(takers)}: {option.help}{default}",
        )
    group.add_argument("--seed", type=int, default=0, help=seed_help)


def _method_names() -> str:
    return ", ".join(
        f"{r.name} ({'or ' + ', '.join(r.aliases)})" if r.aliases else r.name
        for r in method_records.declared()
    )


def _methods_text() -> str:
    rows = []
    for r in method_records.declared():
        needs = [o.flag for o in r.options if o.required]
        also = f"(also {', '.join(r.aliases)}) " if r.aliases else ""
        rows.append((r.name, also + r.summary + (f"; needs {' '.join(needs)}" if needs else "")))
    return _listing("methods (--method):", rows)


def _metrics_text() -> str:
    rows = [(r.name, r.explanation) for r in metric_records.declared() if r.not_in_runs is None]
    return _listing("metrics (--metrics):", rows)


def _models_text() -> str:
    rows = []
    for b in words.bundled():
        if b.kind == "language":
            rows.append((b.name, f"language model, {b.classes} tokens (explained in Python: "
                                 "see the docs' Generation page)"))  # fmt: skip
            continue
        note = " (explained in Python: see the docs' Text page)" if b.kind == "text" else ""
        rows.append((b.name, f"{b.kind}, {b.classes} classes{note}"))
    return _listing("bundled models (MODEL; each also names its held-out data, DATA):", rows)


def _listing(title: str, rows: list[tuple[str, str]]) -> str:
    """``title``, then one entry per row, its text wrapped beside the name."""
    lines = [title]
    for name, text in rows:
        first, *rest = textwrap.wrap(text, 72) or [""]
        lines.append(f"  {name:22} {first}")
        lines += [f"  {'':22} {line}" for line in rest]
    return "\n".join(lines)
