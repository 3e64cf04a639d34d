"""PreAct ResNet-18 (He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016).

``preact18`` ends with batch norm and ReLU before the pooling, as the adversarial-training code
bases do; ``preact18-frl`` is the network of FRL's code (hannxu123/fair_robust ``pre_resnet.py``,
in the layout of kuangliu/pytorch-cifar): no final BN+ReLU, and trained on raw [0, 1] inputs, so
the authors' ``hot_start.pt`` loads into it (`from_kuangliu_layout`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fairbench.models._registry import register_model


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(self, blocks: list[int], num_classes: int = 10, in_channels: int = 3, final_bn: bool = True) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.layer1 = self._layer(64, blocks[0], 1)
        self.layer2 = self._layer(128, blocks[1], 2)
        self.layer3 = self._layer(256, blocks[2], 2)
        self.layer4 = self._layer(512, blocks[3], 2)
        self.bn = nn.BatchNorm2d(512) if final_bn else None
        self.linear = nn.Linear(512, num_classes)

    def _layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.bn is not None:
            out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@register_model("preact18")
def preact18(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """PreAct ResNet-18 (11.2M parameters for 10 classes); the standard AT baseline network."""
    return PreActResNet([2, 2, 2, 2], num_classes, in_channels)


@register_model("preact18-frl")
def preact18_frl(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """PreAct ResNet-18 of FRL's code: no final BN+ReLU, raw [0, 1] inputs; loads their hot_start.pt."""
    net = PreActResNet([2, 2, 2, 2], num_classes, in_channels, final_bn=False)
    # create_model: no data-set normalization (the authors' loader has none); torch's stubs type a
    # Module's attributes as Tensor | Module
    net.raw_inputs = True  # type: ignore[assignment]
    return net


KUANGLIU_KEYS = ("conv1.weight", "layer4.1.conv2.weight", "linear.weight")


def is_kuangliu_layout(state: dict) -> bool:
    """A bare PreAct ResNet state dict in kuangliu/pytorch-cifar's names (FRL's checkpoints)."""
    return all(k in state for k in KUANGLIU_KEYS) and not any(k.startswith(("0.", "1.")) for k in state)


def from_kuangliu_layout(state: dict, normalize: dict) -> dict:
    """Rename such a state dict to fairbench's ``Sequential(Normalize, net)`` layout: a ``1.``
    prefix, ``shortcut.0`` -> ``shortcut``, and the Normalize buffers taken from ``normalize``."""
    out = {f"0.{k}": v for k, v in normalize.items()}
    for name, value in state.items():
        out["1." + name.replace(".shortcut.0.", ".shortcut.")] = value
    return out
