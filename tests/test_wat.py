"""WAT: the Hedge weights after two epochs of given costs, by hand; the loss against the code's
class loop; the validation costs; parameter checks."""

from __future__ import annotations

import fairbench.methods.wat as wat
import pytest
import torch
import torch.nn.functional as F
from fairbench.errors import FairbenchError
from fairbench.eval.attacks import pgd
from fairbench.methods.losses import kl_per_example, trades_terms

from methods_helpers import MeanGreyModel, bars, batch_ctx, build, epoch_ctx


def test_hedge_weights_after_two_epochs_of_given_costs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two classes and the average; costs (1, 2, 1.5) then (3, 0, 1.5) add up to (4, 2, 3), and
    w = 2 * softmax(0.1 * (4, 2, 3)) = (0.734331, 0.601219, 0.664450), worked out by hand."""
    costs = iter(
        [torch.tensor([1.0, 2.0, 1.5], dtype=torch.float64), torch.tensor([3.0, 0.0, 1.5], dtype=torch.float64)]
    )
    monkeypatch.setattr(wat, "validation_costs", lambda ctx, beta: next(costs))
    method = build("wat", val_per_class=2)
    method.cumulative_cost = torch.zeros(3, dtype=torch.float64)  # two classes (the code's class_num=2)
    assert torch.equal(method.weights, torch.ones(11))  # all 1 before the first epoch, as in the code
    ctx = epoch_ctx(method, MeanGreyModel(), bars(1), bars(1), epoch=0)
    method.end_epoch(ctx)
    method.end_epoch(ctx)
    assert torch.allclose(method.weights, torch.tensor([0.7343308, 0.6012192, 0.6644500]), atol=1e-6)
    assert torch.allclose(wat.hedge_weights(torch.tensor([4.0, 2.0, 3.0]), 0.1), method.weights)


def test_loss_matches_the_codes_class_loop() -> None:
    torch.manual_seed(0)
    method = build("wat", val_per_class=2)
    method.weights = torch.linspace(0.5, 1.5, 11)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    data = bars(3)
    ctx = batch_ctx(model, data.images.float() / 255, data.labels, eps=0.1)
    torch.manual_seed(1)
    loss = method.loss(ctx)
    torch.manual_seed(1)
    natural, boundary = trades_terms(ctx)
    w, y = method.weights, data.labels
    nat = sum(natural[y == c].sum() * w[c] for c in range(10))  # worst_class_adversarial_train.py
    bndy = sum(boundary[y == c].sum() * w[c] for c in range(10))
    expected = (nat + 6.0 * bndy) / len(y) + (natural.mean() + 6.0 * boundary.mean()) * w[10]
    assert torch.allclose(loss, expected)


def test_validation_costs_are_class_means_and_the_overall_mean() -> None:
    torch.manual_seed(0)
    method = build("wat", val_per_class=2, eps=0.05, step_size=0.0125, attack_steps=3)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    val = bars(2, seed=3)
    ctx = epoch_ctx(method, model, bars(1), val, epoch=0)
    torch.manual_seed(2)
    costs = wat.validation_costs(ctx, beta=6.0)
    torch.manual_seed(2)
    x = val.images.float() / 255
    x_adv = pgd(model, x, eps=0.05, step_size=0.0125, steps=3, objective="kl", init="normal")
    with torch.no_grad():
        ce = F.cross_entropy(model(x), val.labels, reduction="none")
        kl = kl_per_example(model(x), model(x_adv))
    per_class = torch.stack([ce[val.labels == c].mean() + 6 * kl[val.labels == c].mean() for c in range(10)])
    expected = torch.cat([per_class, (ce.mean() + 6 * kl.mean()).view(1)])
    assert costs.shape == (11,) and torch.allclose(costs.float(), expected, atol=1e-5)


@pytest.mark.parametrize("params, message", [({"eta": "0"}, "eta must be > 0"), ({"beta": "-1"}, "beta must be >= 0")])
def test_bad_parameters_are_one_clear_error(params: dict, message: str) -> None:
    with pytest.raises(FairbenchError, match=message):
        build("wat", params, val_per_class=2)


def test_needs_a_validation_split() -> None:
    with pytest.raises(FairbenchError, match="--val-per-class"):
        build("wat")
