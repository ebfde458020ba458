"""The ``saliency`` command (the only module that prints)."""

from __future__ import annotations

import argparse
import time

import torch

from . import class_jacobian, models


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="saliency", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="all-class Jacobian of the bundled digits model")
    demo.add_argument("--out", default="saliency-out")
    demo.add_argument("--overwrite", action="store_true")
    parser.parse_args(argv)
    model, info = models.load("digits")
    x, _ = models.held_out("digits", n=64)
    class_jacobian(model, x)
    start = time.perf_counter()
    J = class_jacobian(model, x)
    elapsed = time.perf_counter() - start
    print(f"all-class Jacobian of {info.name}: {tuple(J.shape)} in {elapsed * 1000:.1f} ms")
    print(f"torch {torch.__version__}")
    return 0
