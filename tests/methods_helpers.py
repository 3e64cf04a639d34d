"""Tiny data sets, models and contexts for the method tests (CPU, seconds)."""

from __future__ import annotations

from typing import Any

import torch
from fairbench.config import RunConfig
from fairbench.data.datasets import Split, get_dataset
from fairbench.distributed import DistInfo
from fairbench.methods.base import BatchContext, EpochContext, Method
from fairbench.train.runner import prepare
from torch import nn

SPEC = get_dataset("fashion-mnist")


def bars(n_per_class: int, seed: int = 0) -> Split:
    """Separable 28x28 images: class c is a bright bar at row 2c + 4 on dark noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(10).repeat_interleave(n_per_class)
    images = torch.randint(0, 60, (len(labels), 1, 28, 28), generator=gen, dtype=torch.uint8)
    for c in range(10):
        images[labels == c, :, 2 * c + 4 : 2 * c + 7, 4:24] = 230
    return Split(images, labels)


CENTRES = torch.arange(10) / 10 + 0.05  # class c <-> mean grey level 0.1 c + 0.05


class MeanGreyModel(nn.Module):
    """Predicts the class whose centre is nearest the image's mean grey level, confidently.

    Its margin is the distance to the midpoint between centres (0.05 at a centre), so where an
    example sits decides whether it is clean-correct, fragile under eps, or confidently wrong.
    """

    def __init__(self, scale: float = 400.0) -> None:
        super().__init__()
        self.scale = scale
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        grey = x.flatten(1).mean(1, keepdim=True)
        return -self.scale * (grey - CENTRES.to(x.device)) ** 2


def grey_split(levels: list[float], labels: list[int]) -> Split:
    """Uniform images of the given grey levels (in [0, 1]) and labels."""
    values = torch.tensor([round(v * 255) for v in levels], dtype=torch.uint8)
    return Split(values.view(-1, 1, 1, 1).expand(-1, 1, 28, 28).clone(), torch.tensor(labels))


def resolved(method: str, params: dict[str, Any] | None = None, **overrides: Any) -> tuple[RunConfig, Any, type]:
    """A resolved Fashion-MNIST config through the runner's own parsing; (cfg, params, class)."""
    cfg = RunConfig(
        method=method, arch="small-cnn", dataset="fashion-mnist", device="cpu", params=params or {}, **overrides
    )
    cfg, _spec, method_cls, parsed = prepare(cfg)
    return cfg, parsed, method_cls


def build(method: str, params: dict[str, Any] | None = None, **overrides: Any) -> Method:
    cfg, parsed, method_cls = resolved(method, params, **overrides)
    return method_cls(parsed, cfg)


def epoch_ctx(
    method: Method, model: nn.Module, train: Split, val: Split | None, epoch: int, epochs: int = 10
) -> EpochContext:
    return EpochContext(
        epoch=epoch,
        epochs=epochs,
        model=model,
        spec=SPEC,
        train=train,
        val=val,
        config=method.config,
        device=torch.device("cpu"),
        dist=DistInfo(),
    )


def batch_ctx(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 3, epoch: int = 0
) -> BatchContext:
    n = x.shape[0]
    return BatchContext(
        model=model,
        attack_model=model,
        x=x,
        y=y,
        eps=torch.full((n,), eps),
        step_size=torch.full((n,), eps / 4),
        steps=steps,
        weight=torch.ones(n),
        epoch=epoch,
        spec=SPEC,
    )
