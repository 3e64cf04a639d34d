"""FAAL: the on-device class weights against CVXPY on random problems, the defined cases (equal
margins, an absent class, extreme values), the margin, the loss, parameters and --init-from."""

from __future__ import annotations

from pathlib import Path

import cvxpy as cp
import numpy as np
import pytest
import torch
from fairbench.cli import main
from fairbench.errors import FairbenchError
from fairbench.methods.faal import dro_class_weights, probability_margin
from fairbench.methods.losses import pgd_at_outputs

from methods_helpers import bars, batch_ctx, build


def cvxpy_weights(a: np.ndarray, r: float) -> np.ndarray:
    """The official code's problem (FAAL.py): maximize sum_c a_c p_c over the simplex with
    sum kl_div(1/K, p) <= r. ``a`` is scaled to unit spread first, which changes the objective by an
    affine map and not its maximizer, and keeps the conic solver accurate to ~1e-8."""
    k = len(a)
    if a.max() == a.min():
        return np.full(k, 1 / k)
    z = (a - a.max()) / (a.max() - a.min())
    p = cp.Variable(k, nonneg=True)
    problem = cp.Problem(cp.Maximize(z @ p), [cp.sum(p) == 1, cp.sum(cp.kl_div(np.full(k, 1 / k), p)) <= r])
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    assert problem.status == cp.OPTIMAL
    return p.value


def random_problem(rng: np.random.Generator, trial: int) -> tuple[np.ndarray, float]:
    k = int(rng.choice([2, 3, 10, 100]))
    a = rng.normal(size=k) * rng.choice([1e-3, 1.0, 50.0])  # margin sums of tiny and large batches
    if trial % 4 == 0:
        a[: max(1, k // 2)] = a.max()  # ties at the top
    if trial % 5 == 0:
        a[rng.integers(0, k, 2)] = 0.0  # classes absent from the batch
    return a, float(rng.choice([0.01, 0.1, 0.5, 2.0, 5.0]))


def test_weights_match_cvxpy_on_random_problems() -> None:
    rng = np.random.default_rng(2024)
    for trial in range(30):
        a, r = random_problem(rng, trial)
        p = dro_class_weights(torch.tensor(a), r).double().numpy()
        expected = cvxpy_weights(a, r)
        assert np.abs(p - expected).max() < 1e-5, (trial, len(a), r)
        assert abs(p.sum() - 1) < 1e-6 and np.mean(np.log((1 / len(a)) / p)) <= r + 1e-6


def test_weights_by_hand_for_two_classes() -> None:
    """K = 2, a = (1, 0): p = (q, 1 - q) with KL(U || p) = -log 2 - (log q + log(1 - q)) / 2 = r,
    i.e. q (1 - q) = exp(-2 r) / 4; for r = 0.5, q = (1 + sqrt(1 - e^-1)) / 2 = 0.8975."""
    q = (1 + np.sqrt(1 - np.exp(-1.0))) / 2
    p = dro_class_weights(torch.tensor([1.0, 0.0]), 0.5)
    assert torch.allclose(p, torch.tensor([q, 1 - q], dtype=torch.float32), atol=1e-6)


@pytest.mark.parametrize("a", [torch.zeros(10), torch.full((10,), -3.0), torch.full((10,), 1e-30)])
def test_all_equal_values_give_uniform_weights(a: torch.Tensor) -> None:
    assert torch.equal(dro_class_weights(a, 0.5), torch.full((10,), 0.1))


def test_never_nan_on_extreme_inputs() -> None:
    for a in (
        torch.tensor([1e12, -1e12, 0.0]),
        torch.tensor([1e-300, 0.0, 0.0]),
        torch.tensor([5.0] + [0.0] * 99),
        torch.tensor([0.0, 0.0, 1e-9]),
    ):
        for r in (1e-8, 0.5, 50.0):
            p = dro_class_weights(a, r)
            assert torch.isfinite(p).all() and (p >= 0).all() and abs(float(p.sum()) - 1) < 1e-5


def test_probability_margin_by_hand() -> None:
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]]))
    margins = probability_margin(logits, torch.tensor([0, 0]))
    assert torch.allclose(margins, torch.tensor([0.2 - 0.7, 0.5 - 0.2]), atol=1e-6)


def test_loss_weighs_each_examples_ce_by_its_class_weight() -> None:
    torch.manual_seed(0)
    method = build("faal", init_from="somewhere")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    data = bars(2)
    keep = data.labels != 4  # class 4 is absent from this batch
    x, y = data.images[keep].float() / 255, data.labels[keep]
    ctx = batch_ctx(model, x, y, eps=0.1)
    torch.manual_seed(1)
    loss = method.loss(ctx)
    torch.manual_seed(1)
    ce, adv = pgd_at_outputs(ctx)
    a = torch.zeros(10, dtype=torch.float64).index_add_(0, y, probability_margin(adv, y).double())
    p = dro_class_weights(a, 0.5)
    assert torch.isfinite(loss) and torch.allclose(loss, 10 / len(y) * (p[y] * ce).sum())
    assert a[4] == 0 and p[4] > 0


@pytest.mark.parametrize(
    "params, message",
    [({"r": "0"}, "r must be > 0"), ({"r": "-1"}, "r must be > 0"), ({"base": "mart"}, "base must be one of")],
)
def test_bad_parameters_are_one_clear_error(params: dict, message: str) -> None:
    with pytest.raises(FairbenchError, match=message):
        build("faal", params, init_from="somewhere")


def test_a_run_without_init_from_is_one_clear_error(fmnist_dir: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "run",
                "--method",
                "faal",
                "--arch",
                "small-cnn",
                "--dataset",
                "fashion-mnist",
                "--epochs",
                "2",
                "--data-dir",
                str(fmnist_dir),
                "--out",
                str(tmp_path / "out"),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "pass --init-from RUN_DIR" in err
    assert not (tmp_path / "out").exists()
