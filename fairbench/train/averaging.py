"""Weight averaging: an exponential moving average of the weights, taken after each epoch, that the
evaluator and the checkpoint use (``--ema DECAY`` for any method; CFA's FAWA through a gate the
method controls).

After an accepted epoch: ``average <- decay * average + (1 - decay) * weights``; the first accepted
epoch copies the weights. Batch-norm statistics are averaged with the weights (``use_buffers``), as
CFA's code averages the whole state_dict. The average is `torch.optim.swa_utils.AveragedModel`
with `get_ema_multi_avg_fn`. Per epoch, not per step: that is the EMA of CFA's code (its "AT+EMA"
rows) and of FAWA, so one mechanism serves both.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from fairbench.errors import FairbenchError


class WeightAverage:
    """An EMA copy of a model, updated at the end of the epochs its gate accepts."""

    def __init__(self, model: nn.Module, decay: float, source: str) -> None:
        if not 0 <= decay < 1:
            raise FairbenchError(f"weight averaging decay must be in [0, 1), got {decay}")
        self.decay, self.source = decay, source
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.averaged.eval()

    @property
    def updates(self) -> int:
        return int(self.averaged.n_averaged)

    @property
    def module(self) -> nn.Module:
        """The averaged model (in eval mode)."""
        return self.averaged.module

    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)

    def eval_model(self, live: nn.Module) -> nn.Module:
        """What to evaluate: the average once an epoch was accepted, else the live model."""
        return self.module if self.updates > 0 else live

    def record(self) -> dict[str, Any]:
        """What metrics.json says of the averaging (``ema``)."""
        return {
            "decay": self.decay,
            "source": self.source,
            "updates": self.updates,
            "evaluated": "averaged" if self.updates > 0 else "live (no epoch was accepted)",
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "weights": self.module.state_dict(),
            "n_averaged": self.averaged.n_averaged.clone(),
            "decay": self.decay,
        }

    def load_state_dict(self, state: dict[str, Any], source: str) -> None:
        from fairbench.models import load_model_state

        load_model_state(self.module, state["weights"], f"{source} (averaged weights)")
        self.averaged.n_averaged.copy_(torch.as_tensor(state["n_averaged"]))
