"""BAT, Balance Adversarial Training (Sun, Xu, Yao, Liang, Wu, Liang, Liu, Liu, "Improving Robust
Fairness via Balance Adversarial Training", AAAI 2023; code linked from the paper:
silvercherry/Improving-Robust-Fairness-via-Balance-Adversarial-Training at 9bcee67, ``train.py``
and ``train_mode/stop_to_{lastclean,firstadv}.py``; its model package is missing, so the code does
not run as published).

Two early-stopped PGD-KL attacks per batch, each from x + 0.001 N(0, I), with the model in eval
mode and the stopping checked on each iterate's prediction (the core's PGD with `EarlyStop`):

- x_lc ("source-class fairness"): the last iterate still classified correctly; the start if the
  start is already wrong, the last iterate if none was found wrong (``stop_to_lastclean``).
- x_fa: FAT's rule with tau = 1: an example found misclassified takes one more step, then stops
  (``stop_to_firstadv``).

Loss, each term a batch mean (``BAT_loss``):

    CE(f(x_lc), y) + beta * KL(f(x) || f(x_fa)) + KL(f(x_lc) || U) + KL(f(x_fa) || U)

with U the uniform distribution over the classes ("target-class fairness": adversarial
predictions pushed away from any one target class). The three forwards (x_lc, x_fa, x) run in
train mode. beta = 6 (the code's default). No per-class state.

Departures, with their reasons:

- The code's attacks drop stopped examples from the batch and return the rest shuffled, with
  labels and clean inputs kept aligned; here stopped examples are masked in place (same values,
  one order, no host sync).
- The code's script trains 200 epochs, counted from 1, with the learning rate /10 from epochs 75,
  90 and 100 (0-based 74, 89 and 99). The ``bat-cifar10`` preset runs its first 100 epochs,
  ``piecewise:0.74,0.89,0.99``: the last one at lr 1e-4 as the code's epoch 100 (its epochs
  101-200 stay at 1e-4; until issue 25 the preset dropped at 0-based 75 and 90, one epoch late;
  docs/paper-presets.md). Its model is ResNet-18; fairbench has PreAct ResNet-18.
- Inputs: the code's loader has only ``ToTensor`` after the crop and flip, so the images reach its
  network as raw [0, 1] pixels; whether its ResNet-18 normalizes them cannot be checked (the model
  package is missing). fairbench's models take [0, 1] images and normalize them by the data set's
  mean and std in their first layer (CIFAR-10: 0.4914/0.4822/0.4465, 0.2471/0.2435/0.2616). eps
  and step are in [0, 1] pixel space in both: the code's 0.031 and 0.007, which the
  ``bat-cifar10`` preset sets; without it a run has the data set's defaults (CIFAR-10: 8/255 and
  2/255, 1.2% and 12% larger).
- Model selection: fairbench evaluates the last epoch (or the run's selection rule, never the
  test set). The attacks run in fp32 (the core's PGD).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from fairbench.errors import FairbenchError
from fairbench.eval.attacks import EarlyStop, eval_mode, pgd
from fairbench.methods import register_method
from fairbench.methods.base import BatchContext, Method
from fairbench.methods.losses import kl_per_example, weighted_mean
from fairbench.methods.space import LogUniform

LAST_CORRECT = EarlyStop("last-correct")
FIRST_WRONG_TAU1 = EarlyStop("first-wrong", tau=1)


def kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(logits) || U) per example: log K minus the prediction's entropy."""
    log_p = F.log_softmax(logits, dim=1)
    return (log_p.exp() * log_p).sum(1) + math.log(logits.shape[1])


def bat_attacks(ctx: BatchContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_lc, x_fa): BAT's two early-stopped PGD-KL attacks, against one clean target."""
    with torch.no_grad(), eval_mode(ctx.attack_model):
        clean = ctx.attack_model(ctx.x)
    common = dict(
        eps=ctx.eps, step_size=ctx.step_size, steps=ctx.steps, objective="kl", init="normal", clean_logits=clean
    )
    x_lc = pgd(ctx.attack_model, ctx.x, ctx.y, stop=LAST_CORRECT, **common)
    x_fa = pgd(ctx.attack_model, ctx.x, ctx.y, stop=FIRST_WRONG_TAU1, **common)
    return x_lc, x_fa


@register_method("bat")
class BAT(Method):
    """Sun et al. (AAAI 2023) BAT: CE at the last still-correct PGD iterate, TRADES' KL at the first
    wrong one (FAT, tau 1), both adversarial predictions pulled toward uniform."""

    space: ClassVar[dict] = {"beta": LogUniform(1.0, 12.0)}  # `fairbench tune` (+ lr, weight decay)

    @dataclass
    class Params:
        beta: float = 6.0  # weight of KL(f(x) || f(x_fa))

        def validate(self) -> None:
            if not self.beta >= 0:
                raise FairbenchError(f"bat: beta must be >= 0, got {self.beta}")

    def loss(self, ctx: BatchContext) -> torch.Tensor:
        x_lc, x_fa = bat_attacks(ctx)
        lc, fa, clean = (ctx.model(x).float() for x in (x_lc, x_fa, ctx.x))
        terms = (
            F.cross_entropy(lc, ctx.y, reduction="none")
            + self.params.beta * kl_per_example(clean, fa)
            + kl_to_uniform(lc)
            + kl_to_uniform(fa)
        )
        return weighted_mean(terms, ctx.weight)
