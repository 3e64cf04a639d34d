"""TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan, "Theoretically Principled Trade-off between
Robustness and Accuracy", ICML 2019; code: yaodongyu/TRADES, trades.py).

Loss (Eq. 5 of the paper, as the authors' code computes it):

    CE(f(x), y)  +  beta * KL(f(x) || f(x'))       (both averaged over the batch: KL 'batchmean')

with the inner maximization x' = argmax KL(f(x) || f(x')) over the L-inf ball: start at
x + 0.001·N(0, I), 10 sign-gradient steps on the summed KL with the model in eval mode, the clean
target recomputed in eval mode, projection onto the ball and clipping to [0, 1]. Labels are not
used by the attack. beta = 6 (the paper's CIFAR-10 choice, the code's default).

Choices and departures, with their reasons:

- Batch norm: the clean and adversarial batches go through the model in **two** forward passes, as
  in the authors' ``trades_loss``, so each is normalized with its own batch statistics (what the core's
  `trades_terms` does). Concatenating them into one forward would mix the statistics of clean
  and adversarial inputs, which changes the method. The authors run the clean forward twice (once
  for the CE, once for the KL target); in train mode both give the same logits, so one is reused.
- eps, step size and steps come from the run (the harness's single threat model: 8/255, 2/255, 10
  steps on CIFAR). The authors' CIFAR script (train_trades_cifar10.py at 6e8e11b) uses eps 0.031
  and step 0.007: fairbench's eps 8/255 = 0.03137 is 1.2% larger and its step 2/255 = 0.00784 is
  12% larger. Ten steps of 0.007 cover 2.26 eps, ten of 2/255 2.5 eps; both reach the border of
  the ball. Pass ``--eps 0.031 --step-size 0.007`` for the authors' numbers (the evaluation then
  uses that eps too).
- The start x + 0.001·N(0, I) is clipped to the ball and to [0, 1] here; the authors' first
  forward sees it unclipped (by at most a few 0.001 outside [0, 1]).
- Inputs: fairbench's models take [0, 1] images and normalize them by the data set's mean and std
  in their first layer (CIFAR-10: 0.4914/0.4822/0.4465, 0.2471/0.2435/0.2616); the authors' loader
  has only ``ToTensor`` and their WRN no normalization, so their network sees raw [0, 1] pixels. The
  attack and eps are in [0, 1] pixel space in both; the network's first layer differs by this
  fixed affine map (which changes the optimization, e.g. what weight decay penalizes).
- Precision: the attack runs in fp32 whatever the run's autocast (the core's PGD); the loss's two
  forwards run under the run's bf16 autocast on a GPU (``--no-amp`` for fp32, as the authors).
- Optimizer, schedule, epochs and architecture are the run's (the authors: SGD 0.1, momentum 0.9,
  wd 2e-4, 76 epochs with lr x0.1 at epoch 75, WRN-34-10), so methods are compared under one
  protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fairbench.errors import FairbenchError
from fairbench.methods import register_method
from fairbench.methods.base import BatchContext, Method
from fairbench.methods.losses import trades_loss
from fairbench.methods.space import LogUniform


@register_method("trades")
class TRADES(Method):
    """Zhang et al. (ICML 2019): CE on clean inputs + beta * KL to PGD-KL adversarial inputs."""

    space: ClassVar[dict] = {"beta": LogUniform(1.0, 12.0)}  # `fairbench tune` (+ lr, weight decay)

    @dataclass
    class Params:
        beta: float = 6.0  # weight of the boundary (KL) term; the paper's CIFAR-10 value

        def validate(self) -> None:
            if not self.beta >= 0:
                raise FairbenchError(f"trades: beta must be >= 0, got {self.beta}")

    def loss(self, ctx: BatchContext) -> torch.Tensor:
        return trades_loss(ctx, self.params.beta)
