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
  steps on CIFAR); the authors' CIFAR script uses 0.031 and 0.007, i.e. the same up to rounding.
- Optimizer, schedule, epochs and architecture are the run's (the authors: SGD 0.1, wd 2e-4,
  76 epochs, WRN-34-10), so methods are compared under one protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fairbench.errors import FairbenchError
from fairbench.losses import trades_loss
from fairbench.method import BatchContext, Method
from fairbench.registry import register_method


@register_method("trades")
class TRADES(Method):
    """Zhang et al. (ICML 2019): CE on clean inputs + beta * KL to PGD-KL adversarial inputs."""

    @dataclass
    class Params:
        beta: float = 6.0  # weight of the boundary (KL) term; the paper's CIFAR-10 value

        def validate(self) -> None:
            if not self.beta >= 0:
                raise FairbenchError(f"trades: beta must be >= 0, got {self.beta}")

    def loss(self, ctx: BatchContext) -> torch.Tensor:
        return trades_loss(ctx, self.params.beta)
