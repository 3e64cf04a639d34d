"""FAAL, Fairness-Aware Adversarial Learning (Zhang, Zhang, Huang, Liu, Ruan, CVPR 2024; code:
TrustAI/FAAL at b20ee9d, ``ft_prn.py`` and ``FAAL.py``).

Fine-tunes a finished robust run (``--init-from RUN_DIR``; the paper: PGD-AT or TRADES models) for
2 epochs, learning rate 0.01 then 0.001 (the ``faal-cifar10`` preset). Per batch: PGD-10
adversarial x' (cross-entropy, uniform start, eval mode); each example's probability margin
m_i = max_{j != y} softmax_j(f(x'_i)) - softmax_y(f(x'_i)) from the training forward; with n_c the
batch's examples of class c and a_c = n_c * (mean margin of class c) = the sum of class c's
margins, the class weights solve

    maximize  sum_c a_c p_c   over p in the simplex,  subject to  KL(uniform || p) <= r

(r 0.5), p detached, and the loss is (K / B) * sum_i p_{y_i} * CE(f(x'_i), y_i) (the code's "AT"
loss; ``base=trades`` weighs CE(f(x), y) + beta * KL(f(x) || f(x')) instead, its "TRADES" loss).

The solver (`dro_class_weights`) runs on the device without a host sync. The code builds and solves
a CVXPY problem every batch (a host round trip and a conic solver); the problem has a closed form:
with multipliers mu for the simplex and lambda for the KL ball, stationarity gives
p_c = lambda / (K (mu - a_c)) with mu > max a, the sum constraint fixes lambda, so
p_c(mu) is proportional to 1 / (mu - a_c), and mu is the root of KL(uniform || p(mu)) = r (the KL
falls from infinity at mu = max a to 0 as mu grows, so the ball's constraint is active whenever
the a_c differ). The root is bracketed on log(mu - max a) by a few rounds of a grid search (a
bisection that splits each bracket into many parts at once), in float64, on the affinely
normalized a (the solution does not change under a -> s a + b, s > 0). tests/test_faal.py checks it
against CVXPY on random problems to 1e-5. Defined cases: all a_c equal (every margin equal and the
classes equally frequent, or an all-zero batch) gives the uniform p; a class absent from the batch
has a_c = 0 (it is not in the objective) and keeps the weight the ball gives it; p is never NaN.

Inputs: the code's commands (its README and ``run_prn.py``: ``--normalization std``) map every input
by CIFAR-10's mean and std (0.4914/0.4822/0.4465, 0.2471/0.2435/0.2616; ``utils.normalize``) before
the network, with eps 8/255 and step 2/255 in [0, 1] pixel space. fairbench's models take [0, 1]
images and apply the same map (the data set's mean and std) in their first layer, so the network
sees the same inputs, and the data set's default eps and step (which the ``faal-cifar10`` preset
keeps) are the code's. The code's starting models (``PRN_PGD.pth``, ``PRN_TRADES.pth``) are not in
its repository; a fairbench source run normalizes as its model does.

Departures, with their reasons:

- Under DDP the a_c of all ranks' shards are summed, so the weights are those of the whole
  (global) batch, as in a single process.
- The code's AT loss also runs a clean forward it does not use (in train mode, so it moves the
  batch-norm statistics); fairbench does not.
- Model selection: the code picks the checkpoint on part of the *test* set; fairbench evaluates the
  last epoch (or the run's selection rule, never the test set). The attacks run in fp32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from fairbench.errors import FairbenchError
from fairbench.methods import register_method
from fairbench.methods.base import BatchContext, Method
from fairbench.methods.losses import pgd_at_outputs, trades_outputs
from fairbench.methods.space import Choice, LogUniform, Uniform

BASES = ("pgd-at", "trades")
LOG_T_RANGE = 70.0  # mu - max(a) searched in [e^-70, e^70] for a normalized to spread 1
ROUNDS, POINTS = 7, 64  # bracket shrinks 63-fold per round: 140 / 63^7 ~ 4e-11 in log(mu - max a)


def probability_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{j != y} softmax_j - softmax_y per example (in [-1, 1]; > 0 where misclassified)."""
    p = torch.softmax(logits.float(), 1)
    true = p.gather(1, y[:, None])[:, 0]
    others = p.scatter(1, y[:, None], float("-inf"))
    return others.amax(1) - true


