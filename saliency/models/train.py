"""Reproducible training of the bundled models.

Run ``python -m saliency.models.train [--out DIR]`` to rewrite the shipped weights.
Two runs with the same seed, torch build and machine give bit-identical weights.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save
from torch import nn

from saliency._atomic import atomic_write
from saliency.models import WEIGHTS_DIR, ModelInfo, _entry, available, data

__all__ = ["RECIPES", "Recipe", "main", "train_model"]


@dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters of one bundled model."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    description: str


RECIPES: dict[str, Recipe] = {
    "digits": Recipe(
        epochs=30,
        batch_size=64,
        lr=1e-3,
        weight_decay=0.0,
        description=(
            "Small CNN (2 conv layers, max-pool, 2 linear layers, ReLU) trained on the "
            "scikit-learn 8x8 digits; input [1, 8, 8]: pixels / 16, then (x - mean) / std."
        ),
    ),
    "breast_cancer": Recipe(
        epochs=60,
        batch_size=32,
        lr=1e-3,
        weight_decay=1e-4,
        description=(
            "MLP 30-32-32-2 with tanh trained on the scikit-learn Wisconsin breast cancer "
            "data; input [30]: per-feature (x - mean) / std."
        ),
    ),
}


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    # Restore the caller's setting: this is a library function, not only a script.
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def _fit(
    architecture: type[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: Recipe,
    epochs: int,
    seed: int,
) -> nn.Module:
    # fork_rng keeps the caller's global RNG state untouched by the seeding below.
    with torch.random.fork_rng(devices=[]), _deterministic():
        torch.manual_seed(seed)
        model = architecture()
        shuffle = torch.Generator().manual_seed(seed)
        optimiser = torch.optim.Adam(
            model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
        )
        model.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(y), generator=shuffle).split(recipe.batch_size):
                optimiser.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                optimiser.step()
    return model.eval()


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        correct = int((model(x).argmax(dim=1) == y).sum())
    return correct / len(y)


def _write_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    # A crash mid-write must never leave a truncated weights file in the package.
    with atomic_write(path) as f:
        f.write(save(tensors, metadata=metadata))


def train_model(
    name: str,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    epochs: int | None = None,
    seed: int = 0,
) -> tuple[Path, ModelInfo]:
    """Train one bundled model and write its weights file.

    Parameters
    ----------
    name : str
        One of :func:`saliency.models.available`.
    out_dir : path, optional
        Folder for the weights file, created if missing; the package's weights folder if
        ``None``.
    epochs : int, optional
        Overrides the recipe's number of epochs (e.g. for quick tests).
    seed : int
        Seed for initialisation and batch order.

    Returns
    -------
    path : pathlib.Path
        The written ``.safetensors`` file.
    info : ModelInfo
        The metadata stored in it.
    """
    entry = _entry(name)
    recipe = RECIPES[name]
    if epochs is None:
        epochs = recipe.epochs
    elif isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be None or a positive int; got {epochs!r}")

    split = data.raw_split(name)
    mean, std = data.fit_normalisation(name, split.x_train)
    x_train = data.normalise(name, split.x_train, mean, std)
    x_held_out = data.normalise(name, split.x_held_out, mean, std)
    y_train = torch.tensor(split.y_train, dtype=torch.int64)
    y_held_out = torch.tensor(split.y_held_out, dtype=torch.int64)

    model = _fit(entry.architecture, x_train, y_train, recipe, epochs, seed)
    info = ModelInfo(
        name=name,
        class_names=list(split.class_names),
        feature_names=None if split.feature_names is None else list(split.feature_names),
        input_shape=tuple(x_train.shape[1:]),
        mean=mean,
        std=std,
        held_out_accuracy=_accuracy(model, x_held_out, y_held_out),
        description=recipe.description,
    )
    training = {
        "optimiser": "Adam",
        "epochs": epochs,
        "batch_size": recipe.batch_size,
        "lr": recipe.lr,
        "weight_decay": recipe.weight_decay,
        "seed": seed,
        "split_seed": data.SPLIT_SEED,
        "held_out_fraction": data.HELD_OUT_FRACTION,
    }
    metadata = info.to_metadata() | {
        "architecture": json.dumps(entry.architecture.__name__),
        "training": json.dumps(training),
    }
    folder = WEIGHTS_DIR if out_dir is None else Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / entry.filename
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    _write_atomic(path, tensors, metadata)
    return path, info


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: train the bundled models and report their accuracy."""
    parser = argparse.ArgumentParser(
        prog="python -m saliency.models.train", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=None, help=f"default: {WEIGHTS_DIR}")
    parser.add_argument("--model", choices=available(), action="append", help="default: all")
    parser.add_argument("--epochs", type=int, default=None, help="override every recipe")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in args.model or available():
        start = time.perf_counter()
        path, info = train_model(name, out_dir=args.out, epochs=args.epochs, seed=args.seed)
        print(
            f"{name}: held-out accuracy {info.held_out_accuracy:.4f}, "
            f"{path.stat().st_size / 1024:.1f} KiB -> {path} "
            f"({time.perf_counter() - start:.1f} s)"
        )


if __name__ == "__main__":
    main()
