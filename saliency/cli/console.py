"""What the command says: one rank speaks under torchrun, Ctrl-C ends in one line, skipped
inputs are named as they go, and long runs show a progress bar."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..io import InputError


class Interrupted(Exception):
    """Ctrl-C, with one line saying what was saved and how to go on."""


def say(text: str, *, err: bool = False) -> None:
    # Under torchrun every rank runs the command; one of them speaks.
    if os.environ.get("RANK", "0") == "0":
        print(text, file=sys.stderr if err else sys.stdout)


def report(err: InputError) -> None:
    print(f"skipping {err.path}: {err.message}", file=sys.stderr)


def progress(total: int, enabled: bool | None):
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty() and total > 1
    return tqdm(total=total, disable=not enabled, unit="input", file=sys.stderr)
