"""FairAT (fairbench/methods/fairat.py): hard-example selection, epoch plan, augmentation mask, log."""

from __future__ import annotations

import pytest
import torch
from fairbench.errors import FairbenchError

from methods_helpers import CENTRES, SPEC, MeanGreyModel, batch_ctx, build, epoch_ctx, grey_split

WRONG = [3, 17, 22, 40, 41, 58, 77, 95]  # examples whose label is flipped: confidently wrong


def labelled_grey(n_per_class: int = 10):
    """Examples at their class centre; the ones in WRONG carry the label of a far-away class."""
    labels = torch.arange(10).repeat_interleave(n_per_class)
    levels = [float(CENTRES[c]) for c in labels]
    wrong_labels = labels.clone()
    wrong_labels[WRONG] = (labels[WRONG] + 5) % 10
    return grey_split(levels, wrong_labels.tolist())


def test_first_epoch_is_the_plain_set_without_scoring() -> None:
    method = build("fairat")
    model = MeanGreyModel()
    train = labelled_grey()
    plan = method.plan_epoch(epoch_ctx(method, model, train, None, epoch=0))
    assert torch.equal(plan.indices, torch.arange(len(train))) and plan.augment is None
    assert model.calls == 0


@pytest.mark.parametrize("params", [{"fraction": str(len(WRONG) / 100)}, {"selection": "threshold", "threshold": "5"}])
def test_confidently_wrong_examples_are_exactly_the_hard_ones(params: dict) -> None:
    method = build("fairat", params)
    train = labelled_grey()
    ctx = epoch_ctx(method, MeanGreyModel(), train, None, epoch=1)
    plan = method.plan_epoch(ctx)
    assert sorted(plan.indices[plan.augment].tolist()) == WRONG
    assert ctx.log["n_hard"] == len(WRONG)
    counts = ctx.log["hard_per_class"]
    assert list(counts) == list(SPEC.classes) and sum(counts.values()) == ctx.log["n_hard"]
    expected = torch.bincount(train.labels[WRONG], minlength=10).tolist()
    assert list(counts.values()) == expected


@pytest.mark.parametrize("copies, keep_original", [(1, False), (2, False), (3, True)])
def test_plan_size_and_composition(copies: int, keep_original: bool) -> None:
    method = build("fairat", {"fraction": "0.08", "copies": str(copies), "keep_original": str(keep_original)})
    train = labelled_grey()
    plan = method.plan_epoch(epoch_ctx(method, MeanGreyModel(), train, None, epoch=3))
    hard = len(WRONG)
    assert len(plan) == 100 - hard + copies * hard + (hard if keep_original else 0)
    count = torch.bincount(plan.indices, minlength=100)
    aug_count = torch.bincount(plan.indices[plan.augment], minlength=100)
    for i in range(100):
        if i in WRONG:
            assert aug_count[i] == copies and count[i] == copies + int(keep_original)
        else:
            assert aug_count[i] == 0 and count[i] == 1


@pytest.mark.parametrize("channels", [1, 3])
def test_only_masked_examples_are_augmented(channels: int) -> None:
    torch.manual_seed(0)
    method = build("fairat")
    x = torch.rand(64, channels, 28, 28)
    mask = torch.rand(64) < 0.3
    out = method.augment(batch_ctx(torch.nn.Identity(), x, torch.zeros(64, dtype=torch.long), 0.1), mask)
    changed = (out - x).abs().flatten(1).amax(1) > 0
    assert torch.equal(changed, mask)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"fraction": "0"}, "fraction"),
        ({"fraction": "1.5"}, "fraction"),
        ({"selection": "random"}, "selection"),
        ({"base": "mart"}, "base"),
        ({"augment": "mixup"}, "augment"),
        ({"copies": "0"}, "copies"),
        ({"copies": "two"}, "int"),
    ],
)
def test_bad_params_are_clear_errors(params: dict, message: str) -> None:
    with pytest.raises(FairbenchError, match=message):
        build("fairat", params)
