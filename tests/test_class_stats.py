"""Per-class statistics of the training batches: sums and counts per class, state, DDP bookkeeping
(the two-process fold is exercised in tests/test_distributed.py)."""

from __future__ import annotations

import pytest
import torch
from fairbench.distributed import DistInfo
from fairbench.errors import FairbenchError
from fairbench.methods.class_stats import ClassStats


def test_sums_and_counts_per_class_over_batches() -> None:
    stats = ClassStats(3, width=2)
    stats.add(torch.tensor([0, 2, 2]), torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.25, 0.75]]))
    stats.add(torch.tensor([0]), torch.tensor([[0.0, 1.0]]))
    sums, counts = stats.totals(DistInfo())
    assert torch.equal(sums, torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.75, 1.25]], dtype=torch.float64))
    assert torch.equal(counts, torch.tensor([2.0, 0.0, 2.0], dtype=torch.float64))
    means = stats.means(DistInfo())  # a class without examples has mean 0, not NaN
    assert torch.equal(means, torch.tensor([[0.5, 0.5], [0.0, 0.0], [0.375, 0.625]], dtype=torch.float64))
    stats.reset()
    assert stats.totals(DistInfo())[1].sum() == 0


def test_width_one_takes_a_vector_and_gradients_are_dropped() -> None:
    stats = ClassStats(2)
    values = torch.tensor([1.0, 0.0, 1.0], requires_grad=True)
    stats.add(torch.tensor([1, 1, 0]), values)
    assert torch.equal(stats.totals(DistInfo())[0][:, 0], torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert not stats.sums.requires_grad


def test_state_round_trip_and_shape_check() -> None:
    stats = ClassStats(3)
    stats.add(torch.tensor([1]), torch.tensor([0.5]))
    copy = ClassStats(3)
    copy.load_state_dict(stats.state_dict())
    assert torch.equal(copy.totals(DistInfo())[0], stats.totals(DistInfo())[0])
    copy.zero_unless_main(DistInfo(rank=1, world_size=2))  # a non-main rank restarts from zero
    assert copy.totals(DistInfo())[1].sum() == 0
    with pytest.raises(FairbenchError, match="do not fit"):
        ClassStats(4).load_state_dict(stats.state_dict())
