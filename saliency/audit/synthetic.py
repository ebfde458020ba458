"""A tabular task whose relevant features are known, to check that attributions find them.

Only ``informative`` of the features carry the class (through class-conditional Gaussian means,
in the manner of OpenXAI's synthetic clusters); the rest are noise with the same distribution for
every class. A model that learned the task can only rely on the informative features, so a
faithful attribution should rank them first: :func:`feature_agreement` measures how often it does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._random import generator
from ..attribution import Attribution

__all__ = ["SyntheticTask", "feature_agreement", "gaussian_clusters"]


@dataclass(frozen=True, eq=False)
class SyntheticTask:
    """Data drawn by :func:`gaussian_clusters`, with the truth about it.

    Attributes
    ----------
    x : torch.Tensor
        ``[N, D]`` float32 features.
    y : torch.Tensor
        ``[N]`` long class ids, balanced over the classes.
    relevant : torch.Tensor
        ``[D]`` bool: the informative features (the only ones whose distribution depends on y).
    means : torch.Tensor
        ``[C, D]``: the mean of each class (zero on every irrelevant feature).
    seed : int
        The seed it was drawn with: the one given, or the one drawn for ``seed=None`` (pass it
        back to draw the same task).
    """

    x: torch.Tensor
    y: torch.Tensor
    relevant: torch.Tensor
    means: torch.Tensor
    seed: int


def gaussian_clusters(
    n: int,
    *,
    features: int = 20,
    informative: int = 5,
    classes: int = 3,
    separation: float = 2.0,
    seed: int | None = None,
) -> SyntheticTask:
    """Draw ``n`` samples of a task where only ``informative`` of ``features`` carry the class.

    Each class gets a mean vector that is zero on the irrelevant features and, on the
    informative ones (at random positions), ``separation`` times a random sign, redrawn until
    every two classes differ and every informative feature takes both signs (so that it
    separates some classes); a sample is its class's mean plus standard normal noise on every
    feature. A larger ``separation`` makes the task easier. Draws come from a private generator
    seeded by ``seed`` (the global RNG is untouched); ``None`` draws a seed, kept in the result.

    Examples
    --------
    >>> from saliency.audit.synthetic import gaussian_clusters
    >>> task = gaussian_clusters(300, features=10, informative=3, classes=2, seed=0)
    >>> task.x.shape, int(task.relevant.sum()), task.y.bincount().tolist()
    (torch.Size([300, 10]), 3, [150, 150])
    """
    for name, value in (("n", n), ("features", features), ("informative", informative)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    if informative > features:
        raise ValueError(
            f"informative: {informative} informative features do not fit in features={features}"
        )
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise ValueError(f"classes: expected an int >= 2, got {classes!r}")
    if classes > 2**informative:
        raise ValueError(
            f"classes: {classes} classes need distinct sign patterns on {informative} informative "
            f"features, which allow at most {2**informative}"
        )
    if isinstance(separation, bool) or not isinstance(separation, int | float) or separation <= 0:
        raise ValueError(f"separation: expected a positive number, got {separation!r}")
    g, seed = generator(seed, torch.device("cpu"))

    relevant = torch.zeros(features, dtype=torch.bool)
    relevant[torch.randperm(features, generator=g)[:informative]] = True
    while True:
        signs = torch.randint(0, 2, (classes, informative), generator=g) * 2 - 1
        # Distinct classes, and no feature with one sign for all (it would carry no class).
        if len(signs.unique(dim=0)) == classes and bool((signs.amax(0) != signs.amin(0)).all()):
            break
    means = torch.zeros(classes, features)
    means[:, relevant] = separation * signs.float()
    y = torch.arange(n) % classes
    y = y[torch.randperm(n, generator=g)]
    x = means[y] + torch.randn(n, features, generator=g)
    return SyntheticTask(x=x, y=y, relevant=relevant, means=means, seed=seed)


def feature_agreement(
    attribution: Attribution, relevant: torch.Tensor, *, k: int | None = None
) -> torch.Tensor:
    """The fraction of each map's ``k`` largest features (by ``|value|``) that are relevant.

    Returns ``[B, K]``, one value per sample and class: 1 when the ``k`` features with the
    largest absolute attribution are all truly relevant. ``k`` defaults to the number of
    relevant features, so that a perfect ranking scores 1 (top-k overlap).

    Examples
    --------
    >>> import torch, saliency
    >>> from saliency.audit.synthetic import feature_agreement
    >>> model = torch.nn.Linear(4, 2)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[3.0, 0.0, 2.0, 0.1], [0.0, 0.0, -5.0, 4.0]]))
    >>> a = saliency.gradients(model, torch.randn(3, 4))
    >>> feature_agreement(a, torch.tensor([True, False, True, False]))
    tensor([[1.0000, 0.5000],
            [1.0000, 0.5000],
            [1.0000, 0.5000]])
    """
    if not isinstance(attribution, Attribution):
        raise TypeError(
            f"attribution: expected a saliency.Attribution, got {type(attribution).__name__}"
        )
    values = attribution.values.flatten(2)
    d = values.shape[-1]
    relevant = torch.as_tensor(relevant)
    if relevant.dtype != torch.bool or relevant.numel() != d:
        raise ValueError(
            f"relevant: expected a bool mask of the {d} features, got {relevant.dtype} "
            f"{list(relevant.shape)}"
        )
    if k is None:
        k = int(relevant.sum())
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d:
        raise ValueError(f"k: expected an int in [1, {d}], got {k!r}")
    top = values.abs().topk(k, dim=-1).indices
    hits = relevant.flatten().to(top.device)[top]
    return hits.float().mean(-1)
