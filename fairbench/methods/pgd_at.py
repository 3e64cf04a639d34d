"""Standard PGD adversarial training (Madry et al., "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018): minimize the cross-entropy of PGD adversarial examples.

The attack is the core's PGD-10 with a uniform random start, eps 8/255 and step 2/255 on CIFAR
(0.1 and 0.025 on Fashion-MNIST), run with the model in eval mode (as TRADES and FRL do; Madry's
code attacks in train mode), in fp32 whatever the run's autocast.

Inputs: the model takes [0, 1] images and normalizes them by the data set's mean and std in its
first layer (CIFAR-10: 0.4914/0.4822/0.4465, 0.2471/0.2435/0.2616); eps is in [0, 1] pixel space.
Madry's CIFAR-10 code standardizes each image by its own mean and std instead.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from fairbench.methods import register_method
from fairbench.methods.base import BatchContext, Method
from fairbench.methods.losses import pgd_at_terms, weighted_mean


@register_method("pgd-at")
class PGDAT(Method):
    """Madry et al. (ICLR 2018): cross-entropy on PGD-10 adversarial examples."""

    # `fairbench tune`: only the shared training hyperparameters (fairbench.methods.space.TRAINING_SPACE)
    space: ClassVar[dict] = {}

    def loss(self, ctx: BatchContext) -> torch.Tensor:
        return weighted_mean(pgd_at_terms(ctx), ctx.weight)