def _kl_from_uniform(z: torch.Tensor, log_t: torch.Tensor) -> torch.Tensor:
    """KL(U || p(t)) for p_c proportional to 1 / (t - z_c), at each of the given log t."""
    log_q = -torch.log(log_t.exp()[:, None] - z[None, :])  # G x K
    log_p = log_q - torch.logsumexp(log_q, 1, keepdim=True)
    return -math.log(z.numel()) - log_p.mean(1)


def dro_class_weights(a: torch.Tensor, r: float) -> torch.Tensor:
    """argmax of sum_c a_c p_c over the simplex within KL(uniform || p) <= r (float32, on a's device)."""
    a = a.detach().double()
    k = a.numel()
    spread = a.max() - a.min()
    flat = spread <= 1e-12 * (1 + a.abs().max())
    z = (a - a.max()) / torch.where(flat, torch.ones_like(spread), spread)  # in [-1, 0], max 0
    lo = torch.full((), -LOG_T_RANGE, dtype=torch.float64, device=a.device)  # filled on the device
    hi = torch.full((), LOG_T_RANGE, dtype=torch.float64, device=a.device)
    grid = torch.linspace(0, 1, POINTS, dtype=torch.float64, device=a.device)
    for _ in range(ROUNDS):  # KL falls as log t grows: keep the bracket around KL = r
        points = lo + (hi - lo) * grid
        above = (_kl_from_uniform(z, points) > r).sum().clamp(1, POINTS - 1).view(1)
        lo, hi = points.index_select(0, above - 1)[0], points.index_select(0, above)[0]  # no host sync
    q = 1 / (hi.exp() - z)  # hi's side of the bracket: the KL constraint holds
    p = q / q.sum()
    return torch.where(flat, torch.full_like(p, 1 / k), p).float()


@register_method("faal")
class FAAL(Method):
    """Zhang et al. (CVPR 2024) FAAL: fine-tunes a finished robust run with class weights that
    maximize the batch's margin loss within a KL ball around uniform."""

    # `fairbench tune`: the KL radius, and the fine-tuning's own lr and length (run options; the
    # shared lr range is for training from scratch, so FAAL's replaces it)
    space: ClassVar[dict] = {"r": Uniform(0.05, 1.0), "lr": LogUniform(0.0005, 0.05), "epochs": Choice(1, 2, 3, 4)}

    requires_init = True

    @dataclass
    class Params:
        r: float = 0.5  # radius of the KL ball around the uniform class weights
        base: str = "pgd-at"  # pgd-at (the code's AT loss) | trades
        beta: float = 6.0  # TRADES' beta, with base=trades

        def validate(self) -> None:
            if not self.r > 0:
                raise FairbenchError(f"faal: r must be > 0, got {self.r}")
            if self.base not in BASES:
                raise FairbenchError(f"faal: base must be one of {', '.join(BASES)}, got '{self.base}'")
            if not self.beta >= 0:
                raise FairbenchError(f"faal: beta must be >= 0, got {self.beta}")

        def unused(self) -> frozenset[str]:
            """The parameters this configuration leaves unused (a report row's label omits them)."""
            return frozenset() if self.base == "trades" else frozenset({"beta"})

    def loss(self, ctx: BatchContext) -> torch.Tensor:
        if self.params.base == "pgd-at":
            per_example, adv = pgd_at_outputs(ctx)
        else:
            natural, boundary, adv = trades_outputs(ctx)
            per_example = natural + self.params.beta * boundary
        k = adv.shape[1]
        margins = probability_margin(adv.detach(), ctx.y).double()
        a = ctx.dist.all_reduce_sum(
            torch.zeros(k, dtype=torch.float64, device=adv.device).index_add_(0, ctx.y, margins)
        )
        p = dro_class_weights(a, self.params.r)
        return (k / ctx.y.shape[0]) * (p[ctx.y] * per_example * ctx.weight).sum()
