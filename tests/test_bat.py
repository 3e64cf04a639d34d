"""BAT: the uniform-prediction term by hand, the two early-stopped attacks on a hand-built model,
and the loss as the code composes it (the stopping rule itself: tests/test_attacks.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from fairbench.errors import FairbenchError
from fairbench.methods.bat import bat_attacks, kl_to_uniform
from fairbench.methods.losses import kl_per_example
from torch import nn

from methods_helpers import bars, batch_ctx, build


def test_kl_to_uniform_by_hand() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.log(3), 0.0, 0.0, 0.0]])
    # uniform: 0; p = (1/2, 1/6, 1/6, 1/6): sum p log(4p) = 1/2 log 2 + 3/6 log(2/3)
    expected = torch.tensor([0.0, 0.5 * math.log(2) + 0.5 * math.log(2 / 3)])
    assert torch.allclose(kl_to_uniform(logits), expected, atol=1e-6)
    ref = F.kl_div(torch.full((2, 4), math.log(0.25)), F.softmax(logits, 1), reduction="none").sum(1)
    assert torch.allclose(kl_to_uniform(logits), ref, atol=1e-6)  # the code's KLDivLoss form


class Threshold(nn.Module):
    """Ten-class logits that only depend on the mean grey level: class 0 below 0.5, class 1 above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = x.flatten(1).mean(1)
        logits = torch.full((x.shape[0], 10), -20.0)
        logits[:, 0], logits[:, 1] = 0.0, 40 * (grey - 0.5)
        return logits


def test_the_two_attacks_stop_where_bat_says() -> None:
    """x_lc is still classified correctly everywhere; x_fa crosses the boundary for some examples
    (the KL ascent goes either way from the random start: each attack draws its own)."""
    torch.manual_seed(0)
    x = torch.linspace(0.35, 0.49, 16).view(-1, 1, 1, 1).expand(-1, 1, 28, 28).clone()
    y = torch.zeros(16, dtype=torch.long)
    ctx = batch_ctx(Threshold(), x, y, eps=0.2, steps=10)
    x_lc, x_fa = bat_attacks(ctx)
    assert (Threshold()(x_lc).argmax(1) == 0).all()
    crossed = Threshold()(x_fa).argmax(1) != 0
    assert crossed.any() and not crossed.all()
    assert ((x_lc - x).abs().amax((1, 2, 3)) <= 0.2).all() and ((x_fa - x).abs().amax((1, 2, 3)) <= 0.2).all()


def test_loss_is_ce_at_lc_plus_beta_kl_at_fa_plus_both_uniform_terms() -> None:
    torch.manual_seed(0)
    method = build("bat")
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    data = bars(2)
    ctx = batch_ctx(model, data.images.float() / 255, data.labels, eps=0.1)
    torch.manual_seed(1)
    loss = method.loss(ctx)
    torch.manual_seed(1)
    x_lc, x_fa = bat_attacks(ctx)
    lc, fa, clean = model(x_lc), model(x_fa), model(ctx.x)
    expected = (
        F.cross_entropy(lc, data.labels)
        + 6 * kl_per_example(clean, fa).mean()
        + kl_to_uniform(lc).mean()
        + kl_to_uniform(fa).mean()
    )
    assert torch.allclose(loss, expected)


def test_bad_beta_is_one_clear_error() -> None:
    with pytest.raises(FairbenchError, match="beta must be >= 0"):
        build("bat", {"beta": "-1"})
