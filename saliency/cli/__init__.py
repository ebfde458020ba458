"""The ``saliency`` command: ``demo``, ``explain`` and ``audit`` (the only package that prints).

Examples
--------
  saliency demo --out saliency-out
  saliency explain digits digit.png --method ig --classes top3 --out maps/
  saliency explain digits digit.png --method gradcam --layer features.3 --out maps/
  saliency explain model.pt2 photos/ --method smoothgrad --classes all --size 224 224 \\
      --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 --class-names classes.txt --out maps/
  saliency audit digits digits --out audit/
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence

from . import words
from .console import Interrupted, say
from .options import parse_classes
from .parser import build_parser

__all__ = ["main", "parse_classes"]

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
    (re.compile(r"^spec: "), "MODEL: "),
    (re.compile(r"^layer: "), "--layer: "),
    (re.compile(r"^weights: "), "--weights: "),
    (re.compile(r"^data: "), "DATA: "),
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 some inputs failed, 2 usage, 130
    interrupted)."""
    parser = build_parser(examples=__doc__.split("Examples\n--------\n", 1)[1])
    args = parser.parse_args(argv)
    try:
        _check_words(args)  # before anything heavy is imported
        module, _, name = args.run.partition(":")
        return getattr(importlib.import_module(module), name)(args)
    except Interrupted as note:
        say(f"saliency {args.command}: {note}", err=True)
        return 130
    except KeyboardInterrupt:
        say(f"saliency {args.command}: interrupted", err=True)
        return 130
    except FileExistsError as error:
        say(
            f"saliency {args.command}: error: {error.filename or error} exists; use --overwrite "
            "to replace it",
            err=True,
        )
        return 2
    except (OSError, ValueError, TypeError, MemoryError, RuntimeError) as error:
        say(f"saliency {args.command}: error: {_option_words(str(error))}", err=True)
        return 2


def _check_words(args) -> None:
    """Names the user typed (models, data, methods, metrics), with the nearest when misspelt, and
    method options that no chosen method takes or that one needs."""
    if args.command == "demo":
        return
    words.check_model(args.model)
    if args.command == "audit":
        args.method = args.method or ["gradients"]
        words.check_data(args.data)
        words.check_metrics(args.metrics or [])
    chosen = words.check_methods([args.method] if isinstance(args.method, str) else args.method)
    given = {name: getattr(args, name) for name in words.method_options()}
    words.check_method_options(chosen, given)


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
