"""DAFA: the class weights from a given similarity matrix by hand, the guard for weights <= 0,
when the similarity is recorded, and the plan and loss after the warm-up."""

from __future__ import annotations

import pytest
import torch
from fairbench.errors import FairbenchError
from fairbench.methods.dafa import dafa_weights
from fairbench.methods.losses import trades_outputs

from methods_helpers import MeanGreyModel, bars, batch_ctx, build, epoch_ctx

# p_i(j): rows the true class, columns the predicted class
SIMILARITY = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])


def test_weights_from_a_given_similarity_matrix_by_hand() -> None:
    """p_ii = (0.6, 0.7, 0.8). Class 0 is the hardest: it gains p_0(1) p_1(1) + p_0(2) p_2(2)
    = 0.21 + 0.08; class 1 gains p_1(2) p_2(2) = 0.08 from class 2 and loses p_0(1) p_1(1) = 0.21
    to class 0; class 2 loses p_0(2) p_2(2) + p_1(2) p_2(2) = 0.08 + 0.08."""
    expected = torch.tensor([1.29, 0.87, 0.84], dtype=torch.float64)
    assert torch.allclose(dafa_weights(SIMILARITY, 1.0), expected)
    assert torch.allclose(dafa_weights(SIMILARITY, 1.5), 1 + 1.5 * (expected - 1))


def recorded(method, similarity: torch.Tensor) -> None:
    """Feed the recording epoch's statistics: 10 examples per class with these mean softmaxes."""
    k = similarity.shape[0]
    labels = torch.arange(k).repeat_interleave(10)
    method.probs.add(labels, similarity[labels])


def test_weights_are_measured_once_after_the_warmup_and_frozen() -> None:
    method = build("dafa", epochs=11)  # warm-up 70/110 of 11 epochs: 7; recording epoch 7 (index 6)
    assert method.recording_epoch(11) == 6
    sim = torch.eye(10) * 0.5 + 0.05
    sim[3, 5], sim[3, 3] = 0.3, 0.25  # class 3 confused with class 5
    recorded(method, sim)
    train = bars(1)
    for epoch in range(6):  # not the recording epoch: nothing is measured
        method.end_epoch(epoch_ctx(method, MeanGreyModel(), train, None, epoch=epoch, epochs=11))
    assert method.weights is None
    ctx = epoch_ctx(method, MeanGreyModel(), train, None, epoch=6, epochs=11)
    method.end_epoch(ctx)
    expected = dafa_weights(sim, 1.0).float()
    assert torch.allclose(method.weights, expected) and expected[3] > 1 > expected[5]
    assert method.probs.totals(ctx.dist)[1].sum() == 0 and ctx.log["dafa_raised"] == []
    plan = method.plan_epoch(epoch_ctx(method, MeanGreyModel(), train, None, epoch=7, epochs=11))
    assert torch.allclose(plan.weight, expected[train.labels])
    assert torch.allclose(plan.eps, expected[train.labels] * method.config.eps)  # step follows eps
    recorded(method, torch.eye(10))  # a later epoch records nothing and changes nothing
    method.end_epoch(epoch_ctx(method, MeanGreyModel(), train, None, epoch=8, epochs=11))
    assert torch.allclose(method.weights, expected)


def test_weights_at_or_below_zero_are_raised_to_min_weight() -> None:
    # lambda 10: class 1 loses 10 * 0.21 and gains 10 * 0.08: W = 1 - 1.3 = -0.3
    method = build("dafa", {"lam": "10", "min_weight": "0.2"}, epochs=11)
    sim = torch.full((10, 10), 0.0)
    sim[:3, :3] = SIMILARITY
    sim[3:, 3:] = torch.eye(7)
    recorded(method, sim)
    ctx = epoch_ctx(method, MeanGreyModel(), bars(1), None, epoch=6, epochs=11)
    method.end_epoch(ctx)
    raw = dafa_weights(sim, 10.0)
    assert raw[1] < 0 and raw[2] < 0.2
    assert method.weights[1] == method.weights[2] == pytest.approx(0.2)
    assert ctx.log["dafa_raised"] == ["trouser", "pullover"]
    assert (method.weights > 0).all()


def test_loss_weights_the_natural_ce_and_records_only_in_the_recording_epoch() -> None:
    torch.manual_seed(0)
    method = build("dafa", epochs=11)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    data = bars(2)
    ctx = batch_ctx(model, data.images.float() / 255, data.labels, eps=0.1, epoch=5)
    ctx.weight = torch.linspace(0.5, 1.5, 20)
    torch.manual_seed(1)
    loss = method.loss(ctx)
    torch.manual_seed(1)
    natural, boundary, adv = trades_outputs(ctx)
    assert torch.allclose(loss, (ctx.weight * natural).mean() + 6 * boundary.mean())
    assert method.probs.totals(epoch_ctx(method, model, data, None, 0).dist)[1].sum() == 0
    ctx.epoch = 6
    method.loss(ctx)
    sums, counts = method.probs.totals(epoch_ctx(method, model, data, None, 0).dist)
    assert counts.tolist() == [2.0] * 10 and torch.allclose(sums.sum(1), counts)  # softmax rows


@pytest.mark.parametrize(
    "params, message",
    [
        ({"lam": "-1"}, "lam must be >= 0"),
        ({"min_weight": "0"}, r"min_weight must be in \(0, 1\]"),
        ({"warmup_fraction": "1"}, "warmup_fraction"),
        ({"base": "x"}, "base must be one of"),
    ],
)
def test_bad_parameters_are_one_clear_error(params: dict, message: str) -> None:
    with pytest.raises(FairbenchError, match=message):
        build("dafa", params)
