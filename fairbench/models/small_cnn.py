"""A small CNN that adversarially trains on a CPU in minutes (Fashion-MNIST, quick checks)."""

from __future__ import annotations

import torch
from torch import nn

from fairbench.models._registry import register_model


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(in_channels, w),
            nn.MaxPool2d(2),
            _conv_bn(w, 2 * w),
            nn.MaxPool2d(2),
            _conv_bn(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Linear(4 * w, 4 * w), nn.ReLU(inplace=True), nn.Linear(4 * w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("small-cnn")
def small_cnn(*, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Three conv-BN-ReLU layers (width 16) and a two-layer head (28k parameters); trains on a CPU."""
    return SmallCNN(num_classes, in_channels)
