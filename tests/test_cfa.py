"""CFA: eps_k and beta_k from given t_k by hand, FAWA's gate by delta, the loss as the code forms
it, parameter checks."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from fairbench.errors import FairbenchError
from fairbench.methods.cfa import calibrated_b, calibrated_eps, fawa_accepts, validation_robust_accuracy
from fairbench.methods.losses import trades_outputs

from methods_helpers import CENTRES, MeanGreyModel, bars, batch_ctx, build, epoch_ctx, grey_split

T = torch.tensor([0.2, 0.5, 0.8])


def test_ccm_eps_and_ccr_beta_from_t_by_hand() -> None:
    # eps_k = (lambda1 + t_k) * eps with lambda1 0.3, eps 8/255
    assert torch.allclose(calibrated_eps(T, 0.3, 8 / 255), torch.tensor([0.5, 0.8, 1.1]) * 8 / 255)
    # beta_k = (0.5 + t_k) * 6 = 4.2, 6, 7.8; b_k = beta_k / (1 + beta_k)
    expected = torch.tensor([4.2 / 5.2, 6 / 7, 7.8 / 8.8])
    assert torch.allclose(calibrated_b(T, 0.5, 6.0, 3), expected, atol=1e-7)
    assert torch.allclose(calibrated_b(None, 0.5, 6.0, 3), torch.full((3,), 6 / 7))  # before `begin`


def test_plan_gives_each_example_its_class_eps_from_begin_on() -> None:
    method = build("cfa", {"fawa": "false", "lambda1": "0.5"}, epochs=20)  # begin: epoch 1 of 20
    t = torch.linspace(0, 0.9, 10)
    split = bars(2)
    ctx = epoch_ctx(method, MeanGreyModel(), split, None, epoch=1, epochs=20)
    assert method.plan_epoch(ctx).eps is None  # no t measured yet: the run's eps
    method.t = t
    plan = method.plan_epoch(ctx)
    assert torch.allclose(plan.eps, (0.5 + t[split.labels]) * method.config.eps)
    assert ctx.log["cfa_eps"]["trouser"] == round(float((0.5 + t[1]) * method.config.eps), 5)
    assert method.plan_epoch(epoch_ctx(method, MeanGreyModel(), split, None, epoch=0, epochs=20)).eps is None
    off = build("cfa", {"fawa": "false", "ccm": "false"}, epochs=20)
    off.t = t
    assert off.plan_epoch(ctx).eps is None


def test_loss_is_the_codes_normalized_trades_with_class_b_and_an_unscaled_step() -> None:
    torch.manual_seed(0)
    method = build("cfa", {"fawa": "false"}, epochs=20)
    method.t = torch.linspace(0, 0.9, 10)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    data = bars(2)
    ctx = batch_ctx(model, data.images.float() / 255, data.labels, eps=0.05, epoch=5)
    ctx.eps = ctx.eps * (0.3 + method.t[data.labels])  # the plan's class eps; the step stays 0.1 / 4
    torch.manual_seed(1)
    loss = method.loss(ctx)
    torch.manual_seed(1)
    natural, boundary, adv = trades_outputs(dataclasses.replace(ctx, step_size=torch.full((20,), 0.1 / 4)))
    b = calibrated_b(method.t, 0.5, 6.0, 10)[data.labels]
    assert torch.allclose(loss, ((1 - b) * natural + b * boundary).mean())
    # each example's robust correctness entered the class statistics
    sums, counts = method.correct.totals(epoch_ctx(method, model, data, None, 0).dist)
    assert torch.equal(counts, torch.full((10,), 2.0, dtype=torch.float64))
    assert torch.equal(sums[:, 0].sum(), (adv.argmax(1) == data.labels).sum().double())


def test_end_epoch_turns_the_counts_into_t() -> None:
    method = build("cfa", {"fawa": "false"})
    method.correct.add(torch.tensor([0, 0, 1, 1, 1, 1]), torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.0]))
    ctx = epoch_ctx(method, MeanGreyModel(), bars(1), None, epoch=0)
    method.end_epoch(ctx)
    assert method.t[:2].tolist() == [0.5, 0.75] and method.t[2:].sum() == 0
    assert method.correct.totals(ctx.dist)[1].sum() == 0  # reset for the next epoch
    assert ctx.log["cfa_train_robust"]["trouser"] == 0.75


def fragile_val() -> tuple:
    """Two images per class at its centre (robust at eps 0.02); class 3's second one 0.04 above its
    centre, 0.01 from the boundary with class 4 (an attack of eps 0.02 crosses it)."""
    levels = [float(c) for c in CENTRES] * 2
    levels[13] = float(CENTRES[3]) + 0.04
    return grey_split(levels, list(range(10)) * 2)


@pytest.mark.parametrize("delta, accepted", [(0.5, True), (0.6, False), (0.0, True), (1.0, False)])
def test_fawa_accepts_or_refuses_by_delta(delta: float, accepted: bool) -> None:
    method = build("cfa", {"delta": str(delta)}, val_per_class=2, eps=0.02, step_size=0.005)
    val = fragile_val()
    ctx = epoch_ctx(method, MeanGreyModel(), bars(1), val, epoch=0)
    accuracy = validation_robust_accuracy(ctx)
    assert accuracy.tolist() == [1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert method.accept_average(ctx) is accepted and fawa_accepts(accuracy, delta) is accepted
    assert ctx.log["cfa_fawa_accepted"] is accepted and ctx.log["cfa_val_robust"]["dress"] == 0.5
    assert method.weight_averaging() == 0.85


@pytest.mark.parametrize(
    "params, message",
    [
        ({"lambda1": "-0.1"}, "lambda1 must be >= 0"),
        ({"lambda2": "-1"}, "lambda2 must be >= 0"),
        ({"delta": "1.5"}, r"delta must be in \[0, 1\]"),
        ({"delta": "-0.1"}, r"delta must be in \[0, 1\]"),
        ({"alpha": "1"}, r"alpha must be in \[0, 1\)"),
        ({"base": "mart"}, "base must be one of"),
        ({"base": "pgd-at"}, "with base=pgd-at pass ccr=false"),
        ({"begin_fraction": "1"}, "begin_fraction"),
    ],
)
def test_bad_parameters_are_one_clear_error(params: dict, message: str) -> None:
    with pytest.raises(FairbenchError, match=message):
        build("cfa", params, val_per_class=2)


def test_fawa_needs_a_validation_split() -> None:
    with pytest.raises(FairbenchError, match="--val-per-class"):
        build("cfa")
    assert build("cfa", {"fawa": "false"}).weight_averaging() is None
