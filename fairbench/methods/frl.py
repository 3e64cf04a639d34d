"""FRL, Fair Robust Learning (Xu, Liu, Li, Jain, Tang, "To be Robust or to be Fair: Towards
Fairness in Adversarial Training", ICML 2021; code: hannxu123/fair_robust). Three variants:
``frl-rw`` (Reweight), ``frl-rm`` (Remargin) and ``frl-rwrm`` (Reweight + Remargin).

FRL fine-tunes a robust model on TRADES' loss under per-class fairness constraints
``R_nat(i) - R_nat <= tau_nat`` and ``R_bndy(i) - R_bndy <= tau_bndy``, by dual ascent on one
Lagrange multiplier per class and constraint, once per epoch (Algorithm 1 of the paper; the
authors' ``frl_train`` in utils_frl*.py). At the start of every FRL epoch:

1. On the held-out class-balanced validation split (``--val-per-class``; the authors hold out 300
   per class of CIFAR-10's training set), with the model in eval mode: per-class natural error
   ``1 - clean_acc_i`` and boundary error ``clean_acc_i - adv_acc_i`` under PGD-20 (CE, uniform
   start, the run's eps and step), and the same two errors over the whole split.
2. Violations ``g_i = error_i - error_total - tau`` (signed). Updates:
   ``lam_nat <- P(lam_nat + rate * g_nat)``, ``lam_bndy <- P(lam_bndy + 2 * rate * g_bndy)``
   (reweight), ``lam_eps <- lam_eps + rate_eps * g_bndy`` (remargin, not projected). P clamps to
   >= 0 and rescales the vector to sum ``lim`` if it sums more. ``rate`` halves every
   ``rate_halving_epochs`` FRL epochs (the authors: every 40).
3. Class weights ``w_i = 1/K + lam_i - sum(lam)/K`` (they sum to 1 and stay >= (1 - lim)/K > 0); the
   remargin eps multiplier ``m_i = clip(exp(2 * lam_eps_i), 0.98, eps_cap)``.
4. One epoch on the training split: each example gets its class's eps ``m_i * eps`` (the
   `EpochPlan`'s per-example eps), the TRADES KL attack with that eps, and the loss
   ``sum(w_nat * CE) / sum(w_nat) + beta * sum(w_bndy * KL) / sum(w_bndy)`` over the batch
   (frl-rm: ``normalization=joint``, below).

Reweight updates lam_nat and lam_bndy; Remargin updates lam_nat and lam_eps (the KL weights stay
uniform; utils_frl1.py); both update all three.

Defaults (each variant's Params) are the argparse defaults of the authors' newest scripts at the
repository's HEAD (a80547d): ``frlrw.py`` and ``frlrmrw.py``, where two commits of 2022-04-27
(5f58bc7, bd2b279) set ``--beta`` to 1.5 in both (it was 1.0 and 2.0 at 8e6429a). The newest
values are used because they are the authors' last word in runnable form (the paper's text was
not checked against them here). ``frlrm.py`` exists only up to 18d1177 (deleted in 674a1df,
before that change): frl-rm keeps its values, beta 1.0 and lim 0.3.

The authors' protocol, and how to run it here:

- They load a pre-trained robust PreActResNet-18 (``hot_start.pt``, linked from their readme) and
  fine-tune it with FRL from the first epoch: SGD lr 1e-3, momentum 0.9, wd 5e-4, batch 128, 40
  epochs for rw and rwrm (MultiStepLR milestones 40 and 80, so the lr stays 1e-3 throughout), 120
  for rm (milestones 40, 80: 1e-3, then 1e-4 from epoch 41 and 1e-5 from epoch 81). Here::

      fairbench run --method frl-rw --arch preact18-frl --dataset cifar10 --val-per-class 300 \
          --init-from hot_start.pt --param warmup_fraction=0 \
          --lr 0.001 --schedule constant --epochs 40

  ``preact18-frl`` is their network (no input normalization, no final BN+ReLU) and loads their
  file; a hot start trained by fairbench is ``--init-from RUN_DIR`` (a finished run's folder, with
  ``--arch`` of that run). ``--init-from`` is the core's one way to start from trained weights
  (`fairbench.train.init_from`: weights_only, checked against the architecture, recorded in
  config.json and metrics.json); the ``pretrained`` parameter now only says so. frl-rm's 120
  epochs with drops after epochs 40 and 80 are ``--method frl-rm --epochs 120 --schedule
  piecewise:0.3333,0.6666`` (the lr drops /10 at the first epoch index >= M * epochs: indices 40
  and 80, i.e. from epochs 41 and 81 as in the code; ``tests/test_frl.py`` checks the schedule).
- Without ``--init-from`` (the default, one self-contained run): the first ``warmup_fraction`` of
  the run (default 0.75) trains with FRL's loss at uniform weights and eps (TRADES with FRL's
  beta), which stands in for the hot start, and the FRL updates run in the rest. With the default
  piecewise schedule that is the last quarter, entirely at lr/100 (1e-3 with the default lr 0.1:
  the authors' fine-tuning lr), after a warm-up through lr 0.1 and 0.01. It is shorter than the
  authors' 40 epochs (25 of 100). (Before issue 15 the default was 0.5: the FRL phase ran at 0.01
  then 0.001.) ``--init-from`` with a warm-up is refused: fine-tuning starts FRL at once.

What 8 epochs leave of it. In the ``fmnist-standard`` protocol (8 epochs, ``piecewise:0.75``, the
default ``warmup_fraction`` 0.75) FRL runs only epochs 7 and 8, both at lr 0.005, so its multipliers
update twice. The committed logs (results/runs/frl-*/log.jsonl, the 8-epoch runs of all three
variants, seeds 0-2) show how far that moves them: epoch 7 trains with class weights within
0.098-0.112 and epoch 8 within 0.097-0.123 (uniform: 0.1; shirt's natural-error weight is the
largest, 0.115-0.123 at epoch 8), and the remargin eps multiplier is at most 1.044 in epoch 7 and
1.065 in epoch 8 (frl-rwrm; frl-rm at most 1.022), the smallest at the 0.98 floor. These rows
therefore mostly measure TRADES with FRL's beta (1.5; frl-rm: beta 1.0 with the joint
normalization's half gradient), not FRL's fairness constraints, which the authors enforce for
40-120 epochs from a robust model. A smaller ``warmup_fraction`` or a larger ``rate`` /
``rate_eps`` gives the mechanism room (issue 25's tuning searches them).

Inputs: fairbench's models take images in [0, 1] and normalize them by the data set's mean and
std in their first layer (CIFAR-10: 0.4914/0.4822/0.4465, 0.2471/0.2435/0.2616), except
``preact18-frl``, which like the authors' code sees the raw [0, 1] pixels (their loader's
``Normalize`` is commented out). The attack works in [0, 1] pixel space either way.

Choices and departures, with their reasons:

- Where the multipliers update: in `plan_epoch`, i.e. at the start of each FRL epoch with the model
  as it is then, exactly where the authors measure (so a pre-trained model already gets non-zero
  multipliers in the first FRL epoch). A resumed run repeats this measurement from the restored
  model and RNG, so the multipliers (the method's state) continue exactly.
- Validation split: the first ``--val-per-class`` images of each class; the authors hold out the
  last 300 of each class (indices 4700-4999 of the class's images), train on the first 4700.
- Attack step: the core's per-example rule, step = m_i * step_size (eps_i / 4 by default). The
  authors' rw and rm files use a fixed 2/255 whatever the class's eps, the newest RWRM the batch's
  largest eps_i / 4. Start x + 0.001·N(0, I), as theirs (clipped to the ball and [0, 1] here).
- Loss normalization (``normalization``): ``separate`` is the newest code's (utils_frl.py,
  utils_frl2.py) ``sum(w_nat CE) / sum(w_nat) + beta * sum(w_bndy KL) / sum(w_bndy)``; ``joint``
  is frlrm.py's (utils_frl1.py) ``sum(w_nat CE + beta * w_bndy KL) / sum(w_nat + w_bndy)``. The
  class weights sum to 1 over classes, so on a class-balanced batch both weight sums are about
  N/10 and the joint loss is about half the separate one: half the gradient, the same direction
  per term. Each variant defaults to its own official code's form (frl-rm: joint).
- Batch norm: clean and adversarial batches get separate forwards, as in the authors' code.
- Precision: the attack runs in fp32 whatever the run's autocast (the core's PGD); the authors
  train in fp32 throughout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fairbench.data.datasets import get_dataset
from fairbench.errors import FairbenchError, check_all
from fairbench.eval.attacks import eval_mode, pgd
from fairbench.eval.evaluator import clean_correct, per_class_accuracy
from fairbench.methods import register_method
from fairbench.methods.base import BatchContext, EpochContext, EpochPlan, Method
from fairbench.methods.losses import trades_terms
from fairbench.methods.space import LogUniform, Uniform

VAL_PGD_STEPS = 20  # the authors' validation attack (configs1)
EPS_FLOOR = 0.98  # lower clip of the remargin multiplier (cost_sensitive in utils_frl*.py)


NORMALIZATIONS = ("separate", "joint")


@dataclass
class ReweightParams:
    beta: float = 1.5  # weight of the boundary (KL) term; frlrw.py since 5f58bc7 (1.0 before)
    tau_nat: float = 0.1  # fairness constraint on the natural error (bound0)
    tau_bndy: float = 0.1  # fairness constraint on the boundary error (bound1)
    rate: float = 0.05  # multiplier step (rate1)
    lim: float = 0.5  # cap on the sum of each multiplier vector
    rate_halving_epochs: int = 40  # halve `rate` every this many FRL epochs (0: never)
    warmup_fraction: float = 0.75  # first part of the run trained without FRL updates (from scratch)
    pretrained: str = ""  # replaced by --init-from (FILE or RUN_DIR); kept so that old configs read
    normalization: str = "separate"  # each term over its own weights, or "joint" (see the docstring)

    def validate(self) -> None:
        checks = [
            (self.beta >= 0, f"beta must be >= 0, got {self.beta}"),
            (self.tau_nat >= 0 and self.tau_bndy >= 0, "tau_nat and tau_bndy must be >= 0"),
            (self.rate > 0, f"rate must be > 0, got {self.rate}"),
            (0 < self.lim < 1, f"lim must be in (0, 1) so that class weights stay > 0, got {self.lim}"),
            (self.rate_halving_epochs >= 0, "rate_halving_epochs must be >= 0"),
            (0 <= self.warmup_fraction < 1, f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}"),
            (
                not self.pretrained,
                f"pretrained= is replaced by --init-from {self.pretrained} (a "
                f"checkpoint file or a finished run's folder)",
            ),
            (
                self.normalization in NORMALIZATIONS,
                f"normalization must be one of {', '.join(NORMALIZATIONS)}, got '{self.normalization}'",
            ),
        ]
        check_all(checks, "frl: ")


@dataclass
class RemarginParams(ReweightParams):
    beta: float = 1.0  # frlrm.py at 18d1177 (deleted before the authors moved the others to 1.5)
    lim: float = 0.3  # frlrm.py's default
    normalization: str = "joint"  # frlrm.py / utils_frl1.py: one sum over both terms' weights
    rate_eps: float = 0.1  # step of the eps multiplier (rate2)
    eps_cap: float = 2.5  # largest eps multiplier (utils_frl1.py)

    def validate(self) -> None:
        super().validate()
        if not self.rate_eps > 0:
            raise FairbenchError(f"frl: rate_eps must be > 0, got {self.rate_eps}")
        if not self.eps_cap >= 1:
            raise FairbenchError(f"frl: eps_cap must be >= 1, got {self.eps_cap}")


@dataclass
class ReweightRemarginParams(RemarginParams):
    beta: float = 1.5  # frlrmrw.py since bd2b279 (2.0 before)
    normalization: str = "separate"  # utils_frl2.py
    tau_nat: float = 0.07
    tau_bndy: float = 0.07
    lim: float = 0.5
    rate_eps: float = 0.2
    eps_cap: float = 3.0  # utils_frl2.py


@dataclass
class ValidationErrors:
    """Per-class and overall natural and boundary errors on the validation split."""

    nat: torch.Tensor  # K
    bndy: torch.Tensor  # K
    nat_total: float
    bndy_total: float


def project(lam: torch.Tensor, lim: float) -> torch.Tensor:
    """Clamp to >= 0, then rescale to sum ``lim`` if the sum exceeds it (normalize_lambda)."""
    lam = lam.clamp(min=0)
    total = float(lam.sum())
    return lam * (lim / total) if total > lim else lam


def class_weights(lam: torch.Tensor) -> torch.Tensor:
    """The cost-sensitive weights ``1/K + lam_i - sum(lam)/K`` (they sum to 1)."""
    k = lam.numel()
    return 1 / k + lam - lam.sum() / k


def validation_errors(ctx: EpochContext, eps: float, step_size: float) -> ValidationErrors:
    """Clean and PGD-20 (CE) errors per class on ``ctx.val``, sharded and gathered under DDP."""
    if ctx.val is None:
        raise FairbenchError("FRL needs a validation split: pass --val-per-class K")
    model = ctx.model

    def correct(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = pgd(model, x, y, eps=eps, step_size=step_size, steps=VAL_PGD_STEPS)
        return torch.stack([clean_correct(model, x, y), clean_correct(model, x_adv, y)], 1).float()

    with eval_mode(model):
        both = ctx.map_batches(correct, ctx.val).cpu()
    labels, k = ctx.val.labels, ctx.spec.num_classes  # class-balanced: every class is present
    clean_acc = per_class_accuracy(both[:, 0], labels, k)[0].float()
    adv_acc = per_class_accuracy(both[:, 1], labels, k)[0].float()
    clean_total, adv_total = float(both[:, 0].mean()), float(both[:, 1].mean())
    return ValidationErrors(1 - clean_acc, clean_acc - adv_acc, 1 - clean_total, clean_total - adv_total)


class FRL(Method):
    """Shared FRL machinery; the registered variants choose which multipliers move."""

    # `fairbench tune` (+ lr, weight decay): the warm-up share and the multipliers' step sizes, which
    # decide how much of FRL's mechanism a short run keeps, its constraints and TRADES' beta
    space: ClassVar[dict] = {
        "warmup_fraction": Uniform(0.0, 0.75),
        "rate": LogUniform(0.01, 0.5),
        "lim": Uniform(0.1, 0.9),
        "tau_nat": LogUniform(0.01, 0.2),
        "tau_bndy": LogUniform(0.01, 0.2),
        "beta": LogUniform(0.5, 8.0),
    }

    Params: ClassVar[type] = ReweightParams
    reweight_boundary: ClassVar[bool] = True
    remargin: ClassVar[bool] = False

    def __init__(self, params: Any, config: Any) -> None:
        super().__init__(params, config)
        if config.val_per_class is None:
            raise FairbenchError(
                f"{self.name} holds out a class-balanced validation split: pass "
                f"--val-per-class K (the authors use 300 per class on CIFAR-10)"
            )
        spec = get_dataset(config.dataset)
        k = spec.num_classes
        self.lam_nat, self.lam_bndy, self.lam_eps = torch.zeros(k), torch.zeros(k), torch.zeros(k)
        self._device_weights: tuple[torch.Tensor, torch.Tensor] | None = None
        if config.init_from is not None and params.warmup_fraction != 0:
            raise FairbenchError(
                "frl: --init-from fine-tunes a trained model with FRL from the first "
                "epoch (the authors' protocol): add --param warmup_fraction=0"
            )

    def frl_start(self, epochs: int) -> int:
        """The first epoch (0-based) with FRL updates."""
        return int(self.params.warmup_fraction * epochs)

    def eps_multiplier(self) -> torch.Tensor:
        if not self.remargin:
            return torch.ones_like(self.lam_eps)
        return torch.exp(2 * self.lam_eps).clamp(EPS_FLOOR, self.params.eps_cap)

    def update(self, errors: ValidationErrors, frl_epoch: int) -> None:
        """One dual-ascent step on the multipliers from this epoch's validation errors."""
        p = self.params
        rate = p.rate / 2 ** ((frl_epoch + 1) // p.rate_halving_epochs) if p.rate_halving_epochs else p.rate
        g_nat = errors.nat - errors.nat_total - p.tau_nat
        g_bndy = errors.bndy - errors.bndy_total - p.tau_bndy
        self.lam_nat = project(self.lam_nat + rate * g_nat, p.lim)
        if self.reweight_boundary:
            self.lam_bndy = project(self.lam_bndy + 2 * rate * g_bndy, p.lim)
        if self.remargin:
            self.lam_eps = self.lam_eps + p.rate_eps * g_bndy
        self._device_weights = None

    def plan_epoch(self, ctx: EpochContext) -> EpochPlan:
        assert ctx.config.eps is not None and ctx.config.step_size is not None  # filled in by RunConfig.resolve
        if ctx.epoch >= self.frl_start(ctx.epochs):
            errors = validation_errors(ctx, ctx.config.eps, ctx.config.step_size)
            self.update(errors, ctx.epoch - self.frl_start(ctx.epochs))
            ctx.log.update(self._log_values(errors, ctx.spec.classes))
        labels = ctx.train.labels
        eps = ctx.config.eps * self.eps_multiplier().to(ctx.device)[labels]
        return EpochPlan(torch.arange(len(labels), device=ctx.device), eps=eps)

    def _weights(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._device_weights is None or self._device_weights[0].device != device:
            self._device_weights = (class_weights(self.lam_nat).to(device), class_weights(self.lam_bndy).to(device))
        return self._device_weights

    def loss(self, ctx: BatchContext) -> torch.Tensor:
        natural, boundary = trades_terms(ctx)
        w_nat, w_bndy = self._weights(ctx.y.device)
        w_nat, w_bndy = w_nat[ctx.y] * ctx.weight, w_bndy[ctx.y] * ctx.weight
        beta = self.params.beta
        if self.params.normalization == "joint":  # about half the "separate" loss: see the docstring
            return (w_nat * natural + beta * w_bndy * boundary).sum() / (w_nat + w_bndy).sum()
        return (w_nat * natural).sum() / w_nat.sum() + beta * (w_bndy * boundary).sum() / w_bndy.sum()

    def _log_values(self, errors: ValidationErrors, classes: tuple[str, ...]) -> dict[str, Any]:
        named = lambda t: {c: round(float(v), 5) for c, v in zip(classes, t)}  # noqa: E731
        values = {
            "frl_val_nat_error": named(errors.nat),
            "frl_val_bndy_error": named(errors.bndy),
            "frl_weight_nat": named(class_weights(self.lam_nat)),
            "frl_weight_bndy": named(class_weights(self.lam_bndy)),
        }
        if self.remargin:
            values["frl_eps_multiplier"] = named(self.eps_multiplier())
        return values

    def state_dict(self) -> dict[str, Any]:
        return {"lam_nat": self.lam_nat.clone(), "lam_bndy": self.lam_bndy.clone(), "lam_eps": self.lam_eps.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lam_nat, self.lam_bndy, self.lam_eps = (
            state[k].float().cpu().clone() for k in ("lam_nat", "lam_bndy", "lam_eps")
        )
        self._device_weights = None


@register_method("frl-rw")
class FRLReweight(FRL):
    """Xu et al. (ICML 2021) FRL-Reweight: class weights on TRADES' terms from validation errors."""

    name = "frl-rw"
    Params = ReweightParams


@register_method("frl-rm")
class FRLRemargin(FRL):
    """Xu et al. (ICML 2021) FRL-Remargin: larger eps for classes with high boundary error."""

    name = "frl-rm"
    Params = RemarginParams
    space: ClassVar[dict] = {**FRL.space, "rate_eps": LogUniform(0.02, 1.0)}  # + the eps multiplier's step
    reweight_boundary = False
    remargin = True


@register_method("frl-rwrm")
class FRLReweightRemargin(FRL):
    """Xu et al. (ICML 2021) FRL-Reweight+Remargin: both class weights and per-class eps."""

    name = "frl-rwrm"
    Params = ReweightRemarginParams
    space: ClassVar[dict] = {**FRL.space, "rate_eps": LogUniform(0.02, 1.0)}  # + the eps multiplier's step
    remargin = True
