"""Small, deterministic benchmark models (random weights, fixed seed, eval mode).

Each factory returns a fresh ``nn.Module`` in eval mode; the same call always gives the same
weights. Shapes are in ``SPECS``: ``(input shape without batch, number of classes)``.
"""

from __future__ import annotations

import torch
from torch import nn

SPECS: dict[str, tuple[tuple[int, ...], int]] = {
    "mlp": ((30,), 10),
    "cnn8": ((1, 8, 8), 10),
    "cnn32": ((3, 32, 32), 10),
    "resnet64": ((3, 64, 64), 100),
    "imagenet224": ((3, 224, 224), 1000),
}


def _seeded(seed: int, build):
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = build()
    finally:
        torch.random.set_rng_state(gen_state)
    return model.eval()


def mlp(seed: int = 0, classes: int = 10) -> nn.Module:
    """MLP 30-64-64-10 with ReLU (``classes`` outputs)."""
    return _seeded(
        seed,
        lambda: nn.Sequential(
            nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, classes)
        ),
    )


def cnn8(seed: int = 0) -> nn.Module:
    """CNN on 1x8x8, 10 classes, with BatchNorm and max-pooling."""
    return _seeded(
        seed,
        lambda: nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 2 * 2, 10),
        ),
    )


def cnn32(seed: int = 0) -> nn.Module:
    """CNN on 3x32x32, 10 classes."""
    return _seeded(
        seed,
        lambda: nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
        ),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a (projected when needed) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


class ResNet(nn.Module):
    """Stem, stages of basic blocks (each later stage starts with stride 2), GAP, linear head."""

    def __init__(self, widths: list[int], classes: int, stem: nn.Module, blocks: int = 1):
        super().__init__()
        self.stem = stem
        layers: list[nn.Module] = []
        cin = widths[0]
        for i, width in enumerate(widths):
            for j in range(blocks):
                layers.append(BasicBlock(cin, width, stride=2 if (i > 0 and j == 0) else 1))
                cin = width
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def resnet64(seed: int = 0, classes: int = 100) -> nn.Module:
    """Small ResNet on 3x64x64, 100 classes: stages 16/32/64, GAP, linear 64->100 (``classes``)."""

    def build():
        stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        return ResNet([16, 32, 64], classes, stem)

    return _seeded(seed, build)


def imagenet224(seed: int = 0) -> nn.Module:
    """Light ResNet-like net on 3x224x224, 1000 classes: a stride-8 stem (4x4/4 patchify
    convolution, then 2x2 max-pooling), stages 32/64/128/256 at 28/14/7/4 pixels, GAP,
    linear 256->1000. Light enough that 1000 backward passes take seconds on 2 CPU cores."""

    def build():
        stem = nn.Sequential(
            nn.Conv2d(3, 32, 4, stride=4, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        return ResNet([32, 64, 128, 256], 1000, stem)

    return _seeded(seed, build)


MODELS = {
    "mlp": mlp,
    "cnn8": cnn8,
    "cnn32": cnn32,
    "resnet64": resnet64,
    "imagenet224": imagenet224,
}
