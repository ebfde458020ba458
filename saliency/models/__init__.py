"""Bundled trained models and their held-out data.

Examples
--------
>>> from saliency import models
>>> model, info = models.load("digits")
>>> x, y = models.held_out("digits", n=8)
>>> model(x).argmax(dim=1).shape
torch.Size([8])
"""

from __future__ import annotations

import json
import numbers
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from saliency.models import data
from saliency.models.architectures import CancerMLP, DigitsCNN

__all__ = ["ModelInfo", "available", "held_out", "load"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class ModelInfo:
    """Description of a bundled model, read from its weights file.

    Attributes
    ----------
    name : str
        Name accepted by :func:`load`.
    class_names : list of str
        Label of each output logit, in order.
    feature_names : list of str or None
        Name of each input feature; ``None`` for images.
    input_shape : tuple of int
        Shape of one input, without the batch dimension.
    mean, std : list of float
        Statistics used to normalise inputs (after scaling digit pixels by 1/16).
    held_out_accuracy : float
        Accuracy on the full held-out split, measured when the weights were written.
    description : str
    """

    name: str
    class_names: list[str]
    feature_names: list[str] | None
    input_shape: tuple[int, ...]
    mean: list[float]
    std: list[float]
    held_out_accuracy: float
    description: str

    def to_metadata(self) -> dict[str, str]:
        """Encode as a safetensors metadata header (every value a JSON string)."""
        return {key: json.dumps(value) for key, value in asdict(self).items()}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> ModelInfo:
        """Decode a header written by :meth:`to_metadata`; extra keys are ignored."""
        values = {f.name: json.loads(metadata[f.name]) for f in fields(cls)}
        values["input_shape"] = tuple(values["input_shape"])
        return cls(**values)


@dataclass(frozen=True)
class _Entry:
    architecture: type[nn.Module]
    filename: str


# Model names double as data-set names (see ``data.DATASETS``).
_REGISTRY: dict[str, _Entry] = {
    "digits": _Entry(DigitsCNN, "digits_cnn.safetensors"),
    "breast_cancer": _Entry(CancerMLP, "breast_cancer_mlp.safetensors"),
}


def available() -> list[str]:
    """Return the names accepted by :func:`load`."""
    return list(_REGISTRY)


def _entry(name: str) -> _Entry:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"name must be one of {available()}; got {name!r}")
    return _REGISTRY[name]


def _info(path: Path) -> ModelInfo:
    with safe_open(str(path), framework="pt") as f:
        return ModelInfo.from_metadata(f.metadata())


def load(name: str) -> tuple[nn.Module, ModelInfo]:
    """Load a bundled model.

    Parameters
    ----------
    name : str
        One of :func:`available`.

    Returns
    -------
    model : torch.nn.Module
        A new instance in eval mode on the CPU; callers may modify it freely.
    info : ModelInfo

    Raises
    ------
    ValueError
        If `name` is not a bundled model.
    """
    entry = _entry(name)
    path = WEIGHTS_DIR / entry.filename
    model = entry.architecture()
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval(), _info(path)


def held_out(name: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return held-out samples the model never saw in training.

    Parameters
    ----------
    name : str
        One of :func:`available`.
    n : int, optional
        Number of samples, taken from the start of the held-out split; all if ``None``.

    Returns
    -------
    x : torch.Tensor
        float32 inputs ``[n, *input_shape]``, normalised the way the model expects.
    y : torch.Tensor
        int64 labels ``[n]``.

    Raises
    ------
    ValueError
        If `name` is not a bundled model or `n` is out of range.
    """
    entry = _entry(name)
    split = data.raw_split(name)
    total = len(split.y_held_out)
    if n is None:
        n = total
    elif isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 0 <= n <= total:
        raise ValueError(f"n must be None or an int in [0, {total}] for {name!r}; got {n!r}")
    n = int(n)
    # Normalise with the statistics stored alongside the weights, which are what the model saw.
    info = _info(WEIGHTS_DIR / entry.filename)
    x = data.normalise(name, split.x_held_out[:n], info.mean, info.std)
    return x, torch.tensor(split.y_held_out[:n], dtype=torch.int64)
