"""Base adversarial-training losses that methods compose: PGD-AT (Madry) and TRADES (Zhang).

Each returns per-example terms so a method can weight them (FRL) or mix them (FairAT).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fairbench.eval.attacks import pgd
from fairbench.methods.base import BatchContext


def pgd_at_terms(ctx: BatchContext) -> torch.Tensor:
    """Madry et al. (ICLR 2018): cross-entropy on PGD adversarial examples, per example."""
    return pgd_at_outputs(ctx)[0]


def pgd_at_outputs(ctx: BatchContext) -> tuple[torch.Tensor, torch.Tensor]:
    """`pgd_at_terms` and the adversarial logits of the training forward they come from (for a
    method's statistics of the batch: CFA, DAFA, FAAL)."""
    x_adv = pgd(
        ctx.attack_model,
        ctx.x,
        ctx.y,
        eps=ctx.eps,
        step_size=ctx.step_size,
        steps=ctx.steps,
        objective="ce",
        init="uniform",
    )
    logits = ctx.model(x_adv).float()
    return F.cross_entropy(logits, ctx.y, reduction="none"), logits


def trades_terms(ctx: BatchContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Zhang et al. (ICML 2019), Eq. 5: per-example natural CE(f(x), y) and boundary KL(f(x)||f(x')).

    The inner maximization starts at x + 0.001·N(0, I) and ascends the KL, labels unused (TRADES'
    code). The clean and adversarial batches go through the training model in two forward
    passes, as in TRADES' code, so each gets its own batch-norm statistics; the clean logits serve
    both the CE and the KL target (TRADES runs the clean forward twice, which only updates the
    running statistics once more).
    """
    natural, boundary, _ = trades_outputs(ctx)
    return natural, boundary


def trades_outputs(ctx: BatchContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`trades_terms` and the adversarial logits of the training forward they come from."""
    x_adv = pgd(
        ctx.attack_model, ctx.x, eps=ctx.eps, step_size=ctx.step_size, steps=ctx.steps, objective="kl", init="normal"
    )
    clean, adv = ctx.model(ctx.x).float(), ctx.model(x_adv).float()
    natural = F.cross_entropy(clean, ctx.y, reduction="none")
    return natural, kl_per_example(clean, adv), adv


def kl_per_example(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(target_logits) || softmax(logits)) per example (TRADES' boundary term)."""
    return F.kl_div(F.log_softmax(logits, dim=1), F.softmax(target_logits, dim=1), reduction="none").sum(1)


def trades_loss(ctx: BatchContext, beta: float) -> torch.Tensor:
    """TRADES' objective: mean CE(f(x), y) + beta * mean KL(f(x)||f(x')), weighted by the plan."""
    natural, boundary = trades_terms(ctx)
    return weighted_mean(natural, ctx.weight) + beta * weighted_mean(boundary, ctx.weight)


def weighted_mean(per_example: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of per-example losses weighted by the plan's weights (weights 1 give the plain mean)."""
    return (per_example * weight).sum() / per_example.shape[0]
