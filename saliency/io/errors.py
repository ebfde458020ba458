"""Errors shared by the loaders."""

from __future__ import annotations

__all__ = ["InputProblem", "UnsafeFileError"]


class UnsafeFileError(ValueError):
    """Raised instead of loading a file that could run arbitrary code when loaded."""


class InputProblem(ValueError):
    """An input file that was read but does not fit; the message is written for the user and,
    like every input error, does not repeat the file's path."""
