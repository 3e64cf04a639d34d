"""TRADES (fairbench/methods/trades.py) and the TRADES base terms (fairbench/methods/losses.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from fairbench.errors import FairbenchError
from fairbench.eval.attacks import pgd
from fairbench.methods.losses import trades_terms
from fairbench.models import create_model

from methods_helpers import SPEC, bars, batch_ctx, build


def test_beta_zero_is_clean_cross_entropy_training() -> None:
    torch.manual_seed(0)
    data = bars(4)
    x, y = data.images.float() / 255, data.labels
    model = create_model("small-cnn", SPEC).train()
    twin = copy.deepcopy(model)
    loss = build("trades", {"beta": "0"}).loss(batch_ctx(model, x, y, eps=0.1))
    loss.backward()
    reference = F.cross_entropy(twin(x), y)
    reference.backward()
    assert torch.allclose(loss, reference, atol=1e-6)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6)


def test_attack_ascends_kl_without_labels() -> None:
    torch.manual_seed(0)
    data = bars(6)
    x, y = data.images.float() / 255, data.labels
    model = create_model("small-cnn", SPEC).eval()  # eval: the clean logits do not depend on the batch
    ctx = batch_ctx(model, x, y, eps=0.1, steps=10)
    torch.manual_seed(1)
    natural, boundary = trades_terms(ctx)
    torch.manual_seed(1)
    natural_other, boundary_other = trades_terms(batch_ctx(model, x, (y + 3) % 10, eps=0.1, steps=10))
    assert torch.equal(boundary, boundary_other)  # the attack never looks at the labels
    assert not torch.allclose(natural, natural_other)
    x_ce = pgd(model, x, y, eps=0.1, step_size=0.025, steps=10, objective="ce")
    with torch.no_grad():
        clean = F.softmax(model(x), 1)
        kl_ce = F.kl_div(F.log_softmax(model(x_ce), 1), clean, reduction="none").sum(1)
    assert boundary.mean() > 1.2 * kl_ce.mean()  # it maximizes KL, which CE-PGD does not


def test_bad_beta_is_a_clear_error() -> None:
    with pytest.raises(FairbenchError, match="beta"):
        build("trades", {"beta": "-1"})
