"""The one L-inf PGD of fairbench (Madry et al., ICLR 2018), used for training and evaluation.

``eps`` and ``step_size`` may be floats or per-example tensors; the objective is cross-entropy
(Madry / PGD-AT) or KL to the clean prediction (TRADES, Zhang et al. 2019). An optional `EarlyStop`
freezes each example once the model misclassifies it (FAT, Zhang et al. ICML 2020; BAT).

The attack decides its own numerics, whatever context it is called in: it runs in fp32 with
autocast disabled (a method's loss runs under bf16 autocast on a GPU, and the KL attack's
gradient is mostly bf16 rounding noise there: issue 15), and it differentiates with respect to the
input alone, with the parameters frozen for its duration (a compiled model otherwise computes
every weight gradient in each of the attack's backward passes).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn

Objective = Literal["ce", "kl"]
Init = Literal["uniform", "normal", "none"]

TRADES_INIT_STD = 0.001  # TRADES starts its KL attack from x + 0.001 * N(0, I)


@dataclass(frozen=True)
class EarlyStop:
    """Per-example stopping on misclassification, checked on each iterate the attack differentiates.

    ``mode='first-wrong'`` is FAT's rule (Zhang et al., ICML 2020, ``earlystop``): an example whose
    iterate is misclassified takes ``tau`` more steps (one per misclassified check), then stays
    where it is. ``mode='last-correct'`` returns the last iterate still classified correctly: the
    one before the first misclassified check (the start, if the start is already wrong). An example
    never found wrong ends at the last iterate, as without stopping. The loop always runs its
    ``steps`` (frozen examples are masked, not removed), so there is no host sync.
    """

    mode: Literal["first-wrong", "last-correct"] = "first-wrong"
    tau: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("first-wrong", "last-correct") or self.tau < 0:
            raise ValueError(f"bad EarlyStop({self.mode!r}, tau={self.tau})")


def _per_example(value: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A float or N-vector as an N×1×1×1 tensor on x's device, in fp32 (a float is filled on the
    device: no host-to-device copy)."""
    if isinstance(value, torch.Tensor):
        t = value.to(device=x.device, dtype=torch.float32)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
    else:
        t = torch.full((x.shape[0],), float(value), dtype=torch.float32, device=x.device)
    return t.reshape(-1, *([1] * (x.ndim - 1)))


