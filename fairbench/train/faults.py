"""A diverging loss, found without a host sync per step.

`LossWatch` records the first non-finite loss on the device; the trainer checks it where it syncs
anyway (the log interval and the end of the epoch). `check_weights` (the evaluator's
`not_finite`) covers the epoch's last update, which no loss of that epoch sees. `agreed_stop`
makes every DDP rank honour a stop signal (`fairbench.runs.signals.StopSignals`) at the same step.
"""

from __future__ import annotations

import torch
from torch import nn

from fairbench.distributed import DistInfo
from fairbench.errors import FairbenchError
from fairbench.eval.evaluator import not_finite
from fairbench.runs.signals import StopSignals

# not "--resume": a resume must keep the config the checkpoint was made with, --lr included
RESTART = "Lower --lr or check the method's parameters, then start it again under another --run-id"


class Diverged(FairbenchError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


def agreed_stop(stop: StopSignals | None, dist: DistInfo, device: torch.device) -> bool:
    """Whether any rank was asked to stop; one collective, so every rank stops at the same step."""
    local = bool(stop and stop.requested)
    if not dist.enabled:
        return local
    flag = torch.tensor(float(local), device=device)
    return bool(dist.all_reduce_sum(flag) > 0)


class LossWatch:
    """The first step of an epoch whose loss is not finite, recorded on the device.

    `record` is a couple of device ops per step (no host sync); `check` syncs once, at the
    points where the trainer syncs anyway (the log interval and the end of the epoch).
    """

    def __init__(self, device: torch.device, dist: DistInfo) -> None:
        self.device, self.dist = device, dist
        self.reset()

    def reset(self) -> None:
        self.first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        self.bad_value = torch.zeros((), device=self.device)

    def record(self, step: int, loss: torch.Tensor) -> None:
        new = (self.first_bad < 0) & ~torch.isfinite(loss.detach())
        self.first_bad = torch.where(new, torch.full_like(self.first_bad, step), self.first_bad)
        self.bad_value = torch.where(new, loss.detach().float(), self.bad_value)

    def check(self, epoch: int, steps: int, kept: str) -> None:
        """Raise `Diverged` naming the epoch and step (1-based) if any rank saw a bad loss."""
        local = torch.stack([self.first_bad.double(), self.bad_value.double()]).reshape(1, 2)
        rows = self.dist.gather_shards(local, self.dist.world_size).cpu()
        bad = [(int(s), float(v)) for s, v in rows.tolist() if s >= 0]
        if not bad:
            return
        step, value = min(bad)
        raise Diverged(
            f"training diverged: the loss is {value} at epoch {epoch + 1}, step "
            f"{step + 1} of {steps}; {kept}. {RESTART}"
        )


def check_weights(model: nn.Module, x: torch.Tensor, dist: DistInfo, epoch: int, kept: str) -> None:
    """Raise `Diverged` if the weights after epoch ``epoch``, or the outputs they give on ``x``, are
    not finite.

    A step's loss is computed before its update, so `LossWatch` never sees what the epoch's last
    update did: it can leave NaN weights, or finite ones (1e36) whose outputs overflow to NaN.
    One forward pass and one host sync per epoch (`not_finite`).
    """
    what = not_finite(model, x, dist)
    if what:
        raise Diverged(f"training diverged after epoch {epoch + 1}: the model's {what}; {kept}. {RESTART}")
