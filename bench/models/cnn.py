"""A small convolutional classifier for tiny images (8×8 digits up to 32×32 CIFAR).

    stem   Conv 3×3, C_in → 16, pad 1   ReLU
    conv1  Conv 3×3, 16 → 32, pad 1     ReLU   MaxPool 2
    conv2  Conv 3×3, 32 → 64, no pad    ReLU   global average pool
    fc     Linear 64 → 64               ReLU
    head   Linear 64 → num_classes

About 28k parameters at the defaults. No dropout and no BatchNorm on purpose: with neither,
the forward pass has no randomness and no cross-example state, so a data-parallel run computes
exactly the gradients of a single-process run, and per-layer curvature is that of the weights
alone. Inputs must be at least 6×6 (the unpadded conv2 after one pooling).
"""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Three 3×3 convolutions, global average pooling, two linear layers."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: tuple[int, int, int] = (16, 32, 64),
        hidden: int = 64,
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.stem = nn.Conv2d(in_channels, c1, kernel_size=3, padding=1)
        self.conv1 = nn.Conv2d(c1, c2, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c2, c3, kernel_size=3)
        self.gap = nn.AdaptiveAvgPool2d(1)  # any input size ends as one vector per image
        self.fc = nn.Linear(c3, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: B×C×H×W float images → B×num_classes logits."""
        x = torch.relu(self.stem(x))
        x = self.pool(torch.relu(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        x = self.gap(x).flatten(1)
        x = torch.relu(self.fc(x))
        return self.head(x)
