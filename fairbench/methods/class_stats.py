"""Per-class statistics of the training batches, kept on the device (CFA's training robust
accuracy per class, DAFA's class-similarity matrix).

A method adds each batch's per-example values inside its loss (``index_add_`` on the device: no host
sync); at the end of the epoch `ClassStats.totals` sums them over the DDP ranks. The sums are part
of the method's state, so a checkpoint taken inside an epoch resumes them exactly. The trainer
keeps one invariant under DDP: the run's sums are the sum over the ranks' sums. When it writes a
checkpoint it first folds every rank's sums into rank 0 (whose method state is the one saved), and
on resume the other ranks start from zero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from fairbench.errors import FairbenchError

if TYPE_CHECKING:
    from fairbench.distributed import DistInfo


class ClassStats:
    """Sums of per-example vectors of ``width`` values, and example counts, per class.

    float64 on the device: counts stay exact integers whatever the order of the additions, and
    sums of probabilities lose nothing a float32 result could show.
    """

    def __init__(self, num_classes: int, width: int = 1) -> None:
        self.num_classes, self.width = num_classes, width
        self.sums = torch.zeros(num_classes, width, dtype=torch.float64)
        self.counts = torch.zeros(num_classes, dtype=torch.float64)

    def add(self, labels: torch.Tensor, values: torch.Tensor) -> None:
        """Add one batch: ``values`` is N or N×width, one row per example of class ``labels``."""
        if self.sums.device != labels.device:
            self.sums, self.counts = self.sums.to(labels.device), self.counts.to(labels.device)
        rows = values.detach().to(torch.float64).reshape(labels.shape[0], self.width)
        self.sums.index_add_(0, labels, rows)
        self.counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))

    def totals(self, dist: "DistInfo") -> tuple[torch.Tensor, torch.Tensor]:
        """(sums K×width, counts K) over every rank: the same on every rank (a collective)."""
        both = torch.cat([self.sums, self.counts[:, None]], 1).clone()
        both = dist.all_reduce_sum(both)
        return both[:, :-1], both[:, -1]

    def means(self, dist: "DistInfo") -> torch.Tensor:
        """Per-class means (K×width) over every rank; a class without examples gets 0."""
        sums, counts = self.totals(dist)
        return sums / counts.clamp(min=1)[:, None]

    def reset(self) -> None:
        self.sums.zero_()
        self.counts.zero_()

    def fold_into_main(self, dist: "DistInfo", device: torch.device) -> None:
        """Move every rank's sums into rank 0's (a collective): rank 0 then holds the run's sums."""
        if not dist.enabled:
            return
        self.sums, self.counts = self.sums.to(device), self.counts.to(device)
        sums, counts = self.totals(dist)
        if not dist.is_main:
            sums, counts = torch.zeros_like(sums), torch.zeros_like(counts)
        self.sums, self.counts = sums.contiguous(), counts.contiguous()

    def zero_unless_main(self, dist: "DistInfo") -> None:
        """After every rank loaded rank 0's checkpoint: only rank 0 keeps the saved sums."""
        if not dist.is_main:
            self.reset()

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums.detach().cpu().clone(), "counts": self.counts.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sums, counts = state["sums"], state["counts"]
        if tuple(sums.shape) != (self.num_classes, self.width) or tuple(counts.shape) != (self.num_classes,):
            raise FairbenchError(
                f"class statistics of shape {tuple(sums.shape)} do not fit {self.num_classes} classes x {self.width}"
            )
        self.sums = sums.to(torch.float64).clone()
        self.counts = counts.to(torch.float64).clone()
