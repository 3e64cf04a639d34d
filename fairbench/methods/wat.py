"""WAT, Worst-class Adversarial Training (Li & Liu, "WAT: Improve the Worst-class Robustness in
Adversarial Training", AAAI 2023; code: boqili/WAT at 62d1184, ``worst_class_adversarial_train.py``).

TRADES (beta 6) whose loss is reweighted by a Hedge (multiplicative-weights) learner over K + 1
"experts": the K classes and the average. With weights w (length K + 1, all 1 at the start), each
batch's loss is

    [ sum_c w_c * (sum over the batch's class-c examples of CE(f(x), y) + beta * KL(f(x) || f(x'))) ] / B
    + w_K * (TRADES' mean loss over the batch)

i.e. the mean over the batch of (w_y + w_K) * (CE + beta * KL). After each epoch, TRADES
adversarial examples of the validation split (KL attack from x + 0.001 N(0, I), eval mode) give a
cost per class (class-mean CE + beta * class-mean KL) and the same over the whole split (entry K);
the costs add up over the epochs, and w = K * softmax(eta * cumulative cost) over the K + 1
entries, eta 0.1. Defaults are the code's (beta 6, eta 0.1).

Departures, with their reasons:

- The validation split is fairbench's ``--val-per-class`` split, the *first* K training images of
  each class (the code holds out the last 300 per class and trains on 4,700), so every method trains
  on the same images. The costs are true class means; the code divides class sums by the number of
  validation batches times the batch size (the split's size rounded up to a whole batch) times K.
- The code's learning rate drops at epochs 75 and 90 of 100 counted from 1: its 0-based loop calls
  ``adjust_learning_rate(epoch + 1)``, so the drops fall on 0-based epochs 74 and 89. The
  ``wat-cifar10`` preset's ``piecewise:0.74,0.89`` does the same (fairbench drops at the first
  0-based epoch >= M * epochs; until issue 25 the preset had ``0.75,0.9``, one epoch late). Its
  model is ResNet-18; fairbench has PreAct ResNet-18 (docs/paper-presets.md).
- Inputs: the code's loader has only ``ToTensor`` after the crop and flip, and its ResNet-18 no
  normalization, so its network sees raw [0, 1] pixels; fairbench's models take [0, 1] images and
  normalize them by the data set's mean and std in their first layer (CIFAR-10:
  0.4914/0.4822/0.4465, 0.2471/0.2435/0.2616), a fixed affine map in front of the first layer. eps
  and step are in [0, 1] pixel space in both: the code's 0.031 and 0.007 (its validation attack's
  too), which the ``wat-cifar10`` preset sets; without it a run has the data set's defaults
  (CIFAR-10: 8/255 and 2/255, 1.2% and 12% larger).
- Model selection: the code keeps a checkpoint every 3 epochs and reports the best on the test set;
  fairbench evaluates the last epoch (or the run's selection rule, never the test set).
- As in the code, one clean forward serves both the CE and the KL target; the attacks are the
  core's PGD (fp32).

eta is per epoch and the costs add up, so two classes' weights are exp(eta * n * g) apart after
n epochs with a cost gap g per epoch: the weights sharpen with the length of the run. The committed
logs (``wat_weight`` in results/runs/wat_*/log.jsonl, logged after each epoch and used by the next)
show how little they move in a short run: in the 8-epoch ``fmnist-standard`` runs (seeds 0-2) the
last epoch trains with class weights from 0.64-0.68 (ankle boot, or bag) to 1.41-1.46 (shirt), with
the average's weight at 0.88, so a shirt weighs about 1.5 times an ankle boot (w_y + w_K); the
weights after epoch 8, which train nothing, span 0.62-1.54. In the earlier 4-epoch constant-lr
group the weights after epoch 4 span 0.72-1.23 (the last epoch trained with 0.76-1.15). Over the
code's 100 epochs the same gap would put the weight almost wholly on the worst classes. Kept as in
the code; ``--param eta=...`` changes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from fairbench.data.datasets import get_dataset
from fairbench.errors import FairbenchError
from fairbench.eval.attacks import eval_mode, pgd
from fairbench.methods import register_method
from fairbench.methods.base import BatchContext, EpochContext, Method, require_validation_split
from fairbench.methods.losses import kl_per_example, trades_terms
from fairbench.methods.space import LogUniform


def hedge_weights(cumulative_cost: torch.Tensor, eta: float) -> torch.Tensor:
    """w = K * softmax(eta * cumulative cost) over the K + 1 entries (K classes and the average)."""
    k = cumulative_cost.numel() - 1
    return (k * torch.softmax(eta * cumulative_cost.double(), 0)).float()


def validation_costs(ctx: EpochContext, beta: float) -> torch.Tensor:
    """Per-class cost (class-mean CE + beta * class-mean KL on TRADES adversarial examples of the
    validation split) and, last, the same over the whole split: K + 1 values (float64)."""
    assert ctx.val is not None
    model, cfg, k = ctx.model, ctx.config, ctx.spec.num_classes

    def terms(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert cfg.eps is not None and cfg.step_size is not None  # filled in by RunConfig.resolve
        x_adv = pgd(
            model, x, eps=cfg.eps, step_size=cfg.step_size, steps=cfg.attack_steps, objective="kl", init="normal"
        )
        with torch.no_grad():
            clean, adv = model(x).float(), model(x_adv).float()
            return torch.stack([F.cross_entropy(clean, y, reduction="none"), kl_per_example(clean, adv)], 1)

    with eval_mode(model):
        both = ctx.map_batches(terms, ctx.val).double().cpu()
    labels = ctx.val.labels.cpu()
    sums = torch.zeros(k, 2, dtype=torch.float64).index_add_(0, labels, both)
    counts = torch.bincount(labels, minlength=k).double().clamp(min=1)
    per_class = sums / counts[:, None]
    table = torch.cat([per_class, both.mean(0, keepdim=True)])
    return table[:, 0] + beta * table[:, 1]


@register_method("wat")
class WAT(Method):
    """Li & Liu (AAAI 2023) WAT: TRADES reweighted by Hedge over the classes and the average,
    from validation costs after each epoch."""

    # `fairbench tune` (+ lr, weight decay): Hedge's step, which sets how far the class weights move
    space: ClassVar[dict] = {"eta": LogUniform(0.01, 1.0), "beta": LogUniform(1.0, 12.0)}

    @dataclass
    class Params:
        beta: float = 6.0  # TRADES' beta
        eta: float = 0.1  # Hedge's learning rate

        def validate(self) -> None:
            if not self.beta >= 0:
                raise FairbenchError(f"wat: beta must be >= 0, got {self.beta}")
            if not self.eta > 0:
                raise FairbenchError(f"wat: eta must be > 0, got {self.eta}")

    def __init__(self, params: Any, config: Any) -> None:
        super().__init__(params, config)
        require_validation_split(
            config, "wat", "weighs the classes by their cost on a validation split (the authors hold out 300 per class)"
        )
        k = get_dataset(config.dataset).num_classes
        self.cumulative_cost = torch.zeros(k + 1, dtype=torch.float64)
        self.weights = torch.ones(k + 1)
        self._device_weights: torch.Tensor | None = None

    def loss(self, ctx: BatchContext) -> torch.Tensor:
        natural, boundary = trades_terms(ctx)
        if self._device_weights is None or self._device_weights.device != ctx.y.device:
            self._device_weights = self.weights.to(ctx.y.device)
        w = self._device_weights
        per_example = (w[ctx.y] + w[-1]) * (natural + self.params.beta * boundary)
        return (per_example * ctx.weight).sum() / ctx.y.shape[0]

    def end_epoch(self, ctx: EpochContext) -> None:
        costs = validation_costs(ctx, self.params.beta)
        self.cumulative_cost = self.cumulative_cost + costs
        self.weights = hedge_weights(self.cumulative_cost, self.params.eta)
        self._device_weights = None
        names = (*ctx.spec.classes, "average")
        ctx.log["wat_val_cost"] = {c: round(float(v), 5) for c, v in zip(names, costs)}
        ctx.log["wat_weight"] = {c: round(float(v), 5) for c, v in zip(names, self.weights)}

    def state_dict(self) -> dict[str, Any]:
        return {"cumulative_cost": self.cumulative_cost.clone(), "weights": self.weights.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cumulative_cost = state["cumulative_cost"].double().cpu().clone()
        self.weights = state["weights"].float().cpu().clone()
        self._device_weights = None
