"""Weight averaging: the EMA by hand, the method's gate, --ema in the trainer, the checkpoint and
the evaluation (a run evaluates, checkpoints and resumes its average), and bad values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from fairbench.methods import METHODS, register_method
from fairbench.methods.base import BatchContext, EpochContext, Method
from fairbench.methods.losses import pgd_at_terms, weighted_mean
from fairbench.runs.folder import load_checkpoint
from fairbench.train.averaging import WeightAverage
from torch import nn

from cli_helpers import cli


def test_ema_by_hand_with_batch_norm_statistics() -> None:
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    average = WeightAverage(model, 0.75, source="--ema")
    assert average.eval_model(model) is model and average.updates == 0  # nothing averaged yet
    values = [(2.0, 10.0), (6.0, 2.0), (4.0, 6.0)]  # (weight, running mean) after three epochs
    for w, mean in values:
        with torch.no_grad():
            model[0].weight.fill_(w)
            model[1].running_mean.fill_(mean)
        average.update(model)
    # copy 2, then 0.75 * 2 + 0.25 * 6 = 3, then 0.75 * 3 + 0.25 * 4 = 3.25; running mean 10 -> 8 -> 7.5
    assert average.module[0].weight.item() == pytest.approx(3.25)
    assert average.module[1].running_mean.item() == pytest.approx(7.5)
    assert average.eval_model(model) is average.module and average.updates == 3
    assert average.record() == {"decay": 0.75, "source": "--ema", "updates": 3, "evaluated": "averaged"}


class EveryOtherEpoch(Method):
    """Test-only PGD-AT that keeps its own average (decay 0.5) and accepts epochs 2 and 4 only."""

    accepted: ClassVar[list[int]] = []

    def loss(self, ctx: BatchContext) -> torch.Tensor:
        return weighted_mean(pgd_at_terms(ctx), ctx.weight)

    def weight_averaging(self) -> float | None:
        return 0.5

    def accept_average(self, ctx: EpochContext) -> bool:
        return ctx.epoch % 2 == 1


@pytest.fixture
def gated_method(monkeypatch: pytest.MonkeyPatch) -> None:
    METHODS.names()
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))
    monkeypatch.setattr(EveryOtherEpoch, "name", "")
    register_method("test-every-other")(EveryOtherEpoch)


def run_args(data: Path, out: Path, *extra: str, method: str = "pgd-at", epochs: int = 4) -> list[str]:
    return [
        "run",
        "--method",
        method,
        "--arch",
        "small-cnn",
        "--dataset",
        "fashion-mnist",
        "--epochs",
        str(epochs),
        "--batch-size",
        "50",
        "--attack-steps",
        "2",
        "--eval-per-class",
        "3",
        "--attacks",
        "clean,pgd20",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--run-id",
        "r",
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def epoch_weights(
    fmnist_dir: Path, tmp_path: Path, capsys, *extra: str, method: str = "pgd-at"
) -> list[dict[str, torch.Tensor]]:
    """The trained (not averaged) weights after each epoch, from a run stopped after each."""
    out, weights = tmp_path / "steps", []
    for epoch in range(1, 5):
        resume = ["--resume"] if epoch > 1 else []
        assert (
            cli(run_args(fmnist_dir, out, *extra, *resume, "--stop-after-epoch", str(epoch), method=method), capsys)[0]
            == 0
        )
        weights.append(load_checkpoint(out / "runs" / "r" / "checkpoint.pt")["model"])
    return weights


def test_method_gate_averages_only_the_accepted_epochs(gated_method, fmnist_dir: Path, tmp_path: Path, capsys) -> None:
    weights = epoch_weights(fmnist_dir, tmp_path, capsys, method="test-every-other")
    code, err = cli(run_args(fmnist_dir, tmp_path / "steps", "--resume", method="test-every-other"), capsys)
    assert code == 0, err
    run_dir = tmp_path / "steps" / "runs" / "r"
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert int(state["averaged"]["n_averaged"]) == 2
    for key, value in state["averaged"]["weights"].items():  # epoch 2 copied, then 0.5 / 0.5 with epoch 4
        if value.is_floating_point():
            assert torch.allclose(value, 0.5 * weights[1][key] + 0.5 * weights[3][key], atol=1e-6), key
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["averaged"]["accepted"] for r in log] == [False, True, False, True]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["ema"] == 0.5
    assert metrics["averaging"] == {"decay": 0.5, "source": "test-every-other", "updates": 2, "evaluated": "averaged"}


def test_ema_run_evaluates_its_average_and_resumes_it_exactly(fmnist_dir: Path, tmp_path: Path, capsys) -> None:
    whole = tmp_path / "whole"
    assert cli(run_args(fmnist_dir, whole, "--ema", "0.8"), capsys)[0] == 0
    weights = epoch_weights(fmnist_dir, tmp_path, capsys, "--ema", "0.8")  # stopped and resumed 3 times
    assert cli(run_args(fmnist_dir, tmp_path / "steps", "--ema", "0.8", "--resume"), capsys)[0] == 0
    a, b = (load_checkpoint(d / "runs" / "r" / "checkpoint.pt") for d in (whole, tmp_path / "steps"))
    expected = {k: v.clone() for k, v in weights[0].items()}
    for w in weights[1:]:
        for k, v in expected.items():
            if v.is_floating_point():
                v.mul_(0.8).add_(0.2 * w[k])
    for k, v in a["averaged"]["weights"].items():
        assert torch.equal(v, b["averaged"]["weights"][k]), k  # the resumed average is bit-exact
        if v.is_floating_point():
            assert torch.allclose(v, expected[k], atol=1e-6), k
    metrics = json.loads((whole / "runs" / "r" / "metrics.json").read_text())
    assert metrics["averaging"]["updates"] == 4 and metrics["ema"] == metrics["training"]["ema"] == 0.8
    # `fairbench eval` of the run's checkpoint evaluates the same (averaged) weights
    code, err = cli(
        [
            "eval",
            "--checkpoint",
            str(whole / "runs" / "r" / "checkpoint.pt"),
            "--arch",
            "small-cnn",
            "--dataset",
            "fashion-mnist",
            "--n-per-class",
            "3",
            "--attacks",
            "clean",
            "--data-dir",
            str(fmnist_dir),
            "--out",
            str(tmp_path / "eval"),
            "--run-id",
            "e",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0, err
    evaluated = json.loads((tmp_path / "eval" / "runs" / "e" / "metrics.json").read_text())
    assert evaluated["metrics"]["clean"] == metrics["metrics"]["clean"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--ema", "1"], "--ema must be in (0, 1), got 1.0"),
        (["--ema", "0"], "--ema must be in (0, 1), got 0.0"),
        (["--ema", "-0.5"], "--ema must be in (0, 1), got -0.5"),
        (["--ema", "0.9", "--method", "cfa", "--val-per-class", "2"], "keeps its own weight average"),
    ],
)
def test_bad_averaging_is_one_error_line(
    extra: list[str], message: str, fmnist_dir: Path, tmp_path: Path, capsys
) -> None:
    code, err = cli(run_args(fmnist_dir, tmp_path / "out") + extra, capsys)
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_best_val_selection_keeps_the_averaged_weights(fmnist_dir: Path, tmp_path: Path, capsys) -> None:
    """With averaging on, --select best-val scores and keeps the average (what the run evaluates)."""
    out, averaged = tmp_path / "out", []
    args = run_args(fmnist_dir, out, "--ema", "0.5", "--select", "best-val", "--val-per-class", "2", epochs=3)
    for epoch in (1, 2, 3):
        resume = ["--resume"] if epoch > 1 else []
        assert cli(args + resume + ["--stop-after-epoch", str(epoch)], capsys)[0] == 0
        averaged.append(load_checkpoint(out / "runs" / "r" / "checkpoint.pt")["averaged"]["weights"])
    code, err = cli(args + ["--resume"], capsys)
    assert code == 0, err
    state = load_checkpoint(out / "runs" / "r" / "checkpoint.pt")
    best = state["selection"]["best_epoch"]
    kept = state["selection"]["best_model"]
    assert all(torch.equal(kept[k], averaged[best - 1][k]) for k in kept)
    metrics = json.loads((out / "runs" / "r" / "metrics.json").read_text())
    assert metrics["selected_epoch"] == best and metrics["ema"] == 0.5
