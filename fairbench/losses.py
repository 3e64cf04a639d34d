"""Base adversarial-training losses that methods compose: PGD-AT (Madry) and TRADES (Zhang).

Each returns per-example terms so a method can weight them (FRL) or mix them (FairAT).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fairbench.attacks import pgd
from fairbench.method import BatchContext


def pgd_at_terms(ctx: BatchContext) -> torch.Tensor:
    """Madry et al. (ICLR 2018): cross-entropy on PGD adversarial examples, per example."""
    x_adv = pgd(ctx.attack_model, ctx.x, ctx.y, eps=ctx.eps, step_size=ctx.step_size,
                steps=ctx.steps, objective="ce", init="uniform")
    return F.cross_entropy(ctx.model(x_adv).float(), ctx.y, reduction="none")


def trades_terms(ctx: BatchContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Zhang et al. (ICML 2019), Eq. 5: per-example natural CE(f(x), y) and boundary KL(f(x)||f(x')).

    The inner maximization starts at x + 0.001·N(0, I) and ascends the KL, labels unused (TRADES'
    code). The clean and adversarial batches go through the training model in two forward
    passes, as in TRADES' code, so each gets its own batch-norm statistics; the clean logits serve
    both the CE and the KL target (TRADES runs the clean forward twice, which only updates the
    running statistics once more).
    """
    x_adv = pgd(ctx.attack_model, ctx.x, eps=ctx.eps, step_size=ctx.step_size, steps=ctx.steps,
                objective="kl", init="normal")
    clean, adv = ctx.model(ctx.x).float(), ctx.model(x_adv).float()
    natural = F.cross_entropy(clean, ctx.y, reduction="none")
    boundary = F.kl_div(F.log_softmax(adv, dim=1), F.softmax(clean, dim=1), reduction="none").sum(1)
    return natural, boundary


def trades_loss(ctx: BatchContext, beta: float) -> torch.Tensor:
    """TRADES' objective: mean CE(f(x), y) + beta * mean KL(f(x)||f(x')), weighted by the plan."""
    natural, boundary = trades_terms(ctx)
    return weighted_mean(natural, ctx.weight) + beta * weighted_mean(boundary, ctx.weight)


def weighted_mean(per_example: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of per-example losses weighted by the plan's weights (weights 1 give the plain mean)."""
    return (per_example * weight).sum() / per_example.shape[0]
