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
   ``sum(w_nat * CE) / sum(w_nat) + beta * sum(w_bndy * KL) / sum(w_bndy)`` over the batch.

Reweight updates lam_nat and lam_bndy; Remargin updates lam_nat and lam_eps (the KL weights stay
uniform; utils_frl1.py); both update all three. Defaults are the argparse defaults of the
authors' newest scripts (frlrw.py and frlrmrw.py at commit 8e6429a; frlrm.py exists only at
18d1177): see each variant's Params.

Choices and departures, with their reasons:

- Where the multipliers update: in `plan_epoch`, i.e. at the start of each FRL epoch with the model
  as it is then, exactly where the authors measure (so a pre-trained model already gets non-zero
  multipliers in the first FRL epoch). A resumed run repeats this measurement from the restored
  model and RNG, so the multipliers (the method's state) continue exactly.
- Warm start: the authors fine-tune a pre-trained robust model (``hot_start.pt``) with lr 1e-3.
  Here ``--init-from RUN_DIR`` starts from a finished run (then usually warmup_fraction=0; the
  ``pretrained`` parameter is kept only to say so); otherwise the first
  ``warmup_fraction`` of the run is plain training with FRL's loss at uniform weights and eps
  (TRADES with FRL's beta), and the FRL updates run in the rest (with the default piecewise
  schedule, the low-learning-rate half). Optimizer and schedule are the run's.
- Attack step: the core's per-example rule, step = m_i * step_size (eps_i / 4 by default). The
  authors' older files use a fixed 2/255, the newest RWRM the batch's largest eps_i / 4.
- Remargin loss normalization: frlrm.py (older snapshot only) divides the summed weighted loss by
  ``sum(w_nat + w_bndy)``; every variant here uses the newest form above.
- Batch norm: clean and adversarial batches get separate forwards, as in the authors' code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fairbench.attacks import eval_mode, pgd
from fairbench.data import get_dataset
from fairbench.errors import FairbenchError
from fairbench.evaluate import clean_correct, per_class_accuracy
from fairbench.losses import trades_terms
from fairbench.method import BatchContext, EpochContext, EpochPlan, Method
from fairbench.registry import register_method

VAL_PGD_STEPS = 20  # the authors' validation attack (configs1)
EPS_FLOOR = 0.98  # lower clip of the remargin multiplier (cost_sensitive in utils_frl*.py)


@dataclass
class ReweightParams:
    beta: float = 1.0  # weight of the boundary (KL) term
    tau_nat: float = 0.1  # fairness constraint on the natural error (bound0)
    tau_bndy: float = 0.1  # fairness constraint on the boundary error (bound1)
    rate: float = 0.05  # multiplier step (rate1)
    lim: float = 0.5  # cap on the sum of each multiplier vector
    rate_halving_epochs: int = 40  # halve `rate` every this many FRL epochs (0: never)
    warmup_fraction: float = 0.5  # first part of the run trained without FRL updates
    pretrained: str = ""  # replaced by --init-from RUN_DIR; kept so that old configs still read

    def validate(self) -> None:
        checks = [
            (self.beta >= 0, f"beta must be >= 0, got {self.beta}"),
            (self.tau_nat >= 0 and self.tau_bndy >= 0, "tau_nat and tau_bndy must be >= 0"),
            (self.rate > 0, f"rate must be > 0, got {self.rate}"),
            (0 < self.lim < 1, f"lim must be in (0, 1) so that class weights stay > 0, got {self.lim}"),
            (self.rate_halving_epochs >= 0, "rate_halving_epochs must be >= 0"),
            (0 <= self.warmup_fraction < 1, f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}"),
            (not self.pretrained, "pretrained= is replaced by --init-from RUN_DIR (a finished run's "
                                  "folder, checked against the architecture and data set)"),
        ]
        for ok, message in checks:
            if not ok:
                raise FairbenchError(f"frl: {message}")


@dataclass
class RemarginParams(ReweightParams):
    lim: float = 0.3  # frlrm.py's default
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
    beta: float = 2.0  # frlrmrw.py at 8e6429a
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

    Params: ClassVar[type] = ReweightParams
    reweight_boundary: ClassVar[bool] = True
    remargin: ClassVar[bool] = False

    def __init__(self, params: Any, config: Any) -> None:
        super().__init__(params, config)
        if config.val_per_class is None:
            raise FairbenchError(f"{self.name} holds out a class-balanced validation split: pass "
                                 f"--val-per-class K (the authors use 300 per class on CIFAR-10)")
        spec = get_dataset(config.dataset)
        k = spec.num_classes
        self.lam_nat, self.lam_bndy, self.lam_eps = torch.zeros(k), torch.zeros(k), torch.zeros(k)
        self._device_weights: tuple[torch.Tensor, torch.Tensor] | None = None

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
        if ctx.epoch >= self.frl_start(ctx.epochs):
            errors = validation_errors(ctx, ctx.config.eps, ctx.config.step_size)
            self.update(errors, ctx.epoch - self.frl_start(ctx.epochs))
            ctx.log.update(self._log_values(errors, ctx.spec.classes))
        labels = ctx.train.labels
        eps = ctx.config.eps * self.eps_multiplier().to(ctx.device)[labels]
        return EpochPlan(torch.arange(len(labels), device=ctx.device), eps=eps)

    def _weights(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._device_weights is None or self._device_weights[0].device != device:
            self._device_weights = (class_weights(self.lam_nat).to(device),
                                    class_weights(self.lam_bndy).to(device))
        return self._device_weights

    def loss(self, ctx: BatchContext) -> torch.Tensor:
        natural, boundary = trades_terms(ctx)
        w_nat, w_bndy = self._weights(ctx.y.device)
        w_nat, w_bndy = w_nat[ctx.y] * ctx.weight, w_bndy[ctx.y] * ctx.weight
        return ((w_nat * natural).sum() / w_nat.sum()
                + self.params.beta * (w_bndy * boundary).sum() / w_bndy.sum())

    def _log_values(self, errors: ValidationErrors, classes: tuple[str, ...]) -> dict[str, Any]:
        named = lambda t: {c: round(float(v), 5) for c, v in zip(classes, t)}  # noqa: E731
        values = {"frl_val_nat_error": named(errors.nat), "frl_val_bndy_error": named(errors.bndy),
                  "frl_weight_nat": named(class_weights(self.lam_nat)),
                  "frl_weight_bndy": named(class_weights(self.lam_bndy))}
        if self.remargin:
            values["frl_eps_multiplier"] = named(self.eps_multiplier())
        return values

    def state_dict(self) -> dict[str, Any]:
        return {"lam_nat": self.lam_nat.clone(), "lam_bndy": self.lam_bndy.clone(),
                "lam_eps": self.lam_eps.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lam_nat, self.lam_bndy, self.lam_eps = (state[k].float().cpu().clone()
                                                     for k in ("lam_nat", "lam_bndy", "lam_eps"))
        self._device_weights = None


@register_method("frl-rw")
class FRLReweight(FRL):
    """Xu et al. (ICML 2021) FRL-Reweight: class weights on TRADES' terms from validation errors."""

    Params = ReweightParams


@register_method("frl-rm")
class FRLRemargin(FRL):
    """Xu et al. (ICML 2021) FRL-Remargin: larger eps for classes with high boundary error."""

    Params = RemarginParams
    reweight_boundary = False
    remargin = True


@register_method("frl-rwrm")
class FRLReweightRemargin(FRL):
    """Xu et al. (ICML 2021) FRL-Reweight+Remargin: both class weights and per-class eps."""

    Params = ReweightRemarginParams
    remargin = True
