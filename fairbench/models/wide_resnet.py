"""Wide ResNets (Zagoruyko & Komodakis, BMVC 2016) as used in adversarial training (Madry, TRADES).

Their block is the pre-activation basic block of PreAct ResNet (no dropout, as in TRADES/FRL).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fairbench.models._registry import register_model
from fairbench.models.preact_resnet import PreActBlock


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError("WideResNet depth must be 6n+4")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        layers, in_planes = [], widths[0]
        for i, stride in enumerate([1, 2, 2]):
            for j in range(n):
                layers.append(PreActBlock(in_planes, widths[i + 1], stride if j == 0 else 1))
                in_planes = widths[i + 1]
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_model("wrn-28-10")
def wrn_28_10(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """WideResNet-28-10 (36.5M parameters for 10 classes); the FairAT paper's main network."""
    return WideResNet(28, 10, num_classes, in_channels)


@register_model("wrn-34-10")
def wrn_34_10(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """WideResNet-34-10 (46.2M parameters for 10 classes); the TRADES / FRL network."""
    return WideResNet(34, 10, num_classes, in_channels)