@contextmanager
def input_gradient_only(model: nn.Module) -> Iterator[None]:
    """Freeze the parameters that require a gradient for the block, and unfreeze them after.

    Eager autograd computes only the gradients asked for; a compiled model's backward computes one
    for every input that requires it, so without this each attack step would also compute all the
    weight gradients (about 50% more backward work) and throw them away.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@contextmanager
def eval_mode(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Put ``model`` in eval mode for the block and restore its previous mode after."""
    was_training = model.training
    if enabled:
        model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def attack_loss(
    logits: torch.Tensor, y: torch.Tensor | None, clean_probs: torch.Tensor | None, objective: Objective
) -> torch.Tensor:
    """Summed objective over the batch (summing keeps every example's gradient independent of N)."""
    logits = logits.float()
    if objective == "ce":
        assert y is not None  # pgd refuses the CE objective without labels
        return F.cross_entropy(logits, y, reduction="sum")
    assert clean_probs is not None  # pgd computes them for the KL objective
    return F.kl_div(F.log_softmax(logits, dim=1), clean_probs, reduction="sum")


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    eps: float | torch.Tensor,
    step_size: float | torch.Tensor,
    steps: int,
    objective: Objective = "ce",
    init: Init = "uniform",
    clean_logits: torch.Tensor | None = None,
    use_eval_mode: bool = True,
    stop: EarlyStop | None = None,
) -> torch.Tensor:
    """Projected gradient ascent in the L-inf ball of radius ``eps`` around ``x`` (inputs in [0, 1]).

    Returns detached adversarial inputs in [0, 1] with ``|x_adv - x| <= eps`` per example.
    ``objective='kl'`` maximizes KL(f(x) || f(x')) against ``clean_logits`` (computed if not given).
    Runs in fp32 whatever the autocast context; model parameters' ``.grad`` are never touched and
    no weight gradient is computed. ``stop`` (labels needed) freezes examples once misclassified
    (`EarlyStop`).
    """
    if steps < 0:
        raise ValueError("steps must be >= 0")
    if (objective == "ce" or stop is not None) and y is None:
        raise ValueError("the CE objective and early stopping need labels y")
    x = x.detach().float()
    eps_t, step_t = _per_example(eps, x), _per_example(step_size, x)
    with (
        eval_mode(model, use_eval_mode),
        input_gradient_only(model),
        torch.autocast(x.device.type, enabled=False),
        torch.enable_grad(),
    ):  # also under no_grad
        clean_probs = None
        if objective == "kl":
            if clean_logits is None:
                with torch.no_grad():
                    clean_logits = model(x)
            clean_probs = F.softmax(clean_logits.detach().float(), dim=1)
        delta = _init_delta(x, eps_t, init)
        state = _StopState(stop, delta) if stop is not None else None
        for _ in range(steps):
            delta.requires_grad_(True)
            logits = model(x + delta)
            (grad,) = torch.autograd.grad(attack_loss(logits, y, clean_probs, objective), delta)
            delta = delta.detach()
            if state is not None:
                assert y is not None  # early stopping needs labels (checked above)
                delta = state.check(logits.detach(), y, delta)
            moved = delta + step_t * grad.sign()
            moved = torch.clamp(torch.maximum(torch.minimum(moved, eps_t), -eps_t) + x, 0, 1) - x
            delta = moved if state is None else state.advance(delta, moved)
    return project(x + delta.detach(), x, eps_t)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Clip ``x_adv`` to [0, 1] and to the ball, so that ``(x_adv - x).abs() <= eps`` holds exactly.

    ``x + eps`` rounds to the nearest float, which can lie one ulp outside the ball (a checker
    then sees eps + 3e-8); such entries are moved one float towards ``x``. Fixed work, no host sync.
    """
    x_adv = torch.clamp(torch.minimum(torch.maximum(x_adv, x - eps), x + eps), 0, 1)
    for _ in range(2):  # one step suffices; a second covers a step across a power of two
        x_adv = torch.where((x_adv - x).abs() > eps, torch.nextafter(x_adv, x), x_adv)
    return x_adv


def _init_delta(x: torch.Tensor, eps: torch.Tensor, init: Init) -> torch.Tensor:
    if init == "uniform":
        delta = (torch.rand_like(x) * 2 - 1) * eps
    elif init == "normal":
        delta = TRADES_INIT_STD * torch.randn_like(x)
        delta = torch.maximum(torch.minimum(delta, eps), -eps)
    else:
        delta = torch.zeros_like(x)
    return torch.clamp(x + delta, 0, 1) - x


class _StopState:
    """The bookkeeping of `EarlyStop` for one attack: which examples still move, on the device."""

    def __init__(self, stop: EarlyStop, delta: torch.Tensor) -> None:
        self.stop = stop
        n = delta.shape[0]
        self.active = torch.ones(n, dtype=torch.bool, device=delta.device)
        self.budget = torch.full((n,), stop.tau, dtype=torch.long, device=delta.device)
        self.previous = delta

    def check(self, logits: torch.Tensor, y: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Freeze the examples this iterate stops; returns the perturbation each one keeps."""
        wrong = (logits.argmax(1) != y) & self.active
        if self.stop.mode == "last-correct":
            delta = torch.where(wrong.view(-1, *[1] * (delta.ndim - 1)), self.previous, delta)
            self.active = self.active & ~wrong
        else:
            self.active = self.active & ~(wrong & (self.budget == 0))
            self.budget = self.budget - (wrong & self.active).long()
        return delta

    def advance(self, delta: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
        """Move the active examples one step; the frozen ones stay."""
        active = self.active.view(-1, *[1] * (delta.ndim - 1))
        if self.stop.mode == "last-correct":
            self.previous = torch.where(active, delta, self.previous)
        return torch.where(active, moved, delta)
