"""Network architectures of the bundled models."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CancerMLP", "DigitsCNN"]


class DigitsCNN(nn.Module):
    """Small CNN for the 8x8 scikit-learn digits.

    Maps normalised images of shape ``[B, 1, 8, 8]`` to logits of shape ``[B, 10]``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch of images."""
        return self.classifier(self.features(x))


class CancerMLP(nn.Module):
    """Multilayer perceptron for the 30 breast-cancer features.

    Maps standardised features of shape ``[B, 30]`` to logits of shape ``[B, 2]``.
    Uses tanh so that input gradients are smooth, which suits gradient explanations.
    """

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(30, 32),
            nn.Tanh(),
            nn.Linear(32, 32),
            nn.Tanh(),
            nn.Linear(32, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch of feature vectors."""
        return self.layers(x)
