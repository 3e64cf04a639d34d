"""DAFA, Distance-Aware Fair Adversarial Training (Lee, Lee, Jang, Park, Bae, Yoon, ICLR 2024;
code: rucy74/DAFA at c60ba83, ``train.py``, ``losses.py``, ``utils.calculate_class_weights``).

A TRADES warm-up for the first 70 of the paper's 110 epochs. During the last warm-up epoch each
training example's softmax on its adversarial input (the training forward) is recorded; p_i(j) is
the mean probability of class j over class-i examples (the class-similarity matrix). After that
epoch the class weights are computed once and frozen:

    W_i = 1 + sum over j != i of (lambda * p_i(j) * p_j(j)   if p_i(i) < p_j(j)
                                  -lambda * p_j(i) * p_i(i)  otherwise)

(lambda 1.0 on CIFAR-10; the code suggests 1.5 for CIFAR-100). From then on each example of class y
is attacked with eps W_y * eps and step W_y * step, and the loss is
mean(W_y * CE(f(x), y)) + beta * mean(KL(f(x) || f(x'))) (TRADES base), or mean(W_y * CE(f(x'), y))
(PGD-AT base). beta 6.

The per-class probability sums are `ClassStats` on the device (no host sync, summed over DDP
ranks, part of the method's state so a resume inside the recording epoch is exact).

Guard: the formula has no lower bound (a class that absorbs many other classes' adversarial
predictions loses weight), and a weight <= 0 would make its eps and step <= 0 and its loss weight
negative. The code does not clip; here weights below ``min_weight`` (default 0.1, far below what the
paper reports) are raised to it, and the epoch's log names the classes that were (``dafa_raised``).

Departures, with their reasons:

- The warm-up is a fraction of the run (70/110), since fairbench's runs have many lengths; the
  recording epoch is the last one before it ends, at least the first epoch.
- The code's PGD-AT variant takes a class-wise step, projects onto the class-wise ball, then takes a
  second, global step and projects onto the global eps ball, which cancels the class-wise margin;
  here the PGD-AT base follows the paper (class-wise eps and step, the core's uniform start, where
  the code starts at x + 0.001 N(0, I)). The TRADES base, the paper's main setting, matches the code.
- The code's optimizer is SGD with Nesterov momentum (``train.py`` inverts the ``--nesterov`` flag,
  so Nesterov is the default) and its model ResNet-18; fairbench's SGD is plain momentum and its
  nearest model PreAct ResNet-18. The ``dafa-cifar10`` preset keeps the 110 epochs and the /10 from
  epochs 100 and 105, which the code counts from 1: 0-based 99 and 104, ``piecewise:0.9,0.94545``
  (until issue 25 the preset dropped at 0-based 100 and 105, one epoch late).
- Inputs: the code's loader (``datasets.py``) has only ``ToTensor`` after the crop and flip, and its
  ResNet-18 no normalization, so its network sees raw [0, 1] pixels; fairbench's models take [0, 1]
  images and normalize them by the data set's mean and std in their first layer (CIFAR-10:
  0.4914/0.4822/0.4465, 0.2471/0.2435/0.2616). eps and step are in [0, 1] pixel space in both: the
  code's 0.031 and 0.007 (and test eps 0.031), which the ``dafa-cifar10`` preset sets; without it a
  run has the data set's defaults (CIFAR-10: 8/255 and 2/255, 1.2% and 12% larger).
- The code reuses one clean forward in eval mode for the attack and one in train mode for the loss,
  as fairbench does; the attacks run in fp32 (the core's PGD).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fairbench.data.datasets import get_dataset
from fairbench.errors import check_all
from fairbench.methods import register_method
from fairbench.methods.base import BatchContext, EpochContext, EpochPlan, Method
from fairbench.methods.class_stats import ClassStats
from fairbench.methods.losses import pgd_at_outputs, trades_outputs, weighted_mean
from fairbench.methods.space import LogUniform, Uniform

BASES = ("trades", "pgd-at")


def dafa_weights(similarity: torch.Tensor, lam: float) -> torch.Tensor:
    """W from the class-similarity matrix p (rows: true class i, columns: predicted class j)."""
    p = similarity.double()
    d = p.diagonal()
    harder = d[:, None] < d[None, :]  # p_i(i) < p_j(j)
    terms = torch.where(harder, p * d[None, :], -p.T * d[:, None])
    terms.fill_diagonal_(0)
    return 1 + lam * terms.sum(1)


@register_method("dafa")
class DAFA(Method):
    """Lee et al. (ICLR 2024) DAFA: after a TRADES warm-up, class-wise eps, step and loss weights
    from how similar the classes are under attack."""

    # `fairbench tune` (+ lr, weight decay): the share of the run before DAFA starts, and its lambda
    space: ClassVar[dict] = {
        "warmup_fraction": Uniform(0.2, 0.8),
        "lam": Uniform(0.25, 2.0),
        "beta": LogUniform(1.0, 12.0),
    }

    @dataclass
    class Params:
        base: str = "trades"  # trades | pgd-at
        beta: float = 6.0  # TRADES' beta
        lam: float = 1.0  # DAFA's lambda (CIFAR-10; 1.5 for CIFAR-100 in the code)
        warmup_fraction: float = 70 / 110  # the paper's 70 of 110 epochs
        min_weight: float = 0.1  # class weights below this are raised to it (see the docstring)

        def validate(self) -> None:
            checks = [
                (self.base in BASES, f"base must be one of {', '.join(BASES)}, got '{self.base}'"),
                (self.beta >= 0, f"beta must be >= 0, got {self.beta}"),
                (self.lam >= 0, f"lam must be >= 0, got {self.lam}"),
                (0 < self.warmup_fraction < 1, f"warmup_fraction must be in (0, 1), got {self.warmup_fraction}"),
                (0 < self.min_weight <= 1, f"min_weight must be in (0, 1], got {self.min_weight}"),
            ]
            check_all(checks, "dafa: ")

        def unused(self) -> frozenset[str]:
            """The parameters this configuration leaves unused (a report row's label omits them)."""
            return frozenset() if self.base == "trades" else frozenset({"beta"})

    def __init__(self, params: Any, config: Any) -> None:
        super().__init__(params, config)
        k = get_dataset(config.dataset).num_classes
        self.probs = ClassStats(k, k)  # adversarial softmax sums per true class, recording epoch only
        self.weights: torch.Tensor | None = None  # W, frozen once measured

    def recording_epoch(self, epochs: int) -> int:
        """The last warm-up epoch (0-based), whose adversarial predictions give the weights."""
        return max(1, round(self.params.warmup_fraction * epochs)) - 1

    def plan_epoch(self, ctx: EpochContext) -> EpochPlan:
        plan = EpochPlan(torch.arange(len(ctx.train), device=ctx.device))
        if self.weights is not None:
            w = self.weights.to(ctx.device)[ctx.train.labels]
            assert ctx.config.eps is not None  # filled in by RunConfig.resolve
            plan.eps, plan.weight = w * ctx.config.eps, w  # the trainer scales the step with eps
        return plan

    def loss(self, ctx: BatchContext) -> torch.Tensor:
        if self.params.base == "trades":
            natural, boundary, adv = trades_outputs(ctx)
            loss = weighted_mean(natural, ctx.weight) + self.params.beta * boundary.mean()
        else:
            ce, adv = pgd_at_outputs(ctx)
            loss = weighted_mean(ce, ctx.weight)
        if ctx.epoch == self.recording_epoch(self.config.epochs):
            self.probs.add(ctx.y, torch.softmax(adv.detach(), 1))
        return loss

    def end_epoch(self, ctx: EpochContext) -> None:
        if ctx.epoch != self.recording_epoch(ctx.epochs):
            return
        similarity = self.probs.means(ctx.dist)
        self.probs.reset()
        raw = dafa_weights(similarity, self.params.lam)
        raised = raw < self.params.min_weight
        self.weights = raw.clamp(min=self.params.min_weight).float().cpu()
        named = lambda t: {c: round(float(v), 5) for c, v in zip(ctx.spec.classes, t)}  # noqa: E731
        ctx.log["dafa_weight"] = named(self.weights)
        ctx.log["dafa_raised"] = [c for c, r in zip(ctx.spec.classes, raised.tolist()) if r]

    def state_dict(self) -> dict[str, Any]:
        return {"probs": self.probs.state_dict(), "weights": None if self.weights is None else self.weights.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.probs.load_state_dict(state["probs"])
        self.weights = None if state["weights"] is None else state["weights"].float().cpu().clone()
