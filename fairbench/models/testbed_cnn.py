"""The CPU testbed network: a plain two-conv CNN large enough to keep the hard classes.

``small-cnn`` (28k parameters, global-average-pool head) gives up Fashion-MNIST's hard class
under adversarial training (shirt keeps ~0.5% PGD-20 accuracy); this network keeps it, so the
per-class gap the benchmark measures exists on a CPU (results/README.md, issue 11).
"""

from __future__ import annotations

import torch
from torch import nn

from fairbench.registry import register_model


class TestbedCNN(nn.Module):
    """conv(32)-BN-ReLU-pool, conv(64)-BN-ReLU-pool, FC(128)-ReLU, FC(classes)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32,
                 hidden: int = 128) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(7),  # the identity on 28x28 inputs; 8x8 -> 7x7 on 32x32 ones
            nn.Flatten(),
        )
        flat = 2 * width * 7 * 7
        self.classifier = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(inplace=True),
                                        nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("testbed-cnn")
def testbed_cnn(*, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Two conv-BN-ReLU-pool blocks (32, 64) and an FC-128 head (421k parameters on 28x28
    inputs); the CPU testbed of the fmnist-standard preset."""
    return TestbedCNN(num_classes, in_channels)
