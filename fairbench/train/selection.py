"""Model selection, one rule for every method (``--select``).

- ``last`` (default): the weights after the last epoch.
- ``best-val``: after each epoch, PGD-10 (the training attack: the run's eps, step and steps,
  random start) on the validation split; keep the weights with the highest average plus
  worst-class validation robust accuracy. That is CFA's selection rule (Wei et al., CVPR 2023),
  but on held-out training data, never on the test set.

The kept weights live in the checkpoint, so a resumed run selects exactly what an uninterrupted
one does; the validation attack runs from its own seed inside ``fork_rng`` and leaves the
training RNG streams alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fairbench.config import RunConfig
from fairbench.data.datasets import Split, map_sharded
from fairbench.distributed import DistInfo
from fairbench.eval.attacks import eval_mode, pgd
from fairbench.eval.evaluator import per_class_accuracy, seeded


def log_record(acc: torch.Tensor) -> dict[str, Any]:
    """An epoch's validation fields of log.jsonl: average, worst class and each class (fractions)."""
    return {
        "val_robust_avg": round(float(acc.mean()), 6),
        "val_robust_worst": round(float(acc.min()), 6),
        "val_robust_per_class": [round(float(a), 6) for a in acc],
    }


class ValidationScorer:
    """PGD-10 (the training attack) robust accuracy of each class on the validation split: what
    ``best-val`` selects by and what a tuning trial (``score_on="validation"``) is scored by."""

    def __init__(self, cfg: RunConfig, val: Split, num_classes: int, dist: DistInfo, device: torch.device) -> None:
        self.cfg, self.val, self.num_classes, self.dist, self.device = cfg, val, num_classes, dist, device

    def robust_per_class(self, model: nn.Module, epoch: int) -> torch.Tensor:
        """PGD-10 validation robust accuracy of each class (float64) of the weights after epoch
        ``epoch`` (0-based): the random starts come from the run seed and the epoch, so the same
        weights always get the same score."""
        cfg = self.cfg

        def robust(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            assert cfg.eps is not None and cfg.step_size is not None  # filled in by RunConfig.resolve
            x_adv = pgd(model, x, y, eps=cfg.eps, step_size=cfg.step_size, steps=cfg.attack_steps)
            with torch.no_grad():
                return model(x_adv).argmax(1) == y

        assert cfg.eval_batch_size is not None  # filled in by RunConfig.resolve
        with eval_mode(model), seeded(cfg.seed * 1_000_003 + 7_919 * (epoch + 1), self.device):
            correct = map_sharded(robust, self.val, self.dist, cfg.eval_batch_size)
        return per_class_accuracy(correct, self.val.labels, self.num_classes)[0]


class BestValSelector:
    """Scores the model on the validation split after each epoch and keeps the best weights."""

    def __init__(self, cfg: RunConfig, val: Split, num_classes: int, dist: DistInfo, device: torch.device) -> None:
        self.scorer = ValidationScorer(cfg, val, num_classes, dist, device)
        self.best_score = -float("inf")
        self.best_epoch = 0
        self.best_model: dict[str, torch.Tensor] | None = None

    def robust_per_class(self, model: nn.Module, epoch: int) -> torch.Tensor:
        return self.scorer.robust_per_class(model, epoch)

    def after_epoch(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        """Score epoch ``epoch`` (0-based); keep its weights if they are the best so far."""
        acc = self.robust_per_class(model, epoch)
        score = float(acc.mean()) + float(acc.min())
        if score > self.best_score:
            self.best_score, self.best_epoch = score, epoch + 1
            self.best_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return {**log_record(acc), "selected_epoch": self.best_epoch}

    def apply(self, model: nn.Module) -> int:
        """Load the kept weights into ``model``; returns their epoch."""
        if self.best_model is not None:
            model.load_state_dict(self.best_model)
        return self.best_epoch

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "best_model": self.best_model}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_score = float(state["best_score"])
        self.best_epoch = int(state["best_epoch"])
        self.best_model = state["best_model"]
