"""Scikit-learn data sets, their fixed train/held-out split, and input normalisation."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

__all__ = ["DATASETS", "RawSplit", "fit_normalisation", "normalise", "raw_split"]

DATASETS: tuple[str, ...] = ("digits", "breast_cancer")
SPLIT_SEED = 0
HELD_OUT_FRACTION = 0.2


@dataclass(frozen=True)
class RawSplit:
    """Un-normalised train/held-out split of one data set.

    Attributes
    ----------
    x_train, x_held_out : numpy.ndarray
        Read-only float64 feature matrices ``[N, F]`` exactly as scikit-learn returns them.
    y_train, y_held_out : numpy.ndarray
        Read-only int64 labels ``[N]``.
    class_names : tuple of str
    feature_names : tuple of str or None
        ``None`` for images, whose pixels are not named features.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_held_out: np.ndarray
    y_held_out: np.ndarray
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...] | None


def _check_dataset(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"name must be one of {list(DATASETS)}; got {name!r}")


def _read_only(a: np.ndarray) -> np.ndarray:
    # The split is cached and shared between callers, so nobody may mutate it in place.
    a.flags.writeable = False
    return a


@cache
def raw_split(name: str) -> RawSplit:
    """Load a data set and split it 80/20, stratified, with a fixed seed.

    Parameters
    ----------
    name : {"digits", "breast_cancer"}

    Returns
    -------
    RawSplit
    """
    _check_dataset(name)
    # Imported here so that importing the package does not pay for scikit-learn.
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.model_selection import train_test_split

    if name == "digits":
        bunch = load_digits()
        class_names = tuple(str(c) for c in range(10))
        feature_names = None
    else:
        bunch = load_breast_cancer()
        class_names = tuple(str(c) for c in bunch.target_names)
        feature_names = tuple(str(f) for f in bunch.feature_names)
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    x_tr, x_ho, y_tr, y_ho = train_test_split(
        x, y, test_size=HELD_OUT_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    return RawSplit(
        x_train=_read_only(x_tr),
        y_train=_read_only(y_tr),
        x_held_out=_read_only(x_ho),
        y_held_out=_read_only(y_ho),
        class_names=class_names,
        feature_names=feature_names,
    )


def _scaled(name: str, x: np.ndarray) -> np.ndarray:
    # Digit pixels are integers in [0, 16]; bring them to [0, 1] before standardising.
    return x / 16.0 if name == "digits" else x


def fit_normalisation(name: str, x_train: np.ndarray) -> tuple[list[float], list[float]]:
    """Compute the normalisation statistics from training inputs.

    Parameters
    ----------
    name : {"digits", "breast_cancer"}
    x_train : numpy.ndarray
        Un-normalised training inputs ``[N, F]``.

    Returns
    -------
    mean, std : list of float
        One scalar each for digits (shared by all pixels); one value per feature otherwise.
    """
    _check_dataset(name)
    x = _scaled(name, np.asarray(x_train, dtype=np.float64))
    if name == "digits":
        return [float(x.mean())], [float(x.std())]
    return x.mean(axis=0).tolist(), x.std(axis=0).tolist()


def normalise(name: str, x: np.ndarray, mean: list[float], std: list[float]) -> torch.Tensor:
    """Normalise raw inputs and shape them the way the model expects.

    Parameters
    ----------
    name : {"digits", "breast_cancer"}
    x : numpy.ndarray
        Un-normalised inputs ``[N, F]``.
    mean, std : list of float
        Statistics from :func:`fit_normalisation`.

    Returns
    -------
    torch.Tensor
        float32, ``[N, 1, 8, 8]`` for digits and ``[N, 30]`` for breast cancer.
    """
    _check_dataset(name)
    z = (_scaled(name, np.asarray(x, dtype=np.float64)) - np.asarray(mean)) / np.asarray(std)
    t = torch.tensor(z, dtype=torch.float32)
    return t.reshape(-1, 1, 8, 8) if name == "digits" else t
